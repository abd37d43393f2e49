# -*- test-case-name: tests.test_health -*-
"""
Active health checks: a periodic GET to each target of an upstream that
takes a failing target out of rotation and puts it back once it answers
again.

Passive ejection (L{wasmgate.upstream.Target.failed}) only learns that a
target is gone by sending it real requests; an active check learns it
between requests, so clients do not pay for the discovery.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.internet.protocol import Protocol
from twisted.web.client import PotentialDataLoss, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

from wasmgate.config import HealthCheckConfig
from wasmgate.upstream import Target, Upstream

_USER_AGENT = b"wasmgate-health-check"


class _TargetState:
    """Consecutive results of one target's checks."""

    __slots__ = ("passes", "failures", "running", "last_error")

    def __init__(self) -> None:
        self.passes = 0
        self.failures = 0
        self.running: Optional[Deferred[Any]] = None
        self.last_error = ""


@dataclass(frozen=True)
class TargetHealth:
    """What the checks found about one target so far (for tests, metrics)."""

    passes: int
    """Consecutive passing checks."""
    failures: int
    """Consecutive failed checks."""
    last_error: str
    """Why the last failed check failed ("" if none failed yet)."""
    checking: bool
    """A check is in flight."""


class HealthChecker:
    """
    Checks every target of one upstream each C{interval} seconds.

    A target whose check failed C{unhealthy_threshold} times in a row gets
    C{healthy = False} (the upstream skips it); one that then passed
    C{healthy_threshold} times in a row gets C{healthy = True} again. A
    check still running when the next tick comes is not started twice.
    """

    def __init__(
        self,
        upstream: Upstream,
        *,
        reactor: Any,
        agent: Optional[IAgent] = None,
        log: Optional[Logger] = None,
    ) -> None:
        config = upstream.config.health_check
        if config is None:
            raise ValueError(f"upstream {upstream.name!r} has no health_check config")
        self.upstream = upstream
        self.config: HealthCheckConfig = config
        self._reactor = reactor
        # The upstream's own agent, so checks go through the same pool (and
        # TLS policy) as the traffic they vouch for.
        self._agent = agent if agent is not None else upstream.agent
        self._log = log if log is not None else Logger(namespace=__name__, source=self)
        self._states: dict[Target, _TargetState] = {t: _TargetState() for t in upstream.targets}
        self._loop: Optional[LoopingCall] = None

    @property
    def running(self) -> bool:
        return self._loop is not None and self._loop.running

    def state(self, target: Target) -> TargetHealth:
        s = self._states[target]
        return TargetHealth(s.passes, s.failures, s.last_error, s.running is not None)

    def start(self) -> None:
        """Check every target now, then every C{interval}."""
        if self.running:
            return
        loop = LoopingCall(self._tick)
        loop.clock = self._reactor
        self._loop = loop
        loop.start(self.config.interval, now=True).addErrback(
            lambda f: self._log.failure("health check loop of upstream {upstream} died", f,
                                        upstream=self.upstream.name)
        )

    def stop(self) -> Deferred[None]:
        """
        Stop checking; checks in flight are cancelled. Fires once they have
        all finished, so no check outlives the generation that owns it.
        """
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        pending = [s.running for s in self._states.values() if s.running is not None]
        for d in pending:
            d.cancel()
        return defer.gatherResults(pending, consumeErrors=True).addCallback(lambda _: None)

    def _tick(self) -> None:
        for target, state in self._states.items():
            if state.running is not None:
                continue  # the previous check of this target is still going
            d = self.check(target)
            state.running = d
            d.addBoth(self._finished, target, state)

    def check(self, target: Target) -> Deferred[Optional[str]]:
        """
        One check of C{target}: fires with C{None} if it passed, or with why
        it failed. Never errbacks (except when cancelled).
        """
        url = (target.url + self.config.path).encode("ascii")
        d = self._agent.request(b"GET", url, Headers({b"user-agent": [_USER_AGENT]}))

        def got(response: Any) -> Deferred[Optional[str]]:
            # Read (and drop) the body: a response left unread keeps its
            # connection out of the pool.
            body = _discard_body(response)
            low, high = self.config.expect_status
            if low <= response.code <= high:
                return body.addCallback(lambda _: None)
            return body.addCallback(
                lambda _: f"status {response.code}, expected {low}-{high}"
            )

        d.addCallback(got)
        timeout = self.config.timeout
        d.addTimeout(timeout, self._reactor, onTimeoutCancel=_timed_out)
        d.addErrback(_describe_failure)
        return d

    def _finished(self, result: Any, target: Target, state: _TargetState) -> None:
        state.running = None
        if self._loop is None:
            return  # stopped: a cancelled check is no verdict
        if isinstance(result, Failure):
            # A bug in the check itself: not a verdict on the target.
            if not result.check(defer.CancelledError):
                self._log.failure("health check of {target} crashed", result, target=target.url)
            return
        if result is None:
            self._passed(target, state)
        else:
            self._failed(target, state, result)

    def _passed(self, target: Target, state: _TargetState) -> None:
        state.failures = 0
        state.passes += 1
        if not target.healthy and state.passes >= self.config.healthy_threshold:
            target.healthy = True
            # It just answered: forget passive failures from its outage too.
            target.succeeded()
            self._log.info(
                "upstream {upstream}: target {target} is healthy again "
                "({n} passing health check(s) in a row)",
                upstream=self.upstream.name, target=target.url, n=state.passes,
            )

    def _failed(self, target: Target, state: _TargetState, why: str) -> None:
        state.passes = 0
        state.failures += 1
        state.last_error = why
        if target.healthy and state.failures >= self.config.unhealthy_threshold:
            target.healthy = False
            self._log.warn(
                "upstream {upstream}: target {target} is unhealthy, taken out of rotation "
                "({n} failed health check(s) in a row; last: GET {path}: {why})",
                upstream=self.upstream.name, target=target.url, n=state.failures,
                path=self.config.path, why=why,
            )


