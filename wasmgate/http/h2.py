# -*- test-case-name: tests.test_http2 -*-
"""
HTTP/2 from clients, on python-hyper's C{h2}: each stream is a request
handed to the same exchange core as an HTTP/1.1 one (upstreams stay
HTTP/1.1), answered on an L{H2Stream} channel.

Flow control both ways: a response body goes out as the stream's and the
connection's windows allow, and what waits pauses the upstream; a request
body is acknowledged (the client may send more) only as its reader takes
it. Limits: C{max_concurrent_streams}, the header list size, the body
limit per stream, the write timeout per stream, idle connections; and the
known floods: a client resetting streams faster than a bound (CVE-2023-44487,
"rapid reset") or sending PING/SETTINGS frames faster than one is
disconnected with GOAWAY; CONTINUATION floods and HPACK bombs are bounded
by h2 itself (64 frames per header block) and the header list limit.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wasmgate.http._h2stream import H2Stream
from wasmgate.http._wire import no_delay
from wasmgate.http._timers import Deadline
from wasmgate.http.message import (
    BodyTimedOut,
    ClientGone,
    IncomingRequest,
    RequestBody,
    RequestRecord,
    server_name,
)

if TYPE_CHECKING:
    from wasmgate.http.factory import HTTPServerFactory

log = Logger()

_FLOOD_WINDOW = 1.0
"""Seconds over which resets and control frames are counted."""


@implementer(IPushProducer)
class H2ServerProtocol(Protocol):
    """One client connection speaking HTTP/2."""

    def __init__(self, factory: "HTTPServerFactory") -> None:
        self.factory = factory
        self.settings = factory.settings
        self.clock = factory.clock
        self.closing = False
        self.streams: dict[int, H2Stream] = {}
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self._secure = False
        self._sni = ""
        self._peer = ("", 0)
        self._idle_since = 0.0
        self._deadline = Deadline(self.clock, self._timers)
        self._window_start = 0.0
        self._resets = 0
        self._control = 0
        self._write_paused = False

    # -- connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        no_delay(transport)
        self._secure = ISSLTransport.providedBy(transport)
        peer = transport.getPeer()
        self._peer = (getattr(peer, "host", "") or "", getattr(peer, "port", 0) or 0)
        self._sni = server_name(transport) if self._secure else ""  # (negotiated before it was chosen)
        self._idle_since = self._window_start = self.clock.seconds()
        self.factory.connections.add(self)
        settings = self.settings
        self.h2.local_settings.update(
            {
                SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_bytes,
                SettingCodes.ENABLE_PUSH: 0,
            }
        )
        self.h2.initiate_connection()
        transport.registerProducer(self, True)  # a full socket pauses every stream's upstream
        self.flush()
        self._arm()

    def connectionLost(self, reason: Failure = Failure(ClientGone())) -> None:
        self.closing = True
        self._deadline.close()
        self.factory.connection_closed(self)
        streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            stream.client_gone()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    @property
    def idle(self) -> bool:
        return not self.streams

    @property
    def idle_since(self) -> float:
        return self._idle_since

    def close_idle(self) -> None:
        self._goaway(ErrorCodes.NO_ERROR)

    def drain(self) -> None:
        """
        Shutting down: GOAWAY, let open streams finish, then close. (h2's
        own close_connection ends the connection for every stream; the
        frame is written here so the open streams go on.)
        """
        if self.closing or self.transport is None:
            return
        self.closing = True
        self.flush()
        goaway = GoAwayFrame(stream_id=0, error_code=ErrorCodes.NO_ERROR)
        goaway.last_stream_id = self.h2.highest_inbound_stream_id
        self.transport.write(goaway.serialize())
        if not self.streams:
            self.transport.loseConnection()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abortConnection()

    def _goaway(self, code: ErrorCodes, why: str = "") -> None:
        if why:
            log.info("HTTP/2 client {peer}: {why}, disconnecting", peer=self._peer[0], why=why)
        self.closing = True
        try:
            self.h2.close_connection(error_code=code, last_stream_id=self.h2.highest_inbound_stream_id)
        except ProtocolError:
            pass
        self.flush()
        if self.transport is not None:
            self.transport.loseConnection()

    # -- reading -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as e:
            self._goaway(ErrorCodes.PROTOCOL_ERROR, f"protocol error: {e}")
            return
        for event in events:
            if isinstance(event, DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is None:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                else:
                    stream.data_received(event.data, event.flow_controlled_length)
            elif isinstance(event, RequestReceived):
                self._request(event.stream_id, event.headers, event.stream_ended is not None)
            elif isinstance(event, StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.body_ended()
            elif isinstance(event, WindowUpdated):
                self._window_opened(event.stream_id)
            elif isinstance(event, StreamReset):
                self._reset_by_client(event.stream_id)
            elif isinstance(event, (PingReceived, RemoteSettingsChanged)):
                self._control_frame()
                if isinstance(event, RemoteSettingsChanged):
                    self._window_opened(0)
            elif isinstance(event, ConnectionTerminated):
                self.closing = True
                if self.transport is not None:
                    self.transport.loseConnection()
            if self.transport is None or self.transport.disconnecting:  # type: ignore[attr-defined]
                break
        self.flush()

    def _request(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        if self.closing:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        pseudo: dict[bytes, bytes] = {}
        fields: list[tuple[bytes, bytes]] = []
        cookies: list[bytes] = []
        length: Optional[int] = None
        for name, value in headers:
            if name.startswith(b":"):
                pseudo[name] = value
            elif name == b"cookie":
                cookies.append(value)  # crumbs: one header for HTTP/1.1 (RFC 9113 8.2.3)
            else:
                if name == b"content-length":
                    length = int(value)
                fields.append((name, value))
        if cookies:
            fields.append((b"cookie", b"; ".join(cookies)))
        authority = pseudo.get(b":authority")
        if authority is not None and not any(name == b"host" for name, _ in fields):
            fields.insert(0, (b"host", authority))
        method = pseudo.get(b":method", b"")
        stream = H2Stream(self, stream_id, head_only=method == b"HEAD")
        self.streams[stream_id] = stream
        refusal = None
        settings = self.settings
        if method == b"CONNECT":
            refusal = 405, b"CONNECT is not supported\n"
        elif len(pseudo.get(b":path", b"")) > settings.max_request_line:
            refusal = 414, b"request line too long\n"  # (the limits of HTTP/1.1, the same for every client)
        elif len(fields) > settings.max_headers:
            refusal = 431, b"request headers too large\n"
        elif length is not None and length > settings.max_body_bytes:
            refusal = 413, b"request body too large\n"
        elif _is_grpc(fields):
            refusal = 501, GRPC_REFUSAL
        if refusal is not None:
            record = self._record(method, pseudo.get(b":path", b"-"), *refusal)
            if refusal[1] is GRPC_REFUSAL:
                record.bytes = 0  # (the reason goes in a header, no body)
            self.factory.refused(record)  # (which gives the record its request ID)
            if refusal[1] is GRPC_REFUSAL:
                stream.refuse_grpc(GRPC_REFUSAL.strip(), request_id=record.request_id)
            else:
                stream.refuse(*refusal, request_id=record.request_id)
            return
        body = None
        if not ended:
            body = stream.body = RequestBody(stream, length=length, limit=self.settings.max_body_bytes)
        request = IncomingRequest(
            method=method,
            target=pseudo.get(b":path", b""),
            version=b"HTTP/2",
            headers=fields,
            peer_host=self._peer[0],
            peer_port=self._peer[1],
            secure=self._secure,
            body=body,
            started=self.clock.seconds(),
            server_name=self._sni,
        )
        stream.exchange = self.factory.start_exchange(request, stream)

    def _record(self, method: bytes, path: bytes, status: int, text: bytes) -> RequestRecord:
        record = RequestRecord(self.clock.seconds())
        record.client_ip = self._peer[0]
        record.method = method.decode("latin-1") or "-"
        record.path = path[:200].decode("latin-1")
        record.status = status
        record.bytes = len(text)
        record.error = text.decode("latin-1").strip()
        record.protocol = "HTTP/2"
        return record

    def _window_opened(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.send_pending()
            return
        for stream in list(self.streams.values()):
            stream.send_pending()

    def _reset_by_client(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.client_gone()  # its upstream request is cancelled
            self._stream_closed()
        self._resets += 1
        self._count_flood()

    def _control_frame(self) -> None:
        self._control += 1
        self._count_flood()

    def _count_flood(self) -> None:
        now = self.clock.seconds()
        if now - self._window_start >= _FLOOD_WINDOW:
            self._window_start, self._resets, self._control = now, 0, 0
            return
        settings = self.settings
        if self._resets > settings.max_resets_per_second:
            self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, f"{self._resets} streams reset within a second")
        elif self._control > settings.max_control_frames_per_second:
            self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, f"{self._control} PING/SETTINGS frames within a second")

    # -- streams ending --------------------------------------------------------

    def stream_done(self, stream: H2Stream) -> None:
        """A stream's response is complete (or it was reset by us)."""
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
            self._stream_closed()

    def _stream_closed(self) -> None:
        if not self.streams:
            self._idle_since = self.clock.seconds()
            if self.closing and self.transport is not None:
                self.transport.loseConnection()
        self._arm()

    # -- the transport's backpressure (IPushProducer) ------------------------

    def pauseProducing(self) -> None:
        self._write_paused = True
        for stream in self.streams.values():
            stream.pause_upstream()

    def resumeProducing(self) -> None:
        self._write_paused = False
        for stream in list(self.streams.values()):
            stream.resume_upstream()

    def stopProducing(self) -> None:
        pass  # connectionLost follows

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    # -- timeouts ----------------------------------------------------------------

    def _arm(self) -> None:
        if self.transport is None or self.closing:
            return
        settings = self.settings
        if not self.streams:
            self._deadline.at(self._idle_since + settings.idle_timeout)
        else:
            self._deadline.at(self.clock.seconds() + min(settings.read_timeout, settings.write_timeout))

    def _timers(self) -> None:
        if self.transport is None or self.closing:
            return
        now = self.clock.seconds()
        settings = self.settings
        if not self.streams:
            if now >= self._idle_since + settings.idle_timeout:
                self._goaway(ErrorCodes.NO_ERROR)
                return
        for stream in list(self.streams.values()):
            body = stream.body
            if body is not None and not body.complete and body.failure is None and not stream.body_paused:
                if now >= stream.last_read + settings.read_timeout:
                    body.fail(BodyTimedOut())
            if stream.blocked_since is not None and now >= stream.blocked_since + settings.write_timeout:
                stream.write_stalled()
        self.flush()
        self._arm()


GRPC_REFUSAL = b"gRPC is not proxied by this gateway (upstreams get HTTP/1.1)\n"


def _is_grpc(fields: list[tuple[bytes, bytes]]) -> bool:
    """A gRPC call (not gRPC-Web, which is plain HTTP and proxied as such)."""
    for name, value in fields:
        if name == b"content-type":
            kind = value.lower()
            return kind.startswith(b"application/grpc") and not kind.startswith(b"application/grpc-web")
    return False
