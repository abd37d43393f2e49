"""
Tests for L{wasmgate.wasm.abi_httpwasm}: real http-wasm guests (WAT from
L{tests.httpwasm_guests} and an AssemblyScript build) in real filters, a
real thread pool and the real reactor.
"""
from __future__ import annotations

import gc
import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from tests import httpwasm_guests as h
from tests import wasm_guests as g
from tests.conftest import CountingPool, chain_of
from wasmgate.testing import load_wasm, make_request, memory_store
from wasmgate.wasm.chain import RequestRun
from wasmgate.wasm.engine import WasmEngine
from wasmgate.wasm.filter import FilterFailure, Pins, PluginLoadError, WasmFilter, select_abi
from wasmgate.wasm.inspect import inspect_module
from wasmgate.wasm.messages import Answer, Continue, FilterRequest, FilterResponse

AS_GUEST = os.path.join(os.path.dirname(__file__), "guests", "httpwasm_as", "httpwasm_as.wasm")


class HeldFilter(WasmFilter):
    """
    A filter that, called without L{Pins} (as the filter-level tests here
    do), keeps what each request pins itself, by request, until that
    request's response phase.
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.held: dict[int, tuple[FilterRequest, Pins]] = {}

    def run_request(self, req: FilterRequest, *, pins: Any = None, **kw: Any) -> Any:
        if pins is None:
            pins = self.held.setdefault(id(req), (req, Pins()))[1]
        return super().run_request(req, pins=pins, **kw)

    def run_response(self, req: FilterRequest, resp: FilterResponse, *, pins: Any = None, **kw: Any) -> Any:
        if pins is None:
            entry = self.held.pop(id(req), None)
            pins = entry[1] if entry is not None else None
        return super().run_response(req, resp, pins=pins, **kw)

    def holds(self, req: FilterRequest) -> bool:
        entry = self.held.get(id(req))
        return entry is not None and entry[1].holds(self)


def make(engine: WasmEngine, source: Any, name: str = "hw", **kw: Any) -> HeldFilter:
    return HeldFilter(name=name, module=engine.compile(load_wasm(source)), engine=engine, **kw)


class Chain:
    """A L{FilterChain} driven by request, as these tests talk: each request's L{RequestRun}."""

    def __init__(self, filters: list[WasmFilter], pool: Any, **kw: Any) -> None:
        self.chain = chain_of(filters, pool, **kw)
        self.runs: dict[int, tuple[FilterRequest, RequestRun]] = {}

    def run(self, req: FilterRequest) -> RequestRun:
        entry = self.runs.get(id(req))
        if entry is None:
            entry = self.runs[id(req)] = (req, self.chain.begin(req))
        return entry[1]

    def run_request(self, req: FilterRequest) -> Any:
        return self.run(req).run_request()

    def run_response(self, req: FilterRequest, resp: FilterResponse) -> Any:
        return self.run(req).run_response(resp)

    def release(self, req: FilterRequest) -> Any:
        return self.run(req).finish()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.chain, name)


def capture() -> tuple[Logger, list[dict]]:
    events: list[dict] = []
    return Logger(namespace="test", observer=events.append), events


def messages(events: list[dict]) -> list[tuple[str, str]]:
    return [(e["log_level"].name, e["message"]) for e in events if "message" in e]


def request(**kw: Any) -> FilterRequest:
    kw.setdefault("client_ip", "192.0.2.7")
    return make_request(**kw)


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in headers if n == name]


# -- detection ----------------------------------------------------------------


def test_detected_before_json_and_inspected(engine: WasmEngine) -> None:
    for source in (h.REWRITE, h.MINIMAL, AS_GUEST):
        assert select_abi(engine.compile(load_wasm(source))).name == "http-wasm"
    assert select_abi(engine.compile(load_wasm(g.PASS_THROUGH))).name == "json"
    report = inspect_module(load_wasm(h.STATEFUL), engine)
    assert (report.ok, report.abi, report.response_filter) == (True, "http-wasm", True)


