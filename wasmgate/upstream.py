# -*- test-case-name: tests.test_proxy,tests.test_health -*-
"""
Upstreams: their targets, which target a request goes to, and the shared
L{Agent} and keep-alive L{HTTPConnectionPool} that carry it there.
"""
from __future__ import annotations

import ipaddress
import itertools
import zlib
from typing import Any, Callable, Iterator, Optional, Sequence
from urllib.parse import urlsplit

from twisted.internet.interfaces import IReactorTime
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
    _StandardEndpointFactory,
)
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from wasmgate.config import UpstreamConfig


class Target:
    """
    One address of an upstream, with what we know of its health.

    A target that failed C{eject_after} times in a row is left out of
    rotation for C{eject_for} seconds; a target that just failed is passed
    over while another one is available.
    """

    def __init__(self, url: str, *, eject_after: int, eject_for: float) -> None:
        self.url = url
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.netloc = parts.netloc
        self.host = parts.hostname or ""
        self.healthy = True
        """Set by active health checks; an unhealthy target gets no traffic."""
        self.active = 0
        """Requests in flight to this target."""
        self.consecutive_failures = 0
        self.last_failure = float("-inf")
        self.ejected_until = float("-inf")
        self._eject_after = eject_after
        self._eject_for = eject_for

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until

    def recently_failed(self, now: float, window: float = 1.0) -> bool:
        return now - self.last_failure < window

    def failed(self, now: float, *, answered: bool = False) -> None:
        """
        Count a failure toward ejection; a connection failure (not an
        C{answered} 5xx) also makes the target be passed over for a moment.
        """
        self.consecutive_failures += 1
        if not answered:
            self.last_failure = now
        if self.consecutive_failures >= self._eject_after:
            self.ejected_until = now + self._eject_for

    def inherit(self, other: "Target") -> None:
        self.healthy = other.healthy
        self.consecutive_failures = other.consecutive_failures
        self.last_failure = other.last_failure
        self.ejected_until = other.ejected_until

    def succeeded(self) -> None:
        self.consecutive_failures = 0
        self.last_failure = float("-inf")
        self.ejected_until = float("-inf")

    def __repr__(self) -> str:
        return f"<Target {self.url}>"


class NoTargetAvailable(Exception):
    """Every target of an upstream is unhealthy."""


class UpstreamBusy(NoTargetAvailable):
    """Every usable target already has C{max_connections_per_target} requests."""


class Upstream:
    """
    A named group of targets behind one load-balancing policy.
    """

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        agent: IAgent,
        clock: IReactorTime,
    ) -> None:
        self.name = config.name
        self.config = config
        self.agent = agent
        self.targets = [
            Target(url, eject_after=config.eject_after_failures, eject_for=config.eject_for)
            for url in config.targets
        ]
        self._clock = clock
        self._ring: Iterator[int] = itertools.cycle(range(len(self.targets)))
        self._pick: Callable[[str], Sequence[Target]] = {
            "round_robin": self._round_robin,
            "least_requests": self._least_requests,
            "ip_hash": self._ip_hash,
        }[config.lb]

    def now(self) -> float:
        return self._clock.seconds()

    def all_down(self) -> bool:
        return not any(t.healthy for t in self.targets)

    def candidates(self, client_ip: str = "") -> list[Target]:
        """
        Targets to try for one request, best first: the policy's choice
        among available targets, those that failed a moment ago last.

        @raise NoTargetAvailable: if health checks took every target out.
        """
        now = self._clock.seconds()
        usable = [t for t in self.targets if t.available(now)]
        if not usable:
            # Passive ejection alone never makes an upstream unreachable:
            # better to try a target that failed than to refuse outright.
            usable = [t for t in self.targets if t.healthy]
        if not usable:
            raise NoTargetAvailable(self.name)
        cap = self.config.max_connections_per_target
        if cap is not None:
            usable = [t for t in usable if t.active < cap]  # one connection per request
            if not usable:
                raise UpstreamBusy(self.name)
        ordered = list(self._pick(client_ip))
        ordered = [t for t in ordered if t in usable]
        return sorted(ordered, key=lambda t: t.recently_failed(now))

    def _round_robin(self, client_ip: str) -> Sequence[Target]:
        start = next(self._ring)
        n = len(self.targets)
        return [self.targets[(start + i) % n] for i in range(n)]

    def _least_requests(self, client_ip: str) -> Sequence[Target]:
        # Ties broken by round robin so equal targets share the load.
        rotated = self._round_robin(client_ip)
        return sorted(rotated, key=lambda t: t.active)

    def _ip_hash(self, client_ip: str) -> Sequence[Target]:
        n = len(self.targets)
        start = zlib.crc32(client_ip.encode()) % n
        return [self.targets[(start + i) % n] for i in range(n)]


class _QuietClientFactory(_HTTP11ClientFactory):
    """No "Starting factory" log line per upstream connection."""

    noisy = False


def make_pool(
    reactor: object, *, max_per_host: int, idle_timeout: float = 60.0
) -> HTTPConnectionPool:
    """
    The one keep-alive pool every upstream request goes through.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool._factory = _QuietClientFactory
    pool.maxPersistentPerHost = max_per_host
    pool.cachedConnectionTimeout = idle_timeout
    # A kept-alive connection the upstream closed just as a request went out
    # fails with nothing received: Twisted then retries a body-less GET,
    # HEAD, OPTIONS, DELETE or TRACE once on a fresh connection to the same
    # target (never after a cancel, never once an answer began). Retrying
    # on another target after a connect failure is the gateway's decision.
    pool.retryAutomatically = True
    return pool


@implementer(IAgentEndpointFactory)
class _TargetEndpoints:
    """
    Endpoints for upstream targets: a target named by IP address gets a
    plain TCP endpoint (no resolver thread, no Happy Eyeballs delay, so a
    refused connection fails at once and the retry on another target is
    quick); a name goes through Twisted's L{HostnameEndpoint} as usual.
    """

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS, connect_timeout: float) -> None:
        self._reactor = reactor
        self._policy = policy
        self._timeout = connect_timeout
        self._standard = _StandardEndpointFactory(reactor, policy, connect_timeout, None)
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        # The Agent asks for every request, pooled or not: build each once.
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = self._endpoint(uri)
        return endpoint

    def _endpoint(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return self._standard.endpointForURI(uri)
        tcp = TCP4ClientEndpoint if address.version == 4 else TCP6ClientEndpoint
        endpoint = tcp(self._reactor, host, uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            return wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


def make_upstreams(
    configs: dict[str, UpstreamConfig],
    *,
    reactor: object,
    pool: HTTPConnectionPool,
    connect_timeout: float,
    tls_policy: Callable[[UpstreamConfig], Optional[IPolicyForHTTPS]],
) -> dict[str, Upstream]:
    """
    An L{Upstream} per config, all sharing C{pool}; C{tls_policy} gives the
    HTTPS verification policy of an upstream (None: Twisted's default).
    """
    upstreams = {}
    for name, config in configs.items():
        policy = tls_policy(config) or BrowserLikePolicyForHTTPS()
        agent = Agent.usingEndpointFactory(
            reactor, _TargetEndpoints(reactor, policy, connect_timeout), pool=pool
        )
        upstreams[name] = Upstream(config, agent=agent, clock=reactor)  # type: ignore[arg-type]
    return upstreams

