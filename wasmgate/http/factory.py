# -*- test-case-name: tests.test_http_server,tests.test_limits -*-
"""
The listening side of the gateway's HTTP: the client-side limits and
timeouts, and the factory that builds a protocol per connection, keeps
count of them (C{server.max_connections}), drains them on shutdown and
hands their requests to the exchange core.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from wasmgate.http import _wire
from wasmgate.http._h1message import Exchange, Message
from wasmgate.http.message import IncomingRequest, RequestRecord
from wasmgate.http._timers import Deadline
from wasmgate.http.h2 import H2ServerProtocol
from wasmgate.http.server import HTTP11ServerProtocol

log = Logger()

StartExchange = Callable[[IncomingRequest, Message], Exchange]


class ServerSettings:
    """Limits and timeouts of the client side; a reload changes them in place."""

    def __init__(
        self,
        *,
        max_body_bytes: int = 1024 * 1024,
        read_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        write_timeout: float = 10.0,
        max_request_line: int = 8192,
        max_header_bytes: int = 65536,
        max_headers: int = 100,
        max_connections: int = 10_000,
        banner: Optional[bytes] = None,
        http2: bool = True,
        h2c: bool = False,
        max_concurrent_streams: int = 100,
        max_resets_per_second: int = 100,
        max_control_frames_per_second: int = 100,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.max_request_line = max_request_line
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_connections = max_connections
        self.banner = banner
        """A C{Server} header for answers the gateway writes itself."""
        self.http2 = http2
        """Offer HTTP/2 by ALPN under TLS."""
        self.h2c = h2c
        """Take HTTP/2 with prior knowledge in cleartext (behind a TLS load balancer)."""
        self.max_concurrent_streams = max_concurrent_streams
        self.max_resets_per_second = max_resets_per_second
        """HTTP/2: a client resetting more streams a second is cut off (rapid reset)."""
        self.max_control_frames_per_second = max_control_frames_per_second
        """HTTP/2: a client sending more PING/SETTINGS frames a second is cut off."""


class _Negotiating(Protocol):
    """
    A connection whose HTTP version is not known yet: HTTP/2 when TLS
    negotiated C{h2} (ALPN), or when cleartext bytes start with the HTTP/2
    preface and C{h2c} is on; HTTP/1.1 otherwise. Decided on the first
    bytes, then everything goes to the chosen protocol.
    """

    def __init__(self, factory: "HTTPServerFactory") -> None:
        self.factory = factory
        self.inner: Optional[Protocol] = None
        self.closing = False
        self._seen = b""
        self._since = 0.0
        self._deadline: Optional[Deadline] = None

    def connectionMade(self) -> None:
        factory = self.factory
        self._since = factory.clock.seconds()
        factory.connections.add(self)  # type: ignore[arg-type]
        settings = factory.settings
        self._deadline = Deadline(factory.clock, self._timed_out)
        self._deadline.at(self._since + min(settings.read_timeout, settings.idle_timeout))

    @property
    def idle(self) -> bool:
        return self.inner is None

    @property
    def idle_since(self) -> float:
        return self._since

    def close_idle(self) -> None:
        self.abort()

    def drain(self) -> None:
        if self.inner is None:
            self.abort()
        else:
            self.inner.drain()  # type: ignore[attr-defined]

    def abort(self) -> None:
        if self.inner is not None:
            self.inner.abort()  # type: ignore[attr-defined]
        elif self.transport is not None:
            self.closing = True
            self.transport.abortConnection()

    def _timed_out(self) -> None:
        if self.inner is None:
            self.abort()

    def dataReceived(self, data: bytes) -> None:
        inner = self.inner
        if inner is None:
            data = self._seen + data
            inner = self._choose(data)
            if inner is None:
                self._seen = data
                return
            self._seen = b""
        inner.dataReceived(data)

    def _choose(self, data: bytes) -> Optional[Protocol]:
        factory = self.factory
        negotiated = getattr(self.transport, "negotiatedProtocol", None)
        if negotiated == b"h2":
            inner: Protocol = H2ServerProtocol(factory)
        elif negotiated is None and factory.settings.h2c and len(data) < len(_H2_PREFACE) and _H2_PREFACE.startswith(data):
            return None  # could still be the HTTP/2 preface
        elif negotiated is None and factory.settings.h2c and data.startswith(_H2_PREFACE):
            inner = H2ServerProtocol(factory)
        else:
            inner = HTTP11ServerProtocol(factory)
        if self._deadline is not None:
            self._deadline.close()
            self._deadline = None
        factory.connections.discard(self)  # type: ignore[arg-type]
        self.inner = inner
        inner.makeConnection(self.transport)
        return inner

    def connectionLost(self, reason: Any = None) -> None:
        if self._deadline is not None:
            self._deadline.close()
            self._deadline = None
        if self.inner is not None:
            self.inner.connectionLost(reason)
        else:
            self.factory.connection_closed(self)  # type: ignore[arg-type]


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class _Refused(Protocol):
    """A connection over the limit: closed as soon as it is made."""

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class HTTPServerFactory(Factory):
    """
    Builds L{HTTP11ServerProtocol}s for one gateway: its settings, the
    exchange core to hand requests to, and a sink for requests refused
    before they reach it (for the access log and metrics).
    """

    noisy = False

    def __init__(
        self,
        *,
        clock: IReactorTime,
        settings: ServerSettings,
        start_exchange: StartExchange,
        refused: Callable[[RequestRecord], None],
    ) -> None:
        self.clock = clock
        self.settings = settings
        self.start_exchange = start_exchange
        self.refused = refused
        self.connections: set[HTTP11ServerProtocol] = set()
        self.draining = False
        self.date = _wire.DateCache().value
        self._closed: list[Deferred[None]] = []
        self.secure = False
        """The listeners wrap TLS around this factory's protocols (ALPN picks HTTP/2)."""
        self.refused_connections = 0
        """Connections closed at once: C{max_connections} were open, none idle."""
        self.idle_closed = 0
        """Kept-alive idle connections closed to make room for new ones."""

    def buildProtocol(self, addr: object) -> Protocol:
        """
        A protocol for a new connection; past C{max_connections}, a
        kept-alive connection idle the longest is closed to make room, and
        with none idle the new one is closed at once (and counted).
        """
        if len(self.connections) >= self.settings.max_connections:
            idle = [p for p in self.connections if p.idle and not p.closing and p.transport is not None]
            if not idle:
                self.refused_connections += 1
                if self.refused_connections & (self.refused_connections - 1) == 0:  # 1, 2, 4, 8...
                    log.warn(
                        "server.max_connections ({n}) reached: new connections are closed"
                        " ({count} so far)", n=self.settings.max_connections, count=self.refused_connections,
                    )
                return _Refused()
            self.idle_closed += 1
            min(idle, key=lambda p: p.idle_since).close_idle()
        if self.secure or self.settings.h2c:
            return _Negotiating(self)
        return HTTP11ServerProtocol(self)

    def drain(self) -> None:
        """Stop keeping connections alive; close those waiting for a request."""
        self.draining = True
        for protocol in list(self.connections):
            protocol.drain()

    def closed(self) -> "Deferred[None]":
        """Fires once every connection is closed (its last response flushed)."""
        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed.append(d)
        return d

    def abort_all(self) -> None:
        """Cut every connection (the shutdown timeout passed)."""
        for protocol in list(self.connections):
            protocol.abort()

    def connection_closed(self, protocol: HTTP11ServerProtocol) -> None:
        self.connections.discard(protocol)
        if not self.connections and self._closed:
            waiting, self._closed = self._closed, []
            for d in waiting:
                d.callback(None)