@pytest.mark.parametrize(
    "wat, words",
    [
        ('(module (import "http_handler" "log" (func (param i32 i32 i32)))'
         ' (memory (export "memory") 1) (func (export "handle_request") (result i64) (i64.const 1))'
         ' (func (export "handle_response") (param i32)))',
         "handle_response' must be (i32, i32) -> ()"),
        ('(module (import "http_handler" "log" (func (param i32 i32 i32))) (memory (export "memory") 1))',
         "missing export 'handle_request'"),
        ('(module (import "http_handler" "get_uri" (func (param i32 i32) (result i64)))'
         ' (memory (export "memory") 1) (func (export "handle_request") (result i64) (i64.const 1)))',
         "http_handler.get_uri with type (i32, i32) -> (i64)"),
        ('(module (import "http_handler" "nonesuch" (func))'
         ' (memory (export "memory") 1) (func (export "handle_request") (result i64) (i64.const 1)))',
         "http_handler.nonesuch, which the host does not provide"),
    ],
)
def test_load_problems(engine: WasmEngine, wat: str, words: str) -> None:
    with pytest.raises(PluginLoadError) as e:
        make(engine, wat)
    assert words in e.value.what


# -- the host functions, through a chain ------------------------------------------


@pytest_twisted.inlineCallbacks
def test_rewrite_method_uri_and_headers(engine: WasmEngine, pool: CountingPool):
    f = make(engine, h.REWRITE)
    chain = Chain([f], pool)
    req = request(
        method="GET",
        path="/orig",
        query="q=1",
        headers=[("x-remove-me", "1"), ("x-replace", "a"), ("x-replace", "b"), ("x-remove-me", "2")],
    )
    outcome, decisions = yield chain.run_request(req)
    assert isinstance(outcome, Continue)
    r = outcome.request
    assert (r.method, r.path, r.query) == ("PATCH", "/rewritten/p%20q", "a=1&b=2")
    assert values(r.headers, "x-orig-method") == ["GET"]
    assert values(r.headers, "x-orig-uri") == ["/orig?q=1"]
    assert values(r.headers, "x-proto") == ["HTTP/1.1"]
    assert values(r.headers, "x-source") == ["192.0.2.7:0"]
    assert values(r.headers, "x-added") == ["one", "two"]  # names lower-cased
    assert values(r.headers, "x-remove-me") == []
    assert values(r.headers, "x-replace") == ["new"]
    # Response headers set in handle_request ride along to the response.
    assert outcome.response_headers == [("x-early", "e1"), ("x-early", "e2")]
    assert f.pinned_count() == 1

    upstream = FilterResponse(200, [("server", "up"), ("x-replaced", "old")], b"payload")
    resp, _ = yield chain.run_response(r, upstream)
    assert values(resp.headers, "x-late") == ["l1", "l2"]
    assert values(resp.headers, "server") == []
    assert values(resp.headers, "x-replaced") == ["by-guest"]
    assert h.hex_field(values(resp.headers, "x-ctx")[0]) == 7  # ctx from handle_request
    assert h.hex_field(values(resp.headers, "x-err")[0]) == 0
    assert resp.body == b"payload"
    assert f.pinned_count() == 0
    assert pool.jobs == 2


@pytest_twisted.inlineCallbacks
def test_answer_with_status_and_body(engine: WasmEngine, pool: CountingPool):
    f = make(engine, h.ANSWER)
    chain = Chain([f], pool)
    outcome, decisions = yield chain.run_request(request())
    assert isinstance(outcome, Answer)
    assert (outcome.status, outcome.body, outcome.plugin) == (418, b"hello world", "hw")
    assert values(outcome.headers, "content-type") == ["text/plain"]
    assert values(outcome.headers, "x-a") == ["1", "2"]
    assert h.hex_field(values(outcome.headers, "x-status-seen")[0]) == 418
    # Its own body, read back: EOF and 11 bytes.
    assert h.hex_field(values(outcome.headers, "x-own-body")[0]) == (1 << 32) | 11
    assert [d.outcome for d in decisions] == ["answer"]
    assert f.pinned_count() == 0  # next=0: handle_response is never called

    outcome, _ = yield chain.run_request(request(headers={"x-empty": "1"}))
    assert (outcome.status, outcome.headers, outcome.body) == (200, [], b"")


