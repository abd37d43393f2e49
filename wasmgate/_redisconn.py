# -*- test-case-name: tests.test_state_redis -*-
"""
The Redis counter store's connection: txredisapi's factory and protocol
made to keep reconnecting (and to say how it went, once per outage, through
L{Health}), and an endpoint that retries with back-off.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import txredisapi
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wasmgate.state import StateError


def tcp_endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    # HostnameEndpoint reports a refused connection only after its 0.3 s
    # attempt delay; an address needs no resolving nor racing.
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return HostnameEndpoint(reactor, host, port, timeout=timeout)



class Health:
    """
    What the store knows about reaching Redis: why it last failed, for error
    messages, and the log lines, one per outage (then one per
    C{log_interval} while it lasts) instead of one per attempt.
    """

    def __init__(self, *, url: str, reactor: Any, log: Logger, log_interval: float) -> None:
        self.url = url
        self._reactor = reactor
        self._log = log
        self._log_interval = log_interval
        self.last_error: Optional[str] = None
        # Redis said no (wrong password or database, TLS failure): retry slowly.
        self.refusing = False
        self.down = False
        self._down_since = 0.0
        self._failures = 0
        self._logged_at = 0.0
        self._lost_in_handshake = False
        self.waiters: list[Deferred[None]] = []

    def unreachable(self, why: Optional[str] = None) -> StateError:
        why = why or self.last_error or "no connection (reconnecting)"
        return StateError(f"redis at {self.url} unreachable: {why}")

    def attempt_failed(self, f: Failure) -> None:
        """A connection attempt failed (refused, timed out, no route...)."""
        self.failed(f.getErrorMessage())

    def connection_lost(self, why: Failure, *, usable: bool) -> None:
        if usable:
            # Reconnecting at once; if that fails, attempt_failed logs it.
            self.last_error = f"connection lost ({why.getErrorMessage()})"
        elif not self.refusing:
            # Connected but lost before Redis answered: TLS refused, server
            # going away. Retry slowly, like a refusal. txredisapi reports
            # this again as a handshake error, without the reason;
            # handshake_failed ignores that.
            self._lost_in_handshake = self.refusing = True
            self.failed(why.getErrorMessage())

    def handshake_failed(self, why: str) -> None:
        """txredisapi's AUTH or SELECT failed (C{"Redis error: could not ..."})."""
        if self._lost_in_handshake:
            self._lost_in_handshake = False
            return
        self.refusing = True
        self.failed(why.replace("Redis error: ", ""))

    def connection_usable(self) -> None:
        if self.down:
            self._log.info(
                "redis at {url} reachable again after {seconds:.1f} s",
                url=self.url,
                seconds=self._reactor.seconds() - self._down_since,
            )
        self.down = self.refusing = self._lost_in_handshake = False
        self.last_error = None

    def failed(self, why: str) -> None:
        self.last_error = why = why.rstrip(".")
        now = self._reactor.seconds()
        self._failures += 1
        if not self.down:
            self.down = True
            self._down_since = self._logged_at = now
            self._failures = 1
            self._log.warn(
                "redis at {url} unreachable: {why}; retrying in the background",
                url=self.url,
                why=why,
            )
        elif now - self._logged_at >= self._log_interval:
            self._logged_at = now
            self._log.warn(
                "redis at {url} still unreachable after {failures} attempts: {why}",
                url=self.url,
                failures=self._failures,
                why=why,
            )
        self.waiters, waiting = [], self.waiters
        error = self.unreachable()
        for d in waiting:
            if not d.called:
                d.errback(error)


class _Protocol(txredisapi.RedisProtocol):
    """txredisapi's protocol, telling the store's L{Health} how it went."""

    factory: "Factory"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.usable = False
        self.whenConnected().addCallback(self._usable)

    def _usable(self, _: object) -> None:
        self.usable = True
        self.factory.health.connection_usable()

    def connectionLost(self, why: Failure) -> None:  # noqa: N802 (Twisted API)
        # First, so that the calls failed by super() find the reason recorded.
        self.factory.health.connection_lost(why, usable=self.usable)
        super().connectionLost(why)


class Factory(txredisapi.RedisFactory):
    """
    txredisapi's factory, but it never gives up: txredisapi stops
    reconnecting for good when AUTH or SELECT fails, even when the
    connection merely dropped meanwhile or Redis was briefly at maxclients.
    After a refusal it retries every C{refused_retry_delay} seconds.
    (The store closes through L{disconnect}, which still stops it.)
    """

    protocol = _Protocol
    health: Health
    refused_retry_delay = 10.0

    def stopTrying(self) -> Deferred[None]:  # noqa: N802 (txredisapi API)
        return defer.succeed(None)

    def connectionError(self, why: str) -> None:  # noqa: N802 (txredisapi API)
        super().connectionError(why)
        self.health.handshake_failed(why)

    def retryDelay(self, attempt: int) -> float:  # noqa: N802 (txredisapi API)
        delay = float(super().retryDelay(attempt))
        return max(delay, self.refused_retry_delay) if self.health.refusing else delay


@implementer(IStreamClientEndpoint)
class RetryingEndpoint:
    """
    An endpoint whose C{connect} keeps trying (backing off up to
    C{max_delay}) until it succeeds or is cancelled, reporting each failure.

    txredisapi's pool reconnects through C{ClientService}, which logs every
    failed attempt; it only sees this endpoint succeed, so an outage costs
    one log line of ours instead of one of its per attempt.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        reactor: Any,
        *,
        name: str,
        max_delay: float,
        failed: Callable[[Failure], None],
        initial_delay: float = 0.05,
    ) -> None:
        self._endpoint = endpoint
        self._reactor = reactor
        self._name = name
        self._max_delay = max_delay
        self._initial_delay = initial_delay
        self._failed = failed

    def __repr__(self) -> str:
        return f"<redis endpoint {self._name}>"

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        state: dict[str, Any] = {"attempt": None, "retry": None, "cancelled": False, "delay": 0.0}

        def cancel(_: Deferred[Any]) -> None:
            state["cancelled"] = True
            if state["retry"] is not None and state["retry"].active():
                state["retry"].cancel()
            if state["attempt"] is not None:
                state["attempt"].cancel()

        result: Deferred[Any] = Deferred(cancel)

        def attempt() -> None:
            state["retry"] = None
            state["attempt"] = d = self._endpoint.connect(factory)
            d.addCallbacks(connected, failed)

        def connected(protocol: Any) -> None:
            state["attempt"] = None
            result.callback(protocol)

        def failed(f: Failure) -> None:
            state["attempt"] = None
            if state["cancelled"]:
                return
            self._failed(f)
            state["delay"] = min(self._max_delay, max(self._initial_delay, state["delay"] * 2))
            state["retry"] = self._reactor.callLater(state["delay"], attempt)

        attempt()
        return result
