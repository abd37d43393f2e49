# -*- test-case-name: tests.test_http_server -*-
"""
One request on an HTTP/1.1 connection, and the channel its answer goes out
on: the status line and head, the body framed (Content-Length, chunked, or
until close for HTTP/1.0), keep-alive decided, and backpressure from the
client to the upstream watched for the write timeout.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Protocol as TypingProtocol

from twisted.internet.interfaces import IPushProducer, ITransport

from wasmgate.http import _wire
from wasmgate.http._timers import StallWatch
from wasmgate.http.message import Header, IncomingRequest, RequestBody
from wasmgate.http.tunnel import Tunnel

if TYPE_CHECKING:
    from wasmgate.http.server import HTTP11ServerProtocol


class Exchange(TypingProtocol):
    """What the exchange core gives back for a request it took on."""

    def client_gone(self) -> None:
        """The client's connection closed before the response was done."""


class Message:
    """
    One request on a connection, and the L{ResponseChannel} its answer
    goes out on.
    """

    __slots__ = (
        "protocol", "url", "url_size", "headers", "header_bytes", "wire_bytes", "arrived", "request", "body",
        "keep_alive", "head_only", "version11", "headers_done", "ended", "exchange", "refusal",
        "expect_continue", "started_response", "status", "sent_bytes", "chunked", "finished",
        "upgrade", "upgrade_rest",
    )

    def __init__(self, protocol: "HTTP11ServerProtocol", arrived: float) -> None:
        self.protocol = protocol
        self.url: list[bytes] = []
        self.url_size = 0
        self.headers: list[Header] = []
        self.header_bytes = 0
        self.wire_bytes = 0
        self.arrived = arrived
        self.request: Optional[IncomingRequest] = None
        self.body: Optional[RequestBody] = None
        self.keep_alive = True
        self.head_only = False
        self.version11 = True
        self.headers_done = False
        self.ended = False
        self.exchange: Optional[Exchange] = None
        self.refusal: Optional[tuple[int, bytes, str]] = None
        """Refused at the wire: status, text and the request ID it was logged with."""
        self.expect_continue = False
        self.started_response = False
        self.status = 0
        self.sent_bytes = 0
        self.chunked = False
        self.finished = False
        self.upgrade: Optional[bytes] = None
        """C{websocket}: the client asked to switch protocols."""
        self.upgrade_rest: Optional[bytes] = None
        """What came after an upgrade request's head, kept until 101 or not."""

    # -- ResponseChannel ---------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether the response head is out."""
        return self.started_response

    def respond(
        self,
        status: int,
        reason: bytes,
        headers: list[Header],
        *,
        length: Optional[int],
        body: Optional[bytes] = None,
    ) -> None:
        protocol = self.protocol
        if self.started_response or protocol.transport is None:
            return
        self.started_response = True
        self.status = status
        if status == 101:  # switching protocols: the exchange gave Connection/Upgrade
            protocol.transport.write(
                b"HTTP/1.1 101 %s\r\n%sDate: %s\r\n\r\n"
                % (reason, _wire.header_block(headers), protocol.factory.date(protocol.clock.seconds()))
            )
            return
        no_body = self.head_only or status == 204 or status == 304 or status < 200
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason), _wire.header_block(headers)]
        if length is not None and status != 204 and status >= 200:
            parts.append(b"Content-Length: %d\r\n" % (length,))
        elif not no_body:
            if self.version11:
                self.chunked = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False  # the body ends when the connection does
        if protocol.factory.draining or protocol.closing or (body is not None and not self.ended):
            # (Answered whole before the request body is in: the rest of
            # it will not be read, so the connection ends here.)
            self.keep_alive = False
        if not self.keep_alive:
            parts.append(b"Connection: close\r\n")
        elif not self.version11:
            parts.append(b"Connection: keep-alive\r\n")
        if not _has_date(headers):
            parts.append(b"Date: " + protocol.factory.date(protocol.clock.seconds()) + b"\r\n")
        parts.append(b"\r\n")
        if body is not None:
            if not no_body:
                parts.append(body)
                self.sent_bytes = len(body)
            protocol.transport.write(b"".join(parts))
            self.finish()
            return
        protocol.transport.write(b"".join(parts))

    def write(self, data: bytes) -> None:
        transport = self.protocol.transport
        if self.finished or transport is None or not data or self.head_only:
            return
        self.sent_bytes += len(data)
        transport.write(_wire.chunk(data) if self.chunked else data)

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.chunked and self.protocol.transport is not None:
            self.protocol.transport.write(_wire.LAST_CHUNK)
        self.protocol.response_done(self)

    def abort(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.protocol.abort()

    def pause_upstream_with(self, producer: IPushProducer) -> None:
        protocol = self.protocol
        if protocol.transport is None or self.finished:
            producer.stopProducing()
            return
        watch = StallWatch(
            producer, clock=protocol.clock, timeout=protocol.settings.write_timeout,
            on_stall=protocol.write_stalled,
        )
        protocol.stall_watch = watch
        protocol.transport.registerProducer(watch, True)

    def stop_pausing(self) -> None:
        self.protocol.unregister_stall_watch()

    def open_tunnel(
        self, upstream: ITransport, *, idle_timeout: float, on_close: Callable[[Tunnel, str], None]
    ) -> Tunnel:
        protocol = self.protocol
        tunnel = Tunnel(
            protocol.transport, upstream, clock=protocol.clock, idle_timeout=idle_timeout, on_close=on_close
        )
        self.finished = True
        protocol.enter_tunnel(self, tunnel)
        return tunnel

    # -- BodySource ----------------------------------------------------------

    def pause_body(self) -> None:
        self.protocol.pause_reading("body")

    def resume_body(self) -> None:
        self.protocol.resume_reading("body")

    def body_wanted(self) -> None:
        if self.expect_continue and not self.started_response and self.protocol.transport is not None:
            self.expect_continue = False
            self.protocol.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")


def _has_date(headers: list[Header]) -> bool:
    for name, _ in headers:
        if name == b"date":
            return True
    return False