@pytest_twisted.inlineCallbacks
def test_read_and_rewrite_request_body(engine: WasmEngine, pool: CountingPool):
    f = make(engine, h.REQUEST_BODY)
    assert f.include_body  # buffer_request enabled at start-up turns it on
    chain = Chain([f], pool)
    assert chain.wants_body
    req = request(method="POST", body=b"hello world")
    outcome, _ = yield chain.run_request(req)
    assert outcome.request.body == b"[hello world]"
    # 11 bytes in 5-byte reads: 5, 5, 1+EOF.
    assert h.hex_field(values(outcome.request.headers, "x-body-reads")[0]) == 3
    resp, _ = yield chain.run_response(outcome.request, FilterResponse(200, [], b"ok"))
    # With buffer_request the stream can still be read after next: it is at EOF.
    assert h.hex_field(values(resp.headers, "x-req-read-after")[0]) == 1 << 32


@pytest_twisted.inlineCallbacks
def test_read_response_body_with_buffer_response(engine: WasmEngine, pool: CountingPool):
    f = make(engine, h.RESPONSE_BODY)
    chain = Chain([f], pool)
    req = request()
    yield chain.run_request(req)
    resp, _ = yield chain.run_response(req, FilterResponse(200, [("content-type", "text/plain")], b"upstream body"))
    assert (resp.status, resp.body) == (201, b"<upstream body>")
    assert h.hex_field(values(resp.headers, "x-upstream-status")[0]) == 200


@pytest_twisted.inlineCallbacks
def test_header_names_longer_than_buffer(engine: WasmEngine, pool: CountingPool):
    chain = Chain([make(engine, h.NAMES)], pool)
    # With a body, as the gateway passes one when the chain buffers bodies
    # (without: test_features_enabled_per_request_only_if_bodies_buffered).
    req = request(
        path="/names", headers=[("x-multi", "first"), ("Accept", "*/*"), ("X-Multi", "second")], body=b""
    )
    outcome, _ = yield chain.run_request(req)
    hdrs = outcome.headers
    names = b"x-multi\0accept\0"
    assert h.hex_field(values(hdrs, "x-names-small")[0]) == (2 << 32) | len(names)
    assert values(hdrs, "x-untouched") == ["########", "#"]  # too small: nothing written
    assert h.hex_field(values(hdrs, "x-names-cl")[0]) == (2 << 32) | len(names)
    assert values(hdrs, "x-names") == ["x-multi,accept,"]
    assert h.hex_field(values(hdrs, "x-values-small")[0]) == (2 << 32) | len(b"first\0second\0")
    assert values(hdrs, "x-values") == ["first,second,"]
    assert h.hex_field(values(hdrs, "x-absent")[0]) == 0
    assert h.hex_field(values(hdrs, "x-trailer-names")[0]) == 0
    assert h.hex_field(values(hdrs, "x-trailer-values")[0]) == 0
    # Trailers (4) are not supported: only the two buffering features.
    assert h.hex_field(values(hdrs, "x-features")[0]) == 3
    assert h.hex_field(values(hdrs, "x-uri-len")[0]) == len("/names")


