# -*- test-case-name: tests.test_upstream_pool,tests.test_proxy,tests.test_http_conformance -*-
"""
The upstream side: keep-alive connections to targets, one request at a
time each, responses parsed with llhttp (C{httptools}).

L{UpstreamPool} hands out a kept-alive idle connection to a target (most
recently used first) or connects a new one through the target's Twisted
endpoint (TCP, or TLS wrapped around it); a connection whose response
ended cleanly and that both sides keep alive goes back to it, and one idle
for longer than the idle timeout is closed. L{UpstreamConnection} writes a
request head, streams or writes its body, and reports the response to a
L{ResponseHandler}: its head, body pieces, and its end or failure.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol as TypingProtocol

import httptools
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from wasmgate.http import _wire
from wasmgate.http._timers import Deadline
from wasmgate.http.message import Header
from wasmgate.http.tunnel import Tunnel

if TYPE_CHECKING:
    from wasmgate.upstream import Target


class UpstreamProtocolError(Exception):
    """The upstream's response broke HTTP/1.1 framing, or its limits (502)."""


class _Stop(Exception):
    """Raised in a parser callback to stop reading a response."""


class ResponseHandler(TypingProtocol):
    """Who a response is reported to (the exchange core)."""

    def upstream_deadline(self, now: float) -> Optional[float]:
        """
        The connection's timer fired: act on a timeout (and return None),
        or say when to look again.
        """

    def response_head(self, status: int, reason: bytes, headers: list[Header], length: Optional[int]) -> None: ...

    def response_data(self, data: bytes) -> None: ...

    def response_done(self) -> None: ...

    def response_failed(self, reason: Failure, *, received: bool) -> None:
        """
        The connection failed before the response ended; C{received} says
        whether any byte of a response had come (else a request on a
        kept-alive connection may be retried on a fresh one).
        """

    def response_upgraded(self, connection: "UpstreamConnection", rest: bytes) -> None:
        """
        The 101 to an upgrade request is in: C{connection} now carries the
        new protocol (splice it; C{rest} is what came after the head).
        """


