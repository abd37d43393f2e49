# -*- test-case-name: tests.test_websocket -*-
"""
A spliced connection: after an upgrade (WebSocket) was answered 101, the
client's connection and the upstream's carry bytes both ways, as they come,
until either side closes or nothing moves for C{tunnel_idle}.

Each side's transport is the other's producer, so a side that cannot take
more pauses reading the other (backpressure both ways, TCP's own). The
gateway does not look at the bytes: WebSocket framing is the two ends'.
"""
from __future__ import annotations

from typing import Callable, Optional, Protocol as TypingProtocol

from twisted.internet.interfaces import IReactorTime, ITransport

from wasmgate.http._timers import Deadline


class TunnelEnd(TypingProtocol):
    """One side of a tunnel: the protocol whose bytes it carries."""

    def tunnel_opened(self, tunnel: "Tunnel") -> None:
        """From now on hand what arrives to C{tunnel}."""


class Tunnel:
    """Bytes both ways between two transports."""

    def __init__(
        self,
        client: ITransport,
        upstream: ITransport,
        *,
        clock: IReactorTime,
        idle_timeout: float,
        on_close: Callable[["Tunnel", str], None],
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.opened = clock.seconds()
        self.bytes_in = 0
        """From the client to the upstream."""
        self.bytes_out = 0
        """From the upstream to the client."""
        self.closed: Optional[str] = None
        """Why it ended (None while it is open)."""
        self._on_close = on_close
        self._last = self.opened
        self._deadline = Deadline(clock, self._idle_check)
        self._deadline.at(self.opened + idle_timeout)
        # Each side's writes, when they back up, pause reading the other.
        client.registerProducer(upstream, True)  # type: ignore[attr-defined]
        upstream.registerProducer(client, True)  # type: ignore[attr-defined]

    def from_client(self, data: bytes) -> None:
        if self.closed is None:
            self.bytes_in += len(data)
            self._last = self.clock.seconds()
            self.upstream.write(data)

    def from_upstream(self, data: bytes) -> None:
        if self.closed is None:
            self.bytes_out += len(data)
            self._last = self.clock.seconds()
            self.client.write(data)

    def client_closed(self) -> None:
        self._end("client closed", self.upstream)

    def upstream_closed(self) -> None:
        self._end("upstream closed", self.client)

    def close(self, why: str) -> None:
        """End it from the gateway's side (idle, shutdown): both sides go."""
        self._end(why, self.client)
        self.upstream.loseConnection()

    def _idle_check(self) -> None:
        if self.closed is not None:
            return
        due = self._last + self.idle_timeout
        if self.clock.seconds() >= due:
            self.close("idle for %gs" % (self.idle_timeout,))
        else:
            self._deadline.at(due)

    def _end(self, why: str, other: ITransport) -> None:
        if self.closed is not None:
            return
        self.closed = why
        self._deadline.cancel()
        for transport in (self.client, self.upstream):
            try:
                transport.unregisterProducer()  # type: ignore[attr-defined]
            except Exception:  # already gone
                pass
        other.loseConnection()  # what it was sent is flushed first
        self._on_close(self, why)