@pytest_twisted.inlineCallbacks
def test_features_enabled_per_request_only_if_bodies_buffered(engine: WasmEngine, pool: CountingPool):
    """
    enable_features in handle_request reports buffering only for a request
    whose bodies the chain buffers: the guest that trusts the answer then
    never reads a body that is not there.
    """
    f = make(engine, h.PER_REQUEST)
    assert not f.include_body  # the guest asked for nothing at start-up
    chain = Chain([f], pool)
    for body, features in [(None, 0), (b"sent", 3), (None, 0), (b"", 3)]:
        req = request(headers={"x-enable": "1"}, body=body)
        outcome, _ = yield chain.run_request(req)
        assert h.hex_field(values(outcome.response_headers, "x-features")[0]) == features
        upstream_body = None if body is None else b"up"
        resp, decisions = yield chain.run_response(req, FilterResponse(200, [], upstream_body))
        assert [d.outcome for d in decisions] == ["continue"]
        assert (resp.status, resp.body) == (200, b"<up>" if features else None)
    assert f.instance_count() == 1  # one instance: nothing carried over between requests

    # include_body: true buffers every request's bodies.
    f = make(engine, h.PER_REQUEST, "buffered", include_body=True)
    chain = Chain([f], pool)
    req = request(headers={"x-enable": "1"})
    outcome, _ = yield chain.run_request(req)
    assert h.hex_field(values(outcome.response_headers, "x-features")[0]) == 3
    resp, _ = yield chain.run_response(req, FilterResponse(200, [], b"up"))
    assert resp.body == b"<up>"


def test_start_up_features_only_if_bodies_buffered(engine: WasmEngine) -> None:
    """
    Only the first instance's start-up wish turns include_body on: a later
    instance asking for buffering (when the first did not) is told no.
    """
    f = make(engine, h.LATE_START, state=memory_store())
    try:
        assert not f.include_body
        outcome = f.run_request(request())  # a second instance: it asks in _start
        assert isinstance(outcome, Answer)
        assert h.hex_field(values(outcome.headers, "x-start-features")[0]) == 0
        assert h.hex_field(values(outcome.headers, "x-features")[0]) == 0
    finally:
        f.close()


@pytest.mark.parametrize("include_body", [True, False])
def test_read_request_body_without_buffer_request_consumes(engine: WasmEngine, include_body: bool) -> None:
    """
    With the body buffered for this request (the filter's include_body, or
    the chain's), a read without buffer_request consumes what it read: the
    next handler gets the rest. With buffer_request it gets the whole body.
    """
    f = make(engine, h.PER_REQUEST, include_body=include_body)
    try:
        req = request(method="POST", headers={"x-read": "1"}, body=b"hello world")
        outcome = f.run_request(req)
        assert isinstance(outcome, Continue)
        assert outcome.request.body == b"o world"
        assert h.hex_field(values(outcome.response_headers, "x-read")[0]) == 4
        assert values(outcome.response_headers, "x-read-bytes") == ["hell"]
        f.run_response(req, FilterResponse(200, [], b""))

        req = request(method="POST", headers={"x-read": "1", "x-enable": "1"}, body=b"hello world")
        outcome = f.run_request(req)
        assert outcome.request.body == b"hello world"
        assert values(outcome.response_headers, "x-read-bytes") == ["hell"]
        f.run_response(req, FilterResponse(200, [], b""))

        # A body the guest wrote is the next handler's, whatever it reads after.
        req = request(method="POST", headers={"x-read": "1", "x-write": "1"}, body=b"hello world")
        outcome = f.run_request(req)
        assert outcome.request.body == b"new:"
        f.run_response(req, FilterResponse(200, [], b""))
    finally:
        f.close()


def test_absent_bodies_with_include_body_read_empty(engine: WasmEngine) -> None:
    """include_body, but no request or response body given: empty, not a trap."""
    f = make(engine, h.PER_REQUEST, include_body=True)
    try:
        req = request(headers={"x-read": "1", "x-enable": "1"})
        outcome = f.run_request(req)
        assert isinstance(outcome, Continue)
        assert h.hex_field(values(outcome.response_headers, "x-read")[0]) == 1 << 32
        assert outcome.request.body is None
        assert f.run_response(req, FilterResponse(200, [], None)).body == b"<>"
    finally:
        f.close()


