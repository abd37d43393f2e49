"""
Tests for L{wasmgate.wasm.chain.FilterChain}: real filters, a real thread
pool, the real reactor.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest_twisted
import wasmtime
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.python.threadpool import ThreadPool

from tests import wasm_guests as g
from tests.conftest import CountingPool, chain_of
from wasmgate.state import MemoryCounterStore
from wasmgate.wasm.engine import WasmEngine
from wasmgate.wasm.filter import WasmFilter
from wasmgate.wasm.messages import Answer, Continue, FilterDecision, FilterRequest, FilterResponse


class Recorder:
    def __init__(self) -> None:
        self.failed: list[tuple[str, str]] = []

    def plugin_failed(self, plugin: str, kind: str) -> None:
        self.failed.append((plugin, kind))


class WatchedFilter(WasmFilter):
    """A filter that notes which threads ran it, and what."""

    def __init__(self, *, calls: list[tuple[str, str]], **kw: Any) -> None:
        super().__init__(**kw)
        self.calls = calls

    def run_request(self, *a: Any, **kw: Any) -> Any:
        self.calls.append((self.name, threading.current_thread().name))
        return super().run_request(*a, **kw)

    def run_response(self, *a: Any, **kw: Any) -> Any:
        self.calls.append((self.name, threading.current_thread().name))
        return super().run_response(*a, **kw)


def make(engine: WasmEngine, wat: str, name: str, **kw: Any) -> WasmFilter:
    kw.setdefault("state", MemoryCounterStore())
    cls = WatchedFilter if "calls" in kw else WasmFilter
    return cls(name=name, module=engine.compile(wasmtime.wat2wasm(wat)), engine=engine, **kw)


def req(method: str = "GET") -> FilterRequest:
    return FilterRequest(method=method, path="/a", query="", headers=[("host", "h")], client_ip="192.0.2.1")


def outcomes(decisions: list[FilterDecision]) -> list[tuple[str, str]]:
    return [(d.plugin, d.outcome) for d in decisions]


def test_empty_chain_does_not_hop(pool: CountingPool) -> None:
    chain = chain_of([], pool)
    r = req()
    run = chain.begin(r)
    results: list[Any] = []
    run.run_request().addCallback(results.append)
    assert results == [(Continue(r), [])]
    resp = FilterResponse(200, [])
    run.run_response(resp).addCallback(results.append)
    assert results[1] == (resp, [])
    run.finish().addCallback(results.append)
    assert results[2] is None
    assert pool.jobs == 0


@pytest_twisted.inlineCallbacks
def test_one_hop_per_phase(engine: WasmEngine, pool: CountingPool):
    calls: list[tuple[str, str]] = []
    filters = [
        make(engine, g.HEADER_REWRITE, "rewrite", calls=calls),
        make(engine, g.RESPONSE_HEADER, "resp", calls=calls),
        make(engine, g.PASS_THROUGH, "pass", calls=calls),
    ]
    run = chain_of(filters, pool).begin(req())
    outcome, decisions = yield run.run_request()
    assert pool.jobs == 1
    assert isinstance(outcome, Continue)
    assert outcome.request.path == "/rewritten"
    assert outcome.response_headers == [("x-from-filter", "1")]
    assert outcomes(decisions) == [("rewrite", "continue"), ("resp", "continue"), ("pass", "continue")]
    assert all(d.seconds > 0 for d in decisions)
    resp, decisions = yield run.run_response(FilterResponse(200, [("server", "x")], b""))
    assert pool.jobs == 2
    assert resp.headers == [("x-response-filtered", "yes")]
    assert outcomes(decisions) == [("resp", "continue")]
    assert [name for name, _ in calls] == ["rewrite", "resp", "pass", "resp"]
    assert threading.current_thread().name not in {t for _, t in calls}  # never on the reactor thread


@pytest_twisted.inlineCallbacks
def test_answer_stops_chain(engine: WasmEngine, pool: CountingPool):
    store = MemoryCounterStore()
    chain = chain_of([make(engine, g.BLOCK_403, "block"), make(engine, g.COUNTER, "count", state=store)], pool)
    outcome, decisions = yield chain.begin(req()).run_request()
    assert isinstance(outcome, Answer) and outcome.status == 403 and outcome.plugin == "block"
    assert outcomes(decisions) == [("block", "answer")]
    assert store.get("count:hits") == 0


@pytest_twisted.inlineCallbacks
def test_failure_policies(engine: WasmEngine, pool: CountingPool):
    store = MemoryCounterStore()
    rec = Recorder()
    closed = make(engine, g.MISBEHAVING, "strict", failure_policy="closed", observer=rec)
    open_ = make(engine, g.MISBEHAVING, "lenient", failure_policy="open", observer=rec)
    counter = make(engine, g.COUNTER, "count", state=store)

    outcome, decisions = yield chain_of([open_, counter], pool).begin(req("TRAP")).run_request()
    assert isinstance(outcome, Continue)
    assert outcomes(decisions) == [("lenient", "skipped:trap"), ("count", "continue")]
    assert store.get("count:hits") == 1

    outcome, decisions = yield chain_of([closed, counter], pool).begin(req("LOOP")).run_request()
    assert isinstance(outcome, Answer)
    assert (outcome.status, outcome.body, outcome.plugin) == (502, b"Bad Gateway\n", "strict")
    assert outcome.headers == [("content-type", "text/plain; charset=utf-8")]
    assert outcomes(decisions) == [("strict", "failed:timeout")]
    assert store.get("count:hits") == 1

    # Invalid output is a 500 whatever the policy.
    outcome, decisions = yield chain_of([open_, counter], pool).begin(req("JSON")).run_request()
    assert isinstance(outcome, Answer) and outcome.status == 500
    assert outcome.body == b"Internal Server Error\n"
    assert outcomes(decisions) == [("lenient", "failed:bad_output")]
    assert rec.failed == [("lenient", "trap"), ("strict", "timeout"), ("lenient", "bad_output")]


@pytest_twisted.inlineCallbacks
def test_response_phase_reverse_order_and_failure(engine: WasmEngine, pool: CountingPool):
    a = make(engine, g.RESPONSE_STATUS, "a")
    b = make(engine, g.RESPONSE_HEADER, "b")
    chain = chain_of([a, make(engine, g.PASS_THROUGH, "p"), b], pool)
    resp, decisions = yield chain.begin(req()).run_response(FilterResponse(200, [("server", "s")], b"body"))
    assert outcomes(decisions) == [("b", "continue"), ("a", "continue")]
    assert (resp.status, resp.body) == (418, b"teapot\n")
    assert resp.headers == [("x-response-filtered", "yes")]

    # A response filter that fails under "closed" turns the response into a 502.
    broken = make(engine, g.RESPONSE_HEADER, "broken", state=None)
    broken.close()
    chain = chain_of([broken], pool)
    resp, decisions = yield chain.begin(req()).run_response(FilterResponse(200, [], b"fine"))
    assert (resp.status, resp.body) == (502, b"Bad Gateway\n")
    assert outcomes(decisions) == [("broken", "failed:load")]


@pytest_twisted.inlineCallbacks
def test_route_config_reaches_guest(engine: WasmEngine, pool: CountingPool):
    from twisted.logger import Logger

    events: list[dict] = []
    f = make(engine, g.ECHO_LOG, "echo", log=Logger(namespace="t", observer=events.append))
    chain = chain_of([f], pool, route_config={"echo": {"limit": 5}})
    yield chain.begin(req()).run_request()
    assert any('"route_config":{"limit":5}' in e.get("message", "") for e in events)


class SleepyStore(MemoryCounterStore):
    """A counter store whose increments take a while (think: a slow Redis)."""

    def incr(self, key: str, delta: int, ttl_ms: int) -> int:
        time.sleep(0.3)
        return super().incr(key, delta, ttl_ms)


@pytest_twisted.inlineCallbacks
def test_calls_overlap_in_pool(engine: WasmEngine):
    """4 calls that each block 0.3 s in a host call take ~0.3 s on 4 threads, not 1.2 s."""
    pool = ThreadPool(minthreads=4, maxthreads=4, name="overlap")
    pool.start()
    try:
        store = SleepyStore()
        chain = chain_of([make(engine, g.COUNTER, "slow", state=store)], pool)
        yield chain.begin(req()).run_request()  # instance on one thread already; others build lazily
        started = time.monotonic()
        results = yield gatherResults([chain.begin(req()).run_request() for _ in range(4)])
        elapsed = time.monotonic() - started
        assert all(isinstance(o, Continue) for o, _ in results)
        assert store.get("slow:hits") == 5
        assert elapsed < 0.9, elapsed
    finally:
        pool.stop()


@pytest_twisted.inlineCallbacks
def test_counter_atomic_across_threads(engine: WasmEngine, pool: CountingPool):
    store = MemoryCounterStore()
    chain = chain_of([make(engine, g.COUNTER, "c", state=store)], pool)
    n_threads, m = 4, 50

    def batch() -> None:
        for _ in range(m):
            chain.begin(req()).request_sync()

    from twisted.internet.threads import deferToThreadPool

    yield gatherResults([deferToThreadPool(reactor, pool, batch) for _ in range(n_threads)])
    assert store.get("c:hits") == n_threads * m


@pytest_twisted.inlineCallbacks
def test_a_full_queue_never_keeps_an_instance_a_request_holds(engine, pool):
    """
    A request holding an http-wasm instance ends while the filter queue is
    full (its response phase refused): giving the instance back is not
    refused too, so with max_instances: 1 the next request is served.
    """
    import pytest

    from tests import httpwasm_guests as h
    from wasmgate.filterjobs import QueueFull

    pinned = make(engine, h.STATEFUL, "pinned", max_instances=1)
    chain = chain_of([pinned], pool)

    def request() -> FilterRequest:
        return FilterRequest(method="GET", path="/a", query="", headers=[("host", "h"), ("x-id", "1")], client_ip="192.0.2.1")

    run = chain.begin(request())
    outcome, _ = yield run.run_request()
    assert isinstance(outcome, Continue)
    chain.runner.max_queue = 0  # from now on the queue is full
    with pytest.raises(QueueFull):
        yield run.run_response(FilterResponse(200, [], b""))
    yield run.finish()
    chain.runner.max_queue = 1024
    outcome, decisions = yield chain.begin(request()).run_request()
    assert isinstance(outcome, Continue), outcomes(decisions)