class UpstreamConnection(Protocol):
    """One connection to a target, carrying one request at a time."""

    def __init__(self, pool: "UpstreamPool", key: str) -> None:
        self.pool = pool
        self.key = key
        self.reused = False
        """Whether it carried a request before the current one."""
        self.connected = False
        self._handler: Optional[ResponseHandler] = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[Header] = []
        self._head_bytes = 0
        self._header_size = 0
        self._reason = b""
        self._received = False
        self._head_only = False
        self._head_done = False
        self._length: Optional[int] = None
        self._close_delimited = False
        self._chunked_body = False
        self._body_sent = True
        self._broken = False
        self._head_version = "1.1"
        self.idle_since = 0.0
        self.last_data = 0.0
        """When the upstream last sent anything (for body-gap timeouts)."""
        self._clock = pool.clock
        self._deadline = Deadline(pool.clock, self._deadline_passed)
        self._upgrade = False
        self._upgraded = False
        self.tunnel: Optional[Tunnel] = None
        """After a granted upgrade: where the upstream's bytes go."""

    # -- sending -------------------------------------------------------------

    def send(
        self,
        head: bytes,
        handler: ResponseHandler,
        *,
        head_only: bool,
        first_check: float,
        chunked_body: bool = False,
        body_follows: bool = False,
        upgrade: bool = False,
    ) -> None:
        """
        Write a request head (with its whole body, if any, in C{head});
        with C{body_follows}, the body comes through L{write_body} and
        L{end_body} (chunk-encoded here when C{chunked_body}). The
        handler's L{ResponseHandler.upstream_deadline} is asked at
        C{first_check} (and then when it says). With C{upgrade}, a 101
        answer hands the connection to the handler to splice.
        """
        self._handler = handler
        self._upgrade = upgrade
        self._deadline.at(first_check)
        self._head_only = head_only
        self._chunked_body = chunked_body
        self._body_sent = not body_follows
        self._received = False
        self._head_done = False
        self._headers = []
        self._head_bytes = self._header_size = 0
        self.transport.write(head)

    def write_body(self, data: bytes) -> None:
        if self.transport is not None and data:
            self.transport.write(_wire.chunk(data) if self._chunked_body else data)

    def end_body(self) -> None:
        self._body_sent = True
        if self._chunked_body and self.transport is not None:
            self.transport.write(_wire.LAST_CHUNK)

    def abort(self) -> None:
        """Give up on the request in flight: the connection is reset."""
        self._handler = None
        self._broken = True
        if self.transport is not None:
            self.transport.abortConnection()

    # -- receiving -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_upstream(data)
            return
        if self._handler is None:
            # Nothing asked: an idle connection the upstream talks on is
            # not one to reuse.
            self._broken = True
            self.transport.loseConnection()
            return
        self._received = True
        self.last_data = self._clock.seconds()
        if not self._head_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if not self._upgraded:
                self._fail(Failure(UpstreamProtocolError("the upstream switched protocols unasked")))
                return
            handler, self._handler = self._handler, None
            self._deadline.cancel()  # a tunnel keeps its own idle time
            self.pool.forget(self)  # never back in the pool
            if handler is not None:
                handler.response_upgraded(self, data[e.args[0]:] if e.args else b"")
        except httptools.HttpParserCallbackError as e:
            if not isinstance(e.__context__, _Stop):
                raise
        except httptools.HttpParserError as e:
            self._fail(Failure(UpstreamProtocolError(f"malformed response: {e}")))
        else:
            if not self._head_done and self._head_bytes > self.pool.max_header_bytes:
                self._too_large()

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._head_done:
            headers = self._headers
            headers.append((name.lower(), value))
            self._header_size += len(name) + len(value) + 4
            if len(headers) > self.pool.max_headers or self._header_size > self.pool.max_header_bytes:
                self._too_large()
                raise _Stop()

    def _too_large(self) -> None:
        self._fail(Failure(UpstreamProtocolError(
            "response headers over the limit (%d headers, %d bytes)"
            % (self.pool.max_headers, self.pool.max_header_bytes)
        )))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status == 101 and self._upgrade:
            self._head_done = self._upgraded = True
            if self._handler is not None:
                self._handler.response_head(101, self._reason or b"Switching Protocols", self._headers, None)
            return
        if 100 <= status < 200:
            # Interim (100 Continue, 103 Early Hints): the real one follows.
            self._headers = []
            self._header_size = 0
            self._reason = b""
            return
        self._head_done = True
        length = None
        chunked = False
        for name, value in self._headers:
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        self._length = length
        no_body = self._head_only or status in (204, 304)
        self._close_delimited = not no_body and length is None and not chunked
        handler = self._handler
        reason = self._reason or _wire.reason_phrase(status)
        self._reason = b""
        if handler is not None:
            handler.response_head(status, reason, self._headers, length)
        if self._head_only and self._handler is not None:
            # llhttp cannot be told a response has no body: the next
            # response gets a fresh parser (none can come before a request).
            self._head_version = self._parser.get_http_version()
            self._parser = httptools.HttpResponseParser(self)
            self._complete()

    def on_body(self, data: bytes) -> None:
        if self._handler is not None:
            self._handler.response_data(data)
        elif self._head_done and self._head_only:
            # A body after a HEAD response: not a connection to reuse.
            self._broken = True
            self.pool.forget(self)
            self.transport.loseConnection()

    def on_message_complete(self) -> None:
        if self._head_done and self._handler is not None and not self._upgraded:
            self._complete()

    def _complete(self) -> None:
        handler, self._handler = self._handler, None
        keep = self._body_sent and not self._broken
        if self._head_only:
            keep = keep and self._head_version == "1.1" and not _says_close(self._headers)
        else:
            keep = keep and not self._close_delimited and self._parser.should_keep_alive()
        # Back in the pool first: the handler may send the next request
        # (a pipelined one) before this returns.
        if keep and self.transport is not None:
            self.pool.release(self)
        elif self.transport is not None:
            self.transport.loseConnection()
        if handler is not None:
            handler.response_done()

    def _fail(self, reason: Failure) -> None:
        handler, self._handler = self._handler, None
        self._broken = True
        if self.transport is not None:
            self.transport.abortConnection()
        if handler is not None:
            handler.response_failed(reason, received=self._received)

    def connectionMade(self) -> None:
        self.connected = True
        _wire.no_delay(self.transport)  # a request's head and its streamed body go in separate writes

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.connected = False
        self.pool.forget(self)
        self._deadline.close()
        self._parser = httptools.HttpResponseParser(_wire.NO_CALLBACKS)
        if self.tunnel is not None:
            self.tunnel.upstream_closed()
            return
        handler, self._handler = self._handler, None
        if handler is None:
            return
        if self._head_done and self._close_delimited:
            handler.response_done()  # the body ended with the connection
            return
        handler.response_failed(reason, received=self._received)

    # -- idle in the pool --------------------------------------------------

    def went_idle(self, now: float, timeout: float) -> None:
        self.reused = True
        self.idle_since = now
        self.transport.resumeProducing()  # it may have been paused by a slow client
        self._deadline.at(now + timeout)

    def _deadline_passed(self) -> None:
        if not self.connected:
            return
        now = self._clock.seconds()
        handler = self._handler
        if handler is not None:
            later = handler.upstream_deadline(now)
            if later is not None:
                self._deadline.at(later)
            return
        deadline = self.idle_since + self.pool.idle_timeout
        if now >= deadline:
            self.pool.forget(self)
            self.transport.loseConnection()
        else:
            self._deadline.at(deadline)

    @property
    def producer(self) -> IPushProducer:
        """The transport: pausing it stops reading the upstream."""
        return self.transport  # type: ignore[no-any-return]