@pytest_twisted.inlineCallbacks
def test_logging_and_config(engine: WasmEngine, pool: CountingPool):
    log, events = capture()
    f = make(engine, h.LOG_CONFIG, "logger", log=log, config={"greeting": "hi", "n": 2})
    chain = Chain([f], pool)
    outcome, _ = yield chain.run_request(request())
    assert outcome.body == b'{"greeting":"hi","n":2}'
    assert values(outcome.headers, "x-log-enabled") == ["01110"]  # debug and none are off
    logged = messages(events)
    assert ("info", "initialising") in logged  # from _initialize
    assert logged[-3:] == [("info", "an info line"), ("warn", "a warning"), ("error", "an error")]
    assert not any("debug" in m or "never" in m for _, m in logged)


@pytest_twisted.inlineCallbacks
def test_assemblyscript_guest(engine: WasmEngine, pool: CountingPool):
    log, events = capture()
    f = make(engine, AS_GUEST, "as", log=log, config={"mode": "test"})
    chain = Chain([f], pool)
    assert ("info", "assemblyscript guest ready") in messages(events)
    req = request(path="/x/y", query="a=b", headers=[("accept", "text/html"), ("accept", "*/*"), ("host", "h")])
    outcome, _ = yield chain.run_request(req)
    r = outcome.request
    assert values(r.headers, "x-as-uri") == ["/x/y?a=b"]
    assert values(r.headers, "x-as-names") == ["accept,host,x-as-uri"]
    assert values(r.headers, "x-as-accept") == ["TEXT/HTML", "*/*"]
    assert outcome.response_headers == [("x-as-config", '{"mode":"test"}')]
    resp, _ = yield chain.run_response(r, FilterResponse(204, []))
    assert values(resp.headers, "x-as-ctx") == ["1"]
    assert values(resp.headers, "x-as-status") == ["204"]

    outcome, _ = yield chain.run_request(request(path="/as/deny/this"))
    assert (outcome.status, outcome.body) == (403, b"denied by AS: /as/deny/this")

    # A request that ends without a response phase: handle_response(is_error=1).
    req = request(path="/gone")
    yield chain.run_request(req)
    yield chain.release(req)
    assert ("warn", "request ended without a response") in messages(events)
    assert f.pinned_count() == 0


# -- phase rules and failures ---------------------------------------------------


@pytest.mark.parametrize(
    "method, phase, words",
    [
        ("T", "request", "does not support trailers"),
        ("Z", "request", "buf_limit 0"),
        ("O", "request", "outside memory"),
        ("B", "request", "request body was not buffered"),
        ("U", "request", "invalid URI"),
        ("H", "request", "CR, LF or NUL"),
        ("M", "response", "can't set the method after the next handler"),
        ("S", "response", "set the status code after the next handler unless feature buffer_response"),
        ("Q", "response", "read the response body after the next handler unless feature buffer_response"),
        ("W", "response", "can't add a request header after the next handler"),
    ],
)
def test_violations_trap(engine: WasmEngine, method: str, phase: str, words: str) -> None:
    f = make(engine, h.MISBEHAVING)
    try:
        req = request(method=method)
        with pytest.raises(FilterFailure) as e:
            f.run_request(req)
            f.run_response(req, FilterResponse(200, [], b"x"))
        assert e.value.kind == "trap"
        assert words in e.value.message
        assert f.pinned_count() == 0
        assert f.instance_count() == 0  # the trapped instance was thrown away
        # The next request gets a fresh instance and passes.
        req = request(method="GET")
        assert isinstance(f.run_request(req), Continue)
        assert f.run_response(req, FilterResponse(200, [], b"x")).status == 200
        assert (f.pinned_count(), f.instance_count()) == (0, 1)
    finally:
        f.close()


