# -*- test-case-name: tests.test_http_server,tests.test_limits -*-
"""
The listening side of the gateway's HTTP: the client-side limits and
timeouts, and the factory that builds a protocol per connection, keeps
count of them (C{server.max_connections}), drains them on shutdown and
hands their requests to the exchange core.
"""
from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from wasmgate.http import _wire
from wasmgate.http._h1message import Exchange, Message
from wasmgate.http.message import IncomingRequest, RequestRecord
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
