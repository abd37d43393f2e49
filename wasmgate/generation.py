# -*- test-case-name: tests.test_ops -*-
"""
A generation: everything built from one version of gateway.yaml (routes,
upstream pools, loaded filters) that requests run on.

A reload builds a whole new generation and swaps it in; requests keep the
generation they started on, and the old one is closed once they are done.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from twisted.internet import defer
from twisted.web.iweb import IPolicyForHTTPS

from wasmgate.config import GatewayConfig, UpstreamConfig
from wasmgate.http.upstream import MAX_IDLE_UPSTREAM, UpstreamPool
from wasmgate.routing import Router
from wasmgate.upstream import Upstream, make_upstreams


@dataclass
class RouteRuntime:
    """A route with the live objects it points at."""

    config: Any  # RouteConfig
    upstream: Upstream
    chain: Optional[Any]  # FilterChain, or None for a route without filters


class Generation:
    """
    The live objects of one config version, and a count of the requests
    running on it so it can be closed when they are done.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        number: int,
        router: Router[RouteRuntime],
        upstreams: Mapping[str, Upstream],
        filters: Mapping[str, Any],
        pool: UpstreamPool,
    ) -> None:
        self.config = config
        self.number = number
        self.router = router
        self.upstreams = upstreams
        self.filters = filters
        self.pool = pool
        self.in_flight = 0
        self._drained: list[defer.Deferred[None]] = []
        self._checkers: list[Any] = []

    def start_health_checks(self, reactor: Any) -> None:
        from wasmgate.health import start_health_checks

        self._checkers = start_health_checks(self.upstreams, reactor)

    def stop_health_checks(self) -> defer.Deferred[None]:
        from wasmgate.health import stop_health_checks

        checkers, self._checkers = self._checkers, []
        return stop_health_checks(checkers)

    def inherit_health(self, previous: "Generation") -> None:
        """Targets kept across a reload keep what was learnt about them."""
        for name, upstream in self.upstreams.items():
            old = previous.upstreams.get(name)
            if old is None:
                continue
            known = {t.url: t for t in old.targets}
            for target in upstream.targets:
                if target.url in known:
                    target.inherit(known[target.url])

    def request_started(self) -> None:
        self.in_flight += 1

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def drained(self) -> defer.Deferred[None]:
        """Fires when no request runs on this generation any more."""
        if self.in_flight == 0:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._drained.append(d)
        return d

    def close(self, *, keep_filters: tuple[Any, ...] = ()) -> defer.Deferred[None]:
        """
        Release upstream connections and filter instances; filters handed
        on to a newer generation (C{keep_filters}) are left alone.
        """
        for f in self.filters.values():
            if f not in keep_filters:
                f.close()
        closing = [self.pool.close()]
        closing += [u.close() for u in self.upstreams.values()]
        return defer.gatherResults(closing, consumeErrors=True).addCallback(lambda _: None)


def build_generation(
    config: GatewayConfig,
    *,
    number: int,
    reactor: Any,
    filters: Mapping[str, Any],
    make_chain: Callable[[tuple[Any, ...], Mapping[str, Mapping[str, Any]]], Any],
    tls_policy: Callable[[UpstreamConfig], Optional[IPolicyForHTTPS]],
) -> Generation:
    """
    Wire routes, upstreams and already-loaded C{filters} (by plugin name)
    into a L{Generation}. C{make_chain(filters, route_overrides)} builds a
    route's chain.
    """
    pool = UpstreamPool(
        reactor,
        idle_timeout=config.server.timeouts.idle,
        # Idle kept-alive connections per target; a capped upstream needs no more.
        max_idle_per_target=max(
            (u.max_connections_per_target or MAX_IDLE_UPSTREAM for u in config.upstreams.values()),
            default=MAX_IDLE_UPSTREAM,
        ),
    )
    upstreams = make_upstreams(
        dict(config.upstreams),
        reactor=reactor,
        connect_timeout=config.server.timeouts.connect,
        tls_policy=tls_policy,
    )
    routes = []
    for route in config.routes:
        chain = None
        if route.filters:
            chain = make_chain(
                tuple(filters[name] for name in route.filters), route.filter_config
            )
        routes.append((route, RouteRuntime(route, upstreams[route.upstream], chain)))
    return Generation(
        config,
        number=number,
        router=Router(routes),
        upstreams=upstreams,
        filters=filters,
        pool=pool,
    )