def test_timeout_and_bad_next(engine: WasmEngine) -> None:
    f = make(engine, h.MISBEHAVING, timeout_ms=30)
    try:
        with pytest.raises(FilterFailure) as e:
            f.run_request(request(method="LOOP"))
        assert e.value.kind == "timeout"
        with pytest.raises(FilterFailure) as e:
            f.run_request(request(method="NEXT"))
        assert (e.value.kind, e.value.message) == ("bad_output", "handle_request returned next=2 (must be 0 or 1)")
        assert f.pinned_count() == 0
    finally:
        f.close()


@pytest_twisted.inlineCallbacks
def test_failure_policies(engine: WasmEngine, pool: CountingPool):
    lenient = make(engine, h.MISBEHAVING, "lenient", failure_policy="open")
    strict = make(engine, h.MISBEHAVING, "strict", failure_policy="closed")
    outcome, decisions = yield Chain([lenient], pool).run_request(request(method="TRAP"))
    assert isinstance(outcome, Continue)
    assert [(d.plugin, d.outcome) for d in decisions] == [("lenient", "skipped:trap")]
    outcome, decisions = yield Chain([strict], pool).run_request(request(method="TRAP"))
    assert (outcome.status, outcome.body) == (502, b"Bad Gateway\n")


# -- pinning: one instance per request, from handle_request to handle_response ---


@pytest_twisted.inlineCallbacks
def test_instance_pinned_for_the_request(engine: WasmEngine):
    """
    Six requests in flight at once on a two-thread pool: each one's
    handle_response sees its own globals, whichever thread runs it.
    """
    pool = ThreadPool(minthreads=2, maxthreads=2, name="pinning")
    pool.start()
    try:
        f = make(engine, h.STATEFUL)
        chain = Chain([f], pool)
        reqs = [request(headers={"x-id": "req-%d" % i}) for i in range(6)]
        yield gatherResults([chain.run_request(r) for r in reqs])
        assert f.pinned_count() == 6
        assert f.instance_count() == 6
        results = yield gatherResults(
            [chain.run_response(r, FilterResponse(200 + i, [], b"")) for i, r in reversed(list(enumerate(reqs)))]
        )
        echoed = sorted((values(resp.headers, "x-id-echo")[0], h.hex_field(values(resp.headers, "x-seen-status")[0]))
                        for resp, _ in results)
        assert echoed == [("req-%d" % i, 200 + i) for i in range(6)]
        # Every instance counted its own requests: the contexts are all 1.
        assert {h.hex_field(values(resp.headers, "x-ctx")[0]) for resp, _ in results} == {1}
        assert f.pinned_count() == 0
        # Back in the pool, reused by the next requests (no new instances).
        more = [request(headers={"x-id": "again"}) for _ in range(3)]
        yield gatherResults([chain.run_request(r) for r in more])
        assert f.instance_count() == 6
        yield gatherResults([chain.release(r) for r in more])
        assert f.pinned_count() == 0
    finally:
        pool.stop()


@pytest_twisted.inlineCallbacks
def test_release_calls_handle_response_with_error(engine: WasmEngine, pool: CountingPool):
    log, events = capture()
    f = make(engine, h.STATEFUL, log=log)
    chain = Chain([f], pool)
    req = request(headers={"x-id": "client-gone"})
    yield chain.run_request(req)
    jobs = pool.jobs
    yield chain.release(req)
    assert pool.jobs == jobs + 1  # the guest ran in the filter pool, not here
    assert ("warn", "client-gone") in messages(events)  # the guest's is_error branch
    assert f.pinned_count() == 0
    jobs = pool.jobs
    yield chain.release(req)  # idempotent, and no hop when nothing is pinned
    assert pool.jobs == jobs
    resp, _ = yield chain.run_response(req, FilterResponse(200, [], b""))
    assert resp.headers == []  # released: no response phase any more


