"""
Active health checks against real upstream sockets: thresholds, no
overlapping checks, and a real gateway moving traffic off a dead target and
back, and answering 503 at once when every target is down.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import pytest_twisted
from twisted.internet import reactor, task
from twisted.logger import Logger, formatEvent
from twisted.protocols.policies import WrappingFactory
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool


from tests.upstream_app import CountingSite, UpstreamApp
from wasmgate.config import HealthCheckConfig, UpstreamConfig
from wasmgate.health import HealthChecker, start_health_checks, stop_health_checks
from wasmgate.upstream import Upstream


class _Health(resource.Resource):
    """A /hc whose status can be set, that can hang, and counts overlap."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.code = 200
        self.hang = False
        self.in_flight = 0
        self.max_in_flight = 0
        self.hits = 0

    def render_GET(self, request: server.Request) -> Any:
        self.hits += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

        def gone(_: Any) -> None:
            self.in_flight -= 1

        request.notifyFinish().addBoth(gone)
        if self.hang:
            return server.NOT_DONE_YET
        request.setResponseCode(self.code)
        return b"x" * 100


class _Backend:
    """
    An upstream that can die (stop listening and drop its connections, as
    a killed process would) and come back on the same port.
    """

    def __init__(self, name: str) -> None:
        self.app = UpstreamApp(reactor, name=name)
        self.health = _Health()
        self.app.putChild(b"hc", self.health)
        self.site = _TrackingSite(self.app)
        self.factory = WrappingFactory(self.site)  # knows its open connections
        self.port: Any = None
        self.number = 0

    def listen(self) -> None:
        self.port = reactor.listenTCP(self.number, self.factory, interface="127.0.0.1")
        self.number = self.port.getHost().port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.number}"

    async def stop(self) -> None:
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()
        for protocol in list(self.factory.protocols):
            protocol.transport.abortConnection()
        # Let the gateway's side see its connections close.
        await task.deferLater(reactor, 0.05)


class _TrackingSite(CountingSite):
    def __init__(self, app: UpstreamApp) -> None:
        super().__init__(app)
        self.requests = 0

    def log(self, request: Any) -> None:
        if not request.uri.startswith(b"/hc"):
            self.requests += 1


async def _until(predicate: Callable[[], bool], *, within: float, step: float = 0.01) -> float:
    """Wait for C{predicate}; how long it took. Fails after C{within} s."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > within:
            raise AssertionError(f"not true within {within}s")
        await task.deferLater(reactor, step)
    return time.monotonic() - start


def make_pool(reactor: Any, *, max_per_host: int) -> HTTPConnectionPool:
    """A keep-alive pool for the checks' own agent."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max_per_host
    return pool


def _upstream(urls: list[str], check: HealthCheckConfig, pool: Any) -> Upstream:
    config = UpstreamConfig(name="backend", targets=tuple(urls), health_check=check)
    return Upstream(config, agent=Agent(reactor, pool=pool, connectTimeout=2), clock=reactor)


def _collecting_logger() -> tuple[Logger, list[str]]:
    lines: list[str] = []
    return Logger(observer=lambda event: lines.append(formatEvent(event))), lines


@pytest_twisted.ensureDeferred
async def test_thresholds_and_transitions_logged():
    """
    Driven tick by tick: the target leaves rotation only after
    unhealthy_threshold failures, and returns only after healthy_threshold
    passes; both transitions are logged with the reason.
    """
    backend = _Backend("a")
    backend.listen()
    pool = make_pool(reactor, max_per_host=4)
    check = HealthCheckConfig(path="/hc", interval=1.0, timeout=5.0, healthy_threshold=2, unhealthy_threshold=3)
    upstream = _upstream([backend.url], check, pool)
    target = upstream.targets[0]
    clock = task.Clock()  # ticks by hand; the requests are real
    log, lines = _collecting_logger()
    checker = HealthChecker(upstream, reactor=clock, log=log)

    async def tick() -> None:
        clock.advance(1.0) if checker.running else checker.start()
        await _until(lambda: not checker.state(target).checking, within=5)

    try:
        await tick()
        assert checker.state(target).passes == 1 and target.healthy
        backend.health.code = 503
        for n in (1, 2):
            await tick()
            assert checker.state(target).failures == n
            assert target.healthy, "left rotation before the threshold"
        await tick()
        assert not target.healthy
        assert "status 503, expected 200-399" in checker.state(target).last_error
        assert len(lines) == 1
        assert "backend" in lines[0] and backend.url in lines[0] and "status 503" in lines[0]
        backend.health.code = 200
        await tick()
        assert not target.healthy, "back before the threshold"
        await tick()
        assert target.healthy
        assert len(lines) == 2 and "healthy again" in lines[1] and backend.url in lines[1]
        # The checks' connection was reused: bodies were read.
        assert backend.app.connections == 1
    finally:
        await checker.stop()
        await pool.closeCachedConnections()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_hanging_target_times_out_without_overlapping_checks():
    backend = _Backend("a")
    backend.listen()
    backend.health.hang = True
    pool = make_pool(reactor, max_per_host=4)
    check = HealthCheckConfig(path="/hc", interval=0.05, timeout=0.3, healthy_threshold=1, unhealthy_threshold=1)
    upstream = _upstream([backend.url], check, pool)
    target = upstream.targets[0]
    log, lines = _collecting_logger()
    checker = HealthChecker(upstream, reactor=reactor, log=log)
    checker.start()
    try:
        await _until(lambda: not target.healthy, within=5)
        assert "no answer within 0.3s" in lines[0]
        await _until(lambda: backend.health.hits >= 2, within=5)
        # Ticks every 50 ms, but one check at a time per target.
        assert backend.health.max_in_flight == 1
    finally:
        await checker.stop()
        await pool.closeCachedConnections()
        await backend.stop()
    assert not checker.running


