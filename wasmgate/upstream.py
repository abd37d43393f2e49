# -*- test-case-name: tests.test_proxy,tests.test_health -*-
"""
Upstreams: their targets (with the endpoint each is reached through) and
which target a request goes to. Requests travel over the generation's
L{wasmgate.http.upstream.UpstreamPool}; health checks use an L{Agent} of
their own (they are not on the hot path).
"""
from __future__ import annotations

import ipaddress
import itertools
import zlib
from typing import Any, Callable, Iterator, Optional, Sequence
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
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

    def __init__(
        self,
        url: str,
        *,
        eject_after: int,
        eject_for: float,
        endpoint: Optional[IStreamClientEndpoint] = None,
    ) -> None:
        self.url = url
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.netloc = parts.netloc
        self.host = parts.hostname or ""
        self.endpoint = endpoint
        """How a connection to it is made (TCP, or TLS around it)."""
        self.healthy = True
        """Set by active health checks; an unhealthy target gets no traffic."""
        self.active = 0
        """Requests in flight to this target."""
        self.consecutive_failures = 0
        self.last_failure = float("-inf")
        self.ejected_until = float("-inf")
        self._eject_after = eject_after
        self.eject_for = eject_for

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until

    def recently_failed(self, now: float, window: float = 1.0) -> bool:
        return now - self.last_failure < window

    def failed(self, now: float) -> bool:
        """
        Count a failure to connect toward ejection; the target is also
        passed over for a moment. True when this failure ejected it.

        Only connect-level failures count: a 5xx, a reset mid-request or a
        malformed request are about one request (a client can cause them
        at will), not about whether the target is up.
        """
        self.consecutive_failures += 1
        self.last_failure = now
        if self.consecutive_failures >= self._eject_after and now >= self.ejected_until:
            self.ejected_until = now + self.eject_for
            return True
        return False

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
        endpoints: Optional[Callable[[str], IStreamClientEndpoint]] = None,
        health_pool: Optional[HTTPConnectionPool] = None,
    ) -> None:
        self.name = config.name
        self._health_pool = health_pool
        self.config = config
        self.agent = agent
        """For health checks."""
        self.targets = [
            Target(
                url,
                eject_after=config.eject_after_failures,
                eject_for=config.eject_for,
                endpoint=endpoints(url) if endpoints is not None else None,
            )
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

    def close(self) -> "Deferred[None]":
        """Close the health checks' kept-alive connections."""
        if self._health_pool is None:
            return succeed(None)
        return self._health_pool.closeCachedConnections()

    def all_down(self) -> bool:
        return not any(t.healthy for t in self.targets)

    def candidates(self, client_ip: str = "") -> list[Target]:
        """
        Targets to try for one request, best first: the policy's choice
        among available targets, those that failed a moment ago last.

        @raise NoTargetAvailable: if health checks took every target out.
        """
        if len(self.targets) == 1:
            return self._only()
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

    def _only(self) -> list[Target]:
        # One target: passive ejection never takes it out (see candidates).
        target = self.targets[0]
        if not target.healthy:
            raise NoTargetAvailable(self.name)
        cap = self.config.max_connections_per_target
        if cap is not None and target.active >= cap:
            raise UpstreamBusy(self.name)
        return [target]

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


def _health_pool(reactor: object) -> HTTPConnectionPool:
    """Health checks keep one connection per target alive between checks."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 1
    return pool


@implementer(IAgentEndpointFactory)
class _TargetEndpoints:
    """
    Endpoints for upstream targets: a target named by IP address gets a
    plain TCP endpoint (no resolver thread, no Happy Eyeballs delay, so a
    refused connection fails at once and the retry on another target is
    quick); a name goes through Twisted's L{HostnameEndpoint} as usual.
    TLS targets get the upstream's verification policy wrapped around.
    """

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS, connect_timeout: float) -> None:
        self._reactor = reactor
        self._policy = policy
        self._timeout = connect_timeout
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def for_url(self, url: str) -> IStreamClientEndpoint:
        return self.endpointForURI(URI.fromBytes(url.encode("ascii")))

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
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            endpoint: IStreamClientEndpoint = HostnameEndpoint(
                self._reactor, uri.host, uri.port, timeout=self._timeout
            )
        else:
            tcp = TCP4ClientEndpoint if address.version == 4 else TCP6ClientEndpoint
            endpoint = tcp(self._reactor, str(address), uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            return wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


def make_upstreams(
    configs: dict[str, UpstreamConfig],
    *,
    reactor: object,
    connect_timeout: float,
    tls_policy: Callable[[UpstreamConfig], Optional[IPolicyForHTTPS]],
) -> dict[str, Upstream]:
    """
    An L{Upstream} per config; C{tls_policy} gives the HTTPS verification
    policy of an upstream (None: Twisted's default).
    """
    upstreams = {}
    for name, config in configs.items():
        policy = tls_policy(config) or BrowserLikePolicyForHTTPS()
        endpoints = _TargetEndpoints(reactor, policy, connect_timeout)
        pool = _health_pool(reactor)
        agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
        upstreams[name] = Upstream(
            config, agent=agent, clock=reactor, endpoints=endpoints.for_url,  # type: ignore[arg-type]
            health_pool=pool,
        )
    return upstreams