@pytest_twisted.inlineCallbacks
def test_release_while_request_phase_runs(engine: WasmEngine, pool: CountingPool):
    """A release that comes before the request phase has pinned still releases it."""
    log, events = capture()
    f = make(engine, h.STATEFUL, log=log)
    chain = Chain([f], pool)
    req = request(headers={"x-id": "early-release"})
    yield chain.release(req)
    yield chain.run_request(req)
    assert f.pinned_count() == 0
    assert ("warn", "early-release") in messages(events)


def test_unreleased_pin_dropped_with_request(engine: WasmEngine) -> None:
    """A request's handle dropped without finish(): its instance goes too."""
    f = make(engine, h.STATEFUL)
    try:
        pins = Pins()
        f.run_request(request(), pins=pins)
        assert (f.pinned_count(), f.instance_count()) == (1, 1)
        del pins
        gc.collect()
        assert (f.pinned_count(), f.instance_count()) == (0, 0)
    finally:
        f.close()


def test_request_only_guest_not_pinned(engine: WasmEngine) -> None:
    f = make(engine, h.MINIMAL)
    try:
        assert not f.has_response_filter
        req = request()
        assert isinstance(f.run_request(req), Continue)
        assert not f.holds(req)
        assert f.instance_count() == 1
    finally:
        f.close()


# -- mixed chains --------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_mixed_chain_json_and_httpwasm(engine: WasmEngine, pool: CountingPool):
    json_filter = make(engine, g.HEADER_REWRITE, "json", state=None)
    hw = make(engine, h.REWRITE, "hw")
    json_resp = make(engine, g.RESPONSE_HEADER, "json-resp")
    chain = Chain([json_filter, hw, json_resp], pool)
    req = request(path="/a", headers=[("host", "h")])
    outcome, decisions = yield chain.run_request(req)
    assert [(d.plugin, d.outcome) for d in decisions] == [
        ("json", "continue"), ("hw", "continue"), ("json-resp", "continue"),
    ]
    r = outcome.request
    # The http-wasm guest saw the JSON filter's rewrite, then made its own.
    assert values(r.headers, "x-orig-uri") == ["/rewritten"]
    assert r.path == "/rewritten/p%20q"
    assert ("x-early", "e1") in outcome.response_headers
    assert pool.jobs == 1
    resp, decisions = yield chain.run_response(r, FilterResponse(200, [("server", "s")], b""))
    # Onion order: json-resp first (it replaces the headers), then http-wasm.
    assert [d.plugin for d in decisions] == ["json-resp", "hw"]
    assert values(resp.headers, "x-response-filtered") == ["yes"]
    assert values(resp.headers, "x-late") == ["l1", "l2"]
    assert hw.pinned_count() == 0
    assert pool.jobs == 2


@pytest_twisted.inlineCallbacks
def test_later_answer_is_the_pinned_filters_response(engine: WasmEngine, pool: CountingPool):
    hw = make(engine, h.STATEFUL, "hw")
    chain = Chain([hw, make(engine, g.BLOCK_403, "block", state=None)], pool)
    outcome, decisions = yield chain.run_request(request(headers={"x-id": "blocked"}))
    assert isinstance(outcome, Answer)
    assert (outcome.status, outcome.plugin) == (403, "block")
    assert values(outcome.headers, "x-id-echo") == ["blocked"]
    assert h.hex_field(values(outcome.headers, "x-seen-status")[0]) == 403
    assert h.hex_field(values(outcome.headers, "x-err")[0]) == 0
    assert hw.pinned_count() == 0
    assert pool.jobs == 1


@pytest_twisted.inlineCallbacks
def test_later_failure_releases_with_error(engine: WasmEngine, pool: CountingPool):
    log, events = capture()
    hw = make(engine, h.STATEFUL, "hw", log=log)
    broken = make(engine, h.MISBEHAVING, "broken")
    chain = Chain([hw, broken], pool)
    outcome, decisions = yield chain.run_request(request(method="TRAP", headers={"x-id": "failed-later"}))
    assert (outcome.status, [d.outcome for d in decisions]) == (502, ["continue", "failed:trap"])
    assert ("warn", "failed-later") in messages(events)
    assert hw.pinned_count() == broken.pinned_count() == 0


