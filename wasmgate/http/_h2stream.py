# -*- test-case-name: tests.test_http2 -*-
"""
One HTTP/2 stream as the exchange core sees it: a L{ResponseChannel} whose
body goes out as flow control allows (what cannot go yet waits, and pauses
the upstream), and the L{BodySource} of the request body (data is
acknowledged to the client only as its reader takes it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError, StreamClosedError
from twisted.internet.interfaces import IPushProducer, ITransport

from wasmgate.http import _wire
from wasmgate.http.message import ClientGone, Header, RequestBody

if TYPE_CHECKING:
    from wasmgate.http.h2 import H2ServerProtocol
    from wasmgate.http.tunnel import Tunnel

# Connection-specific headers are not allowed in HTTP/2 (RFC 9113 8.2.2).
_NOT_IN_H2 = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})


class H2Stream:
    """A request/response stream on an L{H2ServerProtocol}."""

    def __init__(self, protocol: "H2ServerProtocol", stream_id: int, *, head_only: bool) -> None:
        self.protocol = protocol
        self.h2 = protocol.h2
        self.stream_id = stream_id
        self.head_only = head_only
        self.exchange: Any = None
        self.body: Optional[RequestBody] = None
        self.started = False
        self.status = 0
        self.sent_bytes = 0
        self.finished = False
        self.last_read = protocol.clock.seconds()
        self.blocked_since: Optional[float] = None
        """When the response body last could not go out (window closed)."""
        self.body_paused = False
        self._unacked = 0
        self._pending: list[bytes] = []
        self._end_pending = False
        self._producer: Optional[IPushProducer] = None
        self._producer_paused = False

    # -- the request side ----------------------------------------------------

    def data_received(self, data: bytes, flow_controlled: int) -> None:
        self.last_read = self.protocol.clock.seconds()
        body = self.body
        if body is None or body.failure is not None:
            self.h2.acknowledge_received_data(flow_controlled, self.stream_id)
            return
        body.data(data)
        if self.body_paused:
            self._unacked += flow_controlled
        else:
            self.h2.acknowledge_received_data(flow_controlled, self.stream_id)

    def body_ended(self) -> None:
        if self.body is not None:
            self.body.end()

    def pause_body(self) -> None:
        self.body_paused = True  # the client's window closes as it sends

    def resume_body(self) -> None:
        self.body_paused = False
        self.last_read = self.protocol.clock.seconds()
        if self._unacked:
            unacked, self._unacked = self._unacked, 0
            try:
                self.h2.acknowledge_received_data(unacked, self.stream_id)
            except (StreamClosedError, ProtocolError):
                pass
            self.protocol.flush()

    def body_wanted(self) -> None:
        pass  # no 100-continue in HTTP/2

    def client_gone(self) -> None:
        """The client reset the stream, or the connection is gone."""
        self.finished = True
        if self.body is not None:
            self.body.fail(ClientGone())
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.client_gone()

    # -- the response side (ResponseChannel) ------------------------------------

    def respond(
        self,
        status: int,
        reason: bytes,
        headers: list[Header],
        *,
        length: Optional[int],
        body: Optional[bytes] = None,
    ) -> None:
        if self.started or self.finished:
            return
        self.started = True
        self.status = status
        no_body = self.head_only or status in (204, 304) or status < 200
        out = [(b":status", b"%d" % status)]
        out += [(n, v) for n, v in headers if n not in _NOT_IN_H2]
        if length is not None and status != 204 and status >= 200:
            out.append((b"content-length", b"%d" % length))
        if not any(n == b"date" for n, _ in headers):
            out.append((b"date", self.protocol.factory.date(self.protocol.clock.seconds())))
        end = no_body or (body is not None and not body)
        try:
            self.h2.send_headers(self.stream_id, out, end_stream=end)
        except (StreamClosedError, ProtocolError):
            self.client_gone()
            return
        if end:
            self._done()
        elif body is not None:
            self.write(body)
            self.finish()
        self.protocol.flush()

    def write(self, data: bytes) -> None:
        if self.finished or not data or self.head_only:
            return
        self.sent_bytes += len(data)
        self._pending.append(data)
        self.send_pending()

    def finish(self) -> None:
        if self.finished:
            return
        if self._pending:
            self._end_pending = True
            return
        try:
            self.h2.end_stream(self.stream_id)
        except (StreamClosedError, ProtocolError):
            pass
        self._done()
        self.protocol.flush()

    def abort(self) -> None:
        if self.finished:
            return
        try:
            self.h2.reset_stream(self.stream_id, ErrorCodes.INTERNAL_ERROR)
        except (StreamClosedError, ProtocolError):
            pass
        self._done()
        self.protocol.flush()

    def refuse(self, status: int, text: bytes, *, request_id: str = "") -> None:
        """Answered at the wire (no exchange): a plain-text error."""
        self.respond(
            status, _wire.reason_phrase(status),
            _wire.refusal_headers(request_id, self.protocol.settings.banner),
            length=len(text), body=text,
        )

    def refuse_grpc(self, message: bytes, *, request_id: str = "") -> None:
        """
        Refused in gRPC's own terms, a Trailers-Only response: a gRPC
        client reports UNIMPLEMENTED with C{message}, not a protocol error.
        """
        headers = [(b"content-type", b"application/grpc"), (b"grpc-status", b"12"), (b"grpc-message", message)]
        headers += [h for h in _wire.refusal_headers(request_id, self.protocol.settings.banner) if h[0] != b"content-type"]
        self.respond(200, b"OK", headers, length=None, body=b"")

    def pause_upstream_with(self, producer: IPushProducer) -> None:
        self._producer = producer
        if self._pending or self.protocol.write_paused:
            self.pause_upstream()

    def stop_pausing(self) -> None:
        self._producer = None

    def open_tunnel(
        self, upstream: ITransport, *, idle_timeout: float, on_close: Callable[["Tunnel", str], None]
    ) -> "Tunnel":
        raise NotImplementedError("no WebSocket over HTTP/2 (RFC 8441) here")

    # -- flow control ----------------------------------------------------------

    def send_pending(self) -> None:
        """Send what the windows allow of the waiting body; the rest waits."""
        if self.finished:
            return
        h2 = self.h2
        pending = self._pending
        try:
            while pending:
                window = min(h2.local_flow_control_window(self.stream_id), h2.max_outbound_frame_size)
                if window <= 0:
                    break
                data = pending[0]
                if len(data) <= window:
                    pending.pop(0)
                else:
                    pending[0] = data[window:]
                    data = data[:window]
                h2.send_data(self.stream_id, data)
        except (StreamClosedError, ProtocolError):
            self.client_gone()
            return
        if pending:
            if self.blocked_since is None:
                self.blocked_since = self.protocol.clock.seconds()
            self.pause_upstream()
        else:
            self.blocked_since = None
            if self._end_pending:
                self._end_pending = False
                self.finish()
                return
            if not self.protocol.write_paused:
                self.resume_upstream()
        self.protocol.flush()

    def pause_upstream(self) -> None:
        if self._producer is not None and not self._producer_paused:
            self._producer_paused = True
            self._producer.pauseProducing()

    def resume_upstream(self) -> None:
        if self._producer is not None and self._producer_paused and not self._pending:
            self._producer_paused = False
            self._producer.resumeProducing()

    def write_stalled(self) -> None:
        """The client let no more of the response in for the write timeout."""
        exchange = self.exchange
        if exchange is not None:
            note = getattr(exchange, "note_error", None)
            if note is not None:
                note("client stopped reading (write timeout)")
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()
        exchange, self.exchange = self.exchange, None
        self.abort()
        if exchange is not None:
            exchange.client_gone()

    def _done(self) -> None:
        self.finished = True
        self._pending = []
        self._producer = None
        self.exchange = None  # (no cycle left for the garbage collector)
        self.protocol.stream_done(self)