def _says_close(headers: list[Header]) -> bool:
    for name, value in headers:
        if name == b"connection" and b"close" in value.lower():
            return True
    return False


MAX_IDLE_UPSTREAM = 1024
"""
Idle kept-alive upstream connections a pool keeps (per target, and in all):
enough for a burst of responses to find their connections again (at 64, a
burst of 500 closed most and connected again), bounded so that the
descriptors they hold are reserved beside the clients'.
"""


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, pool: "UpstreamPool", key: str) -> None:
        self.pool = pool
        self.key = key

    def buildProtocol(self, addr: object) -> UpstreamConnection:
        return UpstreamConnection(self.pool, self.key)


class UpstreamPool:
    """
    Kept-alive connections to every target of one generation's upstreams.
    """

    max_headers = 200
    """Response header lines an upstream may send (more: 502)."""
    max_header_bytes = 65536
    """Bytes of response head an upstream may send (more: 502)."""

    def __init__(
        self, clock: IReactorTime, *, idle_timeout: float, max_idle_per_target: int = MAX_IDLE_UPSTREAM,
        max_idle: int = MAX_IDLE_UPSTREAM,
    ) -> None:
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_idle_per_target = max_idle_per_target
        self.max_idle = max_idle
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self._closed = False

    def idle(self, target: "Target") -> Optional[UpstreamConnection]:
        """A kept-alive connection to C{target}, most recently used first."""
        idle = self._idle.get(target.url)
        while idle:
            conn = idle.pop()
            if conn.connected:
                return conn
        return None

    def connect(self, target: "Target") -> "Deferred[UpstreamConnection]":
        """A new connection to C{target}."""
        assert target.endpoint is not None
        return target.endpoint.connect(_ConnectionFactory(self, target.url))

    def release(self, conn: UpstreamConnection) -> None:
        """C{conn}'s response is done and it can carry another request."""
        idle = self._idle.setdefault(conn.key, [])
        if (
            self._closed or conn.transport is None or len(idle) >= self.max_idle_per_target
            or self.idle_count() >= self.max_idle
        ):
            if conn.transport is not None:
                conn.transport.loseConnection()
            return
        conn.went_idle(self.clock.seconds(), self.idle_timeout)
        idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """C{conn} closed (or is closing): never hand it out again."""
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def close(self) -> "Deferred[None]":
        """Close idle connections; busy ones close when their response ends."""
        self._closed = True
        for idle in self._idle.values():
            for conn in list(idle):
                if conn.transport is not None:
                    conn.transport.loseConnection()
        self._idle.clear()
        return succeed(None)