def test_max_instances_bounds_requests_in_flight(engine: WasmEngine) -> None:
    """
    Each request between its two phases holds an instance: past
    max_instances a request fails as "busy" (503 in a chain) instead of
    growing memory without bound, and a finished request frees its slot.
    """
    from wasmgate.wasm.chain import failure_status

    f = make(engine, h.REWRITE, max_instances=2)
    held = [make_request(path="/a"), make_request(path="/b")]
    for req in held:
        f.run_request(req)
    assert f.pinned_count() == 2
    with pytest.raises(FilterFailure) as e:
        f.run_request(make_request(path="/c"))
    assert e.value.kind == "busy" and "max_instances" in e.value.message
    assert failure_status("busy", "closed") == failure_status("busy", "open") == 503
    f.run_response(held[0], FilterResponse(200, [], b""))
    f.run_request(make_request(path="/c"))  # the slot is free again
    f.close()


# -- gaps found running third-party guests --------------------------------------


def test_start_section_reads_config_and_logs(engine: WasmEngine) -> None:
    """A (start ...) section that calls get_config and log sees the guest's memory."""
    log, events = capture()
    f = make(engine, h.START_CONFIG, "start", log=log, config={"secret": "x"})
    answer = f.run_request(request())
    assert isinstance(answer, Answer) and answer.body == b'{"secret":"x"}'
    assert ("info", "starting") in messages(events)
    f.close()


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "checked"])
def test_raw_config_bytes_reach_get_config(raw: bool) -> None:
    """config_raw / config_base64 give get_config the exact bytes (here 8 little-endian bytes)."""
    eng = WasmEngine(raw_calls=raw)
    try:
        value = (1234567).to_bytes(8, "little")
        f = make(eng, h.START_CONFIG, "raw", config_bytes=value)
        answer = f.run_request(request())
        assert isinstance(answer, Answer) and answer.body == value
        f.close()
    finally:
        eng.stop()


def test_response_committed_before_next_is_kept(engine: WasmEngine) -> None:
    """Status and body set in handle_request survive next=1 (sent after the next handler)."""
    from wasmgate.wasm.abi_httpwasm import ContinueWithResponse

    f = make(engine, h.COMMIT_THEN_NEXT, "commit")
    result = f.run_request(request(path="/a"))
    assert isinstance(result, ContinueWithResponse) and isinstance(result, Continue)
    assert result.response is not None
    assert (result.response.status, result.response.body) == (202, b"early body")
    assert result.response_headers == [("x-early", "e")]
    assert result.request.path == "/a"
    only = f.run_request(request(headers={"x-status-only": "1"}))
    assert isinstance(only, ContinueWithResponse) and only.response is not None
    assert (only.response.status, only.response.body) == (203, b"")
    f.close()


def test_untouched_response_continues_plainly(engine: WasmEngine) -> None:
    from wasmgate.wasm.abi_httpwasm import ContinueWithResponse

    f = make(engine, h.REWRITE, "plain")
    result = f.run_request(request())
    assert isinstance(result, Continue) and not isinstance(result, ContinueWithResponse)
    f.close()


def test_guest_sees_content_length_and_a_new_body_updates_it(engine: WasmEngine) -> None:
    """
    The request's Content-Length is an ordinary header to the guest (when
    the proxy passes it on); a body the guest writes updates it for later
    filters.
    """
    f = make(engine, h.CONTENT_LENGTH, "cl")
    req = request(method="POST", headers=[("content-type", "text/plain"), ("content-length", "5")], body=b"hello")
    result = f.run_request(req)
    assert isinstance(result, Continue)
    assert result.response_headers == [("x-seen-length", "5")]
    assert result.request.body == b"new body!"
    assert values(result.request.headers, "content-length") == ["9"]
    assert values(result.request.headers, "content-type") == ["text/plain"]
    f.close()