def _gateway_config(urls: list[str], *, unhealthy: int = 1, healthy: int = 2) -> str:
    targets = ", ".join(f'"{u}"' for u in urls)
    return f"""
server:
  listen: "tcp:0:interface=127.0.0.1"
admin:
  listen: "tcp:0:interface=127.0.0.1"
routes:
  - name: all
    match: {{path_prefix: /}}
    upstream: backend
upstreams:
  backend:
    targets: [{targets}]
    health_check: {{path: /hc, interval: 100ms, timeout: 500ms, healthy_threshold: {healthy}, unhealthy_threshold: {unhealthy}}}
"""


@pytest_twisted.ensureDeferred
async def test_traffic_leaves_a_dead_target_and_comes_back(start_gateway, http):
    a, b = _Backend("a"), _Backend("b")
    a.listen()
    b.listen()
    gw = start_gateway(_gateway_config([a.url, b.url], unhealthy=2, healthy=2))
    upstream = gw.service.generation.upstreams["backend"]
    target_a = next(t for t in upstream.targets if t.url == a.url)
    statuses: list[int] = []  # the gateway runs the health checks itself

    async def get() -> None:
        response = await http.get(gw.url + "/echo")
        await response.content()
        statuses.append(response.code)

    async def send_until(predicate: Callable[[], bool], within: float) -> float:
        start = time.monotonic()
        while not predicate():
            assert time.monotonic() - start < within, "not true in time"
            await get()
            await task.deferLater(reactor, 0.005)
        return time.monotonic() - start

    try:
        for _ in range(10):
            await get()
        assert a.site.requests > 0 and b.site.requests > 0

        # a dies between two requests; the client loop goes on.
        await a.stop()
        # interval 100 ms x unhealthy_threshold 2, with room for a busy machine
        took = await send_until(lambda: not target_a.healthy, within=1.5)
        assert set(statuses) == {200}, statuses  # connect failures were retried on b
        print(f"dead target out of rotation after {took * 1000:.0f} ms")
        failures = target_a.consecutive_failures
        served_by_b = b.site.requests
        for _ in range(20):
            await get()
        assert set(statuses) == {200}
        assert b.site.requests == served_by_b + 20
        # Not even tried: no more connect failures on a.
        assert target_a.consecutive_failures == failures

        # a comes back on the same port and gets traffic again.
        a.listen()
        served_by_a = a.site.requests
        took = await send_until(lambda: a.site.requests > served_by_a, within=1.5)
        print(f"revived target back in rotation after {took * 1000:.0f} ms")
        assert target_a.healthy
        assert set(statuses) == {200}
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_all_targets_down_is_a_quick_503(start_gateway, http):
    a, b = _Backend("a"), _Backend("b")
    a.listen()
    b.listen()
    gw = start_gateway(_gateway_config([a.url, b.url], unhealthy=1, healthy=1))
    upstream = gw.service.generation.upstreams["backend"]
    try:
        await a.stop()
        await b.stop()
        await _until(upstream.all_down, within=3)
        start = time.monotonic()
        response = await http.get(gw.url + "/echo")
        body = await response.content()
        elapsed = time.monotonic() - start
        assert response.code == 503
        assert body == b"no healthy upstream\n"
        assert elapsed < 1.0, "a refusal, not a hang"
        response = await http.get(gw.admin_url + "/readyz")
        assert response.code == 503
        assert b"every target of every upstream is down (backend)" in await response.content()

        b.listen()
        await _until(lambda: not upstream.all_down(), within=3)
        response = await http.get(gw.url + "/echo")
        await response.content()
        assert response.code == 200
        response = await http.get(gw.admin_url + "/readyz")
        assert response.code == 200
        await response.content()
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_one_dead_upstream_leaves_the_gateway_ready(start_gateway, http):
    """
    /readyz fails only when no upstream has a live target: one dead backend
    must not take the gateway (and the backends still up) out of rotation.
    """
    a, dead = _Backend("a"), _Backend("dead")
    a.listen()
    dead.listen()
    text = _gateway_config([a.url]) + f"""
  other:
    targets: ["{dead.url}"]
    health_check: {{path: /hc, interval: 100ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 1}}
"""
    gw = start_gateway(text)
    other = gw.service.generation.upstreams["other"]
    try:
        await dead.stop()
        await _until(other.all_down, within=3)
        response = await http.get(gw.admin_url + "/readyz")
        assert response.code == 200, await response.content()
        await response.content()
    finally:
        await a.stop()
        await dead.stop()


@pytest_twisted.ensureDeferred
async def test_only_upstreams_with_a_health_check_get_a_checker():
    pool = make_pool(reactor, max_per_host=4)
    checked = _upstream(["http://127.0.0.1:9"], HealthCheckConfig(interval=60), pool)
    plain = Upstream(
        UpstreamConfig(name="plain", targets=("http://127.0.0.1:9",)),
        agent=Agent(reactor, pool=pool),
        clock=reactor,
    )
    checkers = start_health_checks({"backend": checked, "plain": plain}, reactor)
    try:
        assert [c.upstream for c in checkers] == [checked]
        assert checkers[0].running
    finally:
        await stop_health_checks(checkers)
        await pool.closeCachedConnections()
    assert not checkers[0].running