class _Discard(Protocol):
    """Read a body to its end and drop it."""

    def __init__(self, finished: Deferred[None]) -> None:
        self.finished = finished

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(None)
        else:
            self.finished.errback(reason)


def _discard_body(response: Any) -> Deferred[None]:
    """
    Like C{readBody}, but keeps nothing; cancelling it drops the connection
    (C{readBody} cannot: the body's transport has no C{abortConnection}).
    """
    protocol: _Discard

    def cancel(d: Deferred[None]) -> None:
        if protocol.transport is not None:
            protocol.transport.stopProducing()

    protocol = _Discard(Deferred(cancel))
    response.deliverBody(protocol)
    return protocol.finished


class _TimedOut(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def _timed_out(result: Any, timeout: float) -> Any:
    # Whatever the cancel turned into (the Agent makes it a
    # ResponseNeverReceived), the check timed out.
    raise _TimedOut(timeout)


def _describe_failure(reason: Failure) -> str:
    """A failed check as a short reason for the log."""
    if reason.check(_TimedOut):
        return f"no answer within {reason.value.seconds:g}s"
    if reason.check(defer.CancelledError):
        # Cancellation from stop(): let the caller see it as such.
        reason.raiseException()
    value = reason.value
    inner = getattr(value, "reasons", None)  # ResponseNeverReceived & co.
    if inner:
        value = inner[0].value
    text = str(value).strip() or type(value).__name__
    return text.splitlines()[0]


def start_health_checks(upstreams: Mapping[str, Upstream], reactor: Any) -> list[HealthChecker]:
    """A started L{HealthChecker} per upstream that has a C{health_check}."""
    checkers = []
    for upstream in upstreams.values():
        if upstream.config.health_check is not None:
            checker = HealthChecker(upstream, reactor=reactor)
            checker.start()
            checkers.append(checker)
    return checkers


def stop_health_checks(checkers: list[HealthChecker]) -> Deferred[None]:
    """Stop them all; fires when no check is in flight any more."""
    return defer.gatherResults([c.stop() for c in checkers], consumeErrors=True).addCallback(
        lambda _: None
    )
