"""
Tests for L{wasmgate.wasm.filter}, the JSON ABI, host functions and
L{wasmgate.wasm.inspect}, with real guests (tests/wasm_guests.py).
"""
from __future__ import annotations

import base64
import json
import os
import threading
import time
from typing import Any

import pytest
import wasmtime
from twisted.logger import Logger, LogLevel

from tests import wasm_guests as g
from wasmgate.state import MemoryCounterStore
from wasmgate.wasm.engine import WasmEngine
from wasmgate.wasm.filter import FilterFailure, PluginLoadError, WasmFilter
from wasmgate.wasm.inspect import inspect_module
from wasmgate.wasm.messages import Answer, Continue, FilterRequest, FilterResponse


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module", params=[True, False], ids=["raw", "checked"])
def engine(request: pytest.FixtureRequest):
    e = WasmEngine(raw_calls=request.param)
    e.start()
    yield e
    e.stop()


class Recorder:
    """A filter observer that keeps what it is told."""

    def __init__(self) -> None:
        self.failed: list[tuple[str, str]] = []

    def plugin_failed(self, plugin: str, kind: str) -> None:
        self.failed.append((plugin, kind))


def make(engine: WasmEngine, wat: str, name: str = "p", **kw: Any) -> WasmFilter:
    kw.setdefault("state", MemoryCounterStore())
    return WasmFilter(name=name, module=engine.compile(wasmtime.wat2wasm(wat)), engine=engine, **kw)


def req(method: str = "GET", path: str = "/a", **kw: Any) -> FilterRequest:
    kw.setdefault("query", "q=1")
    kw.setdefault("headers", [("host", "example.com"), ("x-remove-me", "bye")])
    kw.setdefault("client_ip", "192.0.2.7")
    return FilterRequest(method=method, path=path, **kw)


def logged(events: list[dict], level: Any = None) -> list[str]:
    return [
        e["message"]
        for e in events
        if "message" in e and e.get("plugin") is not None and "kind" not in e
        and (level is None or e["log_level"] is level)
    ]


# -- the ABI, happy paths ----------------------------------------------------


def test_pass_through(engine: WasmEngine) -> None:
    f = make(engine, g.PASS_THROUGH)
    r = req()
    out = f.run_request(r)
    assert isinstance(out, Continue) and out.request is r
    assert r == req() and out.response_headers == []
    assert not f.has_response_filter and f.abi_name == "json"


def test_header_rewrite(engine: WasmEngine) -> None:
    f = make(engine, g.HEADER_REWRITE)
    out = f.run_request(req(headers=[("host", "h"), ("x-remove-me", "1"), ("x-added", "old")]))
    assert isinstance(out, Continue)
    assert out.request.path == "/rewritten"
    assert out.request.query == "q=1"
    assert out.request.headers == [("host", "h"), ("x-added", "yes"), ("x-multi", "a"), ("x-multi", "b")]
    assert out.response_headers == [("x-from-filter", "1")]


def test_block_403(engine: WasmEngine) -> None:
    f = make(engine, g.BLOCK_403)
    r = req()
    out = f.run_request(r)
    assert out == Answer(403, [("content-type", "text/plain")], b"blocked by wasm\n", plugin="p")
    assert r == req()  # an answer leaves the request alone


def test_block_with_response_headers(engine: WasmEngine) -> None:
    out = make(engine, g.RATE_LIMITED_429).run_request(req())
    assert isinstance(out, Answer) and out.status == 429
    assert out.headers == [("retry-after", "1"), ("ratelimit-limit", "10")]


def test_response_filter(engine: WasmEngine) -> None:
    f = make(engine, g.RESPONSE_HEADER)
    assert f.has_response_filter
    resp = FilterResponse(200, [("server", "upstream"), ("content-type", "text/html")], b"<p>")
    out = f.run_response(req(), resp)
    assert out.status == 200 and out.body == b"<p>"
    assert out.headers == [("content-type", "text/html"), ("x-response-filtered", "yes")]
    out = make(engine, g.RESPONSE_STATUS).run_response(req(), FilterResponse(200, [], b"x"))
    assert (out.status, out.body) == (418, b"teapot\n")


def test_request_only_filter_leaves_response(engine: WasmEngine) -> None:
    resp = FilterResponse(200, [("a", "b")], b"x")
    assert make(engine, g.BLOCK_403).run_response(req(), resp) is resp


def test_payload_shape(engine: WasmEngine) -> None:
    """The exact JSON the guest gets, seen through its log host call."""
    events: list[dict] = []
    f = make(
        engine,
        g.ECHO_LOG,
        name="echo",
        config={"limit": 3, "key": "client_ip"},
        include_body=True,
        log=Logger(namespace="t", observer=events.append),
    )
    init = json.loads(logged(events, LogLevel.debug)[0])
    assert init == {"limit": 3, "key": "client_ip"}
    events.clear()
    r = req(
        "POST",
        headers=[("host", "h"), ("accept", "a"), ("accept", "b"), ("x-é", "ü")],
        body=b"\x00\xffdata",
        route="api",
    )
    f.run_request(r, route_config={"limit": 1})
    doc = json.loads(logged(events, LogLevel.info)[0])
    assert doc == {
        "method": "POST",
        "path": "/a",
        "query": "q=1",
        "headers": {"host": "h", "accept": ["a", "b"], "x-é": "ü"},
        "client_ip": "192.0.2.7",
        "route": "api",
        "body": base64.b64encode(b"\x00\xffdata").decode(),
        "route_config": {"limit": 1},
    }
    events.clear()
    f.run_response(r, FilterResponse(201, [("content-type", "x")], b"out"))
    doc = json.loads(logged(events, LogLevel.warn)[0])
    assert doc == {
        "status_code": 201,
        "headers": {"content-type": "x"},
        "body": base64.b64encode(b"out").decode(),
        "request": {"method": "POST", "path": "/a", "query": "q=1", "client_ip": "192.0.2.7", "route": "api"},
    }


def test_no_body_unless_asked(engine: WasmEngine) -> None:
    events: list[dict] = []
    f = make(engine, g.ECHO_LOG, log=Logger(namespace="t", observer=events.append))
    f.run_request(req(body=b"secret"))
    doc = json.loads(logged(events, LogLevel.info)[-1])
    assert "body" not in doc and "route_config" not in doc


def test_input_buffer_reused_and_grown(engine: WasmEngine) -> None:
    """One alloc per instance while inputs fit; a bigger one when they do not."""
    f = make(engine, g.ECHO_LOG, log=Logger(namespace="t", observer=lambda e: None))
    ctx = f._build()
    try:
        f.abi.handle_request(ctx, req(), None)
        first = (ctx.abi_state["buf"], ctx.abi_state["cap"])
        for _ in range(5):
            f.abi.handle_request(ctx, req(), None)
        assert (ctx.abi_state["buf"], ctx.abi_state["cap"]) == first
        big = req(headers=[("x-big", "v" * 100_000)])
        f.abi.handle_request(ctx, big, None)
        assert ctx.abi_state["cap"] >= 100_000 and ctx.abi_state["buf"] != first[0]
    finally:
        ctx.dispose()


def test_now_ms(engine: WasmEngine) -> None:
    f = make(engine, g.ECHO_LOG, log=Logger(namespace="t", observer=lambda e: None))
    before = int(time.time() * 1000)
    f.run_request(req())
    ctx = f._local.ctx
    now = ctx.exports["last_now"].value(ctx.store)
    assert before <= now <= int(time.time() * 1000)


def test_log_rate_limited(engine: WasmEngine) -> None:
    events: list[dict] = []
    f = make(engine, g.ECHO_LOG, log=Logger(namespace="t", observer=events.append))
    events.clear()
    for _ in range(500):
        f.run_request(req())
    n = len(logged(events))
    assert 10 <= n < 200


def test_counters_namespaced(engine: WasmEngine) -> None:
    store = MemoryCounterStore()
    a = make(engine, g.COUNTER, name="a", state=store)
    b = make(engine, g.COUNTER, name="b", state=store)
    for _ in range(3):
        a.run_request(req())
    b.run_request(req())
    assert store.get("a:hits") == 3 and store.get("b:hits") == 1 and store.get("hits") == 0


# -- failures ---------------------------------------------------------------


def fail(f: WasmFilter, method: str) -> FilterFailure:
    with pytest.raises(FilterFailure) as e:
        f.run_request(req(method))
    return e.value


def test_timeout_then_fresh_instance(engine: WasmEngine) -> None:
    rec = Recorder()
    f = make(engine, g.MISBEHAVING, timeout_ms=50, observer=rec)
    assert isinstance(f.run_request(req()), Continue)
    first = f._local.ctx
    started = time.monotonic()
    e = fail(f, "LOOP")
    elapsed = time.monotonic() - started
    assert e.kind == "timeout" and "50 ms" in e.message
    assert 0.04 <= elapsed < 1.0
    assert first.dead and f.instance_count() == 0
    assert isinstance(f.run_request(req()), Continue)
    assert f._local.ctx is not first and f.instance_count() == 1
    assert rec.failed == [("p", "timeout")]


def test_memory_bomb_capped(engine: WasmEngine) -> None:
    rss_before = rss_bytes()
    f = make(engine, g.MISBEHAVING, memory_limit_mb=8)
    for _ in range(5):
        assert fail(f, "MEM").kind == "oom"
    assert rss_bytes() - rss_before < 64 * 1024 * 1024
    assert isinstance(f.run_request(req()), Continue)


def test_trap(engine: WasmEngine) -> None:
    e = fail(make(engine, g.MISBEHAVING), "TRAP")
    assert e.kind == "trap" and "unreachable" in e.message


@pytest.mark.parametrize(
    "method, words",
    [
        ("JSON", "not valid JSON"),
        ("OOB", "outside the guest's memory"),
        ("VVV", "599"),
        ("HHH", "CR, LF"),
        ("KKK", "unknown key"),
    ],
)
def test_bad_output(engine: WasmEngine, method: str, words: str) -> None:
    f = make(engine, g.MISBEHAVING)
    f.run_request(req())
    ctx = f._local.ctx
    e = fail(f, method)
    assert e.kind == "bad_output" and words in e.message
    assert f._local.ctx is ctx and not ctx.dead  # the instance is fine; kept


def test_state_error(engine: WasmEngine) -> None:
    class Down(MemoryCounterStore):
        def incr(self, key: str, delta: int, ttl_ms: int) -> int:
            raise ConnectionError("redis down")

    rec = Recorder()
    f = make(engine, g.COUNTER, state=Down(), observer=rec)
    e = fail(f, "GET")
    assert e.kind == "state" and "redis down" in e.message
    assert rec.failed == [("p", "state")]
    closed = MemoryCounterStore()
    f2 = make(engine, g.COUNTER, state=closed)
    closed.close()
    assert fail(f2, "GET").kind == "state"


def test_fuel_limit() -> None:
    e = WasmEngine(fuel=True)
    try:
        f = make(e, g.MISBEHAVING, fuel=100_000, timeout_ms=10_000)
        started = time.monotonic()
        err = fail(f, "LOOP")
        assert err.kind == "timeout" and "fuel" in err.message
        assert time.monotonic() - started < 1.0
        for _ in range(20):  # refilled per call
            assert isinstance(f.run_request(req()), Continue)
    finally:
        e.stop()


def test_many_failures_then_success(engine: WasmEngine) -> None:
    """1,000 failing calls in a row leave threads and memory bounded."""
    f = make(engine, g.MISBEHAVING, failure_policy="open")
    for _ in range(20):
        fail(f, "TRAP")
    threads = threading.active_count()
    rss = rss_bytes()
    for i in range(1000):
        fail(f, "TRAP" if i % 2 else "MEM")
    assert isinstance(f.run_request(req()), Continue)
    assert threading.active_count() == threads
    assert f.instance_count() == 1
    assert rss_bytes() - rss < 64 * 1024 * 1024


def test_failures_logged_rate_limited(engine: WasmEngine) -> None:
    events: list[dict] = []
    f = make(engine, g.MISBEHAVING, log=Logger(namespace="t", observer=events.append))
    for _ in range(50):
        fail(f, "TRAP")
    warnings = [e for e in events if e.get("kind") == "trap"]
    assert 1 <= len(warnings) <= 5
    assert all("Traceback" not in e["message"] for e in warnings)


# -- loading -----------------------------------------------------------------


@pytest.mark.parametrize(
    "wat, words",
    [
        (g.MISSING_HANDLE_REQUEST, "missing export 'handle_request'"),
        (g.UNKNOWN_IMPORT, "imports env.launch_missiles, which the host does not provide"),
        (g.WRONG_IMPORT_TYPE, "imports wasmgate.now_ms with type () -> (i32)"),
        (g.INIT_REFUSES, "wasmgate_init refused the plugin's config (returned 1)"),
        (g.NO_MEMORY, "missing export 'memory'"),
        (g.TOO_MUCH_MEMORY, "cannot instantiate"),
        (g.NOT_A_FILTER, "speaks no known ABI"),
    ],
)
def test_load_errors(engine: WasmEngine, wat: str, words: str) -> None:
    rec = Recorder()
    with pytest.raises(PluginLoadError) as e:
        make(engine, wat, name="bad", observer=rec)
    assert e.value.name == "bad" and words in e.value.what, e.value.what
    assert str(e.value).startswith("plugin 'bad': ")
    assert rec.failed == [("bad", "load")]


def test_settings_validated(engine: WasmEngine) -> None:
    with pytest.raises(PluginLoadError, match="failure_policy"):
        make(engine, g.PASS_THROUGH, failure_policy="maybe")
    with pytest.raises(PluginLoadError, match="fuel=True"):
        make(engine, g.PASS_THROUGH, fuel=1000)
    with pytest.raises(PluginLoadError, match="timeout_ms"):
        make(engine, g.PASS_THROUGH, timeout_ms=0)


# -- instances across threads ------------------------------------------------


def test_instances_per_thread_and_close(engine: WasmEngine) -> None:
    f = make(engine, g.PASS_THROUGH)
    contexts = []

    def work() -> None:
        f.run_request(req())
        contexts.append(f._local.ctx)

    f.run_request(req())
    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in contexts}) == 3
    assert f.instance_count() == 1  # the exited threads' instances were reaped
    assert f.memory_bytes() == 2 * 65536
    f.close()
    assert f.instance_count() == 0 and f.memory_bytes() == 0
    e = fail(f, "GET")
    assert e.kind == "load"


# -- inspect -------------------------------------------------------------------


def test_inspect_ok(engine: WasmEngine, tmp_path) -> None:
    path = tmp_path / "echo.wasm"
    path.write_bytes(wasmtime.wat2wasm(g.ECHO_LOG))
    report = inspect_module(str(path), engine)
    assert report.ok and report.abi == "json" and report.response_filter
    assert "wasmgate.log: func (i32, i32, i32) -> ()" in report.imports
    assert "handle_request: func (i32, i32) -> (i64)" in report.exports
    text = report.text()
    assert "loads: yes" in text and "ABI:      json" in text
    assert report.as_dict()["ok"] is True


def test_inspect_problems(engine: WasmEngine, tmp_path) -> None:
    report = inspect_module(wasmtime.wat2wasm(g.UNKNOWN_IMPORT), engine)
    assert not report.ok and "launch_missiles" in report.problems[0]
    assert "loads: NO" in report.text()
    report = inspect_module(wasmtime.wat2wasm(g.NOT_A_FILTER), engine)
    assert not report.ok and report.abi == "unknown"
    report = inspect_module(b"\0asm\x01\0\0\0garbage", engine)
    assert not report.ok and "not a valid wasm module" in report.problems[0]
    report = inspect_module(str(tmp_path / "missing.wasm"), engine)
    assert not report.ok and "cannot read file" in report.problems[0]
    report = inspect_module(wasmtime.wat2wasm(g.INIT_REFUSES), engine)
    assert not report.ok and "refused" in report.problems[0]


# -- tables count against the memory cap -------------------------------------

TABLE_BOMB = """
(module
  (memory (export "memory") 2)
  %(alloc)s
  (table $t 1 funcref)
  (func (export "handle_request") (param $ptr i32) (param $len i32) (result i64)
    (local $m i32)
    (local.set $m (i32.load8_u offset=11 (local.get $ptr)))  ;; first letter of the method
    ;; B: grow the table by 4,000,000 elements (32 MB), trap if refused
    (if (i32.eq (local.get $m) (i32.const 66))
      (then
        (if (i32.eq (table.grow $t (ref.null func) (i32.const 4000000)) (i32.const -1))
          (then unreachable))))
    ;; S: a modest growth, as a guest's function table might need
    (if (i32.eq (local.get $m) (i32.const 83))
      (then
        (if (i32.eq (table.grow $t (ref.null func) (i32.const 5000)) (i32.const -1))
          (then unreachable))))
    (i64.const 0))
)
""" % {"alloc": g.ALLOC}


def test_table_growth_capped(engine: WasmEngine) -> None:
    """
    C{memory_limit_mb} bounds tables too: growing one by millions of
    elements is refused (the guest traps on the refusal), the filter keeps
    serving, and a growth a real guest might need still works.
    """
    rss_before = rss_bytes()
    f = make(engine, TABLE_BOMB, memory_limit_mb=1)
    for _ in range(3):
        e = fail(f, "BOMB")
        assert e.kind in ("trap", "oom")
    assert rss_bytes() - rss_before < 24 * 1024 * 1024
    assert isinstance(f.run_request(req("SMALL")), Continue)
    assert isinstance(f.run_request(req()), Continue)


@pytest.mark.parametrize(
    "wat",
    [
        '(module (memory (export "memory") 1) (table 4000000 funcref)'
        ' (func (export "wasmgate_alloc") (param i32) (result i32) (i32.const 0))'
        ' (func (export "handle_request") (param i32 i32) (result i64) (i64.const 0)))',
        '(module (memory (export "memory") 1) (memory $second 16)'
        ' (func (export "wasmgate_alloc") (param i32) (result i32) (i32.const 0))'
        ' (func (export "handle_request") (param i32 i32) (result i64) (i64.const 0)))',
    ],
    ids=["huge-table", "second-memory"],
)
def test_store_limits_refuse_at_instantiation(engine: WasmEngine, wat: str) -> None:
    """A table over the cap, or a second memory (which would get a cap of
    its own), cannot be instantiated."""
    with pytest.raises(PluginLoadError) as e:
        make(engine, wat, memory_limit_mb=1)
    assert "cannot instantiate" in e.value.what


# -- long counter keys --------------------------------------------------------


class KeyRecordingStore(MemoryCounterStore):
    """A memory store that remembers every key it was asked to count."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: set[str] = set()

    def incr(self, key: str, delta: int, ttl_ms: int) -> int:
        self.keys.add(key)
        return super().incr(key, delta, ttl_ms)


RATE_LIMITER = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plugins", "rate_limiter.wasm"
)


def test_long_counter_key_is_digested() -> None:
    """
    The bundled rate limiter keyed on a 1,100-byte Authorization header
    counts and limits it like any other key (no trap, no 502); the stored
    key is a fixed-length digest in the plugin's namespace, distinct for
    tokens that differ only after their first 1024 bytes.
    """
    from wasmgate.testing import run_filter

    store = KeyRecordingStore()
    token = "Bearer " + "a" * 1093
    other = "Bearer " + "a" * 1092 + "b"
    assert len(token) == len(other) == 1100
    config = {"limit": 3, "window": "60s", "key": "header:authorization"}

    def call(value: str) -> Any:
        return run_filter(
            RATE_LIMITER, config=config, state=store, name="rl", headers={"authorization": value}
        )

    results = [call(token) for _ in range(4)]
    assert [isinstance(r, Continue) for r in results] == [True, True, True, False]
    assert isinstance(results[3], Answer) and results[3].status == 429
    assert isinstance(call(other), Continue)
    assert store.keys and all(k.startswith("rl:") for k in store.keys)
    assert max(len(k) for k in store.keys) < 200
    assert all("sha256:" in k for k in store.keys)
    assert len(store.keys) >= 2  # one bucket per token


# -- a refused config says why, wherever it is loaded ---------------------------

_PII = os.path.join(os.path.dirname(__file__), "..", "plugins", "pii_redactor.wasm")


def test_config_refusal_carries_what_the_plugin_logged(engine):
    """
    The bundled redactor logs why it refuses a config; that reason is part
    of the load error itself (so check, start-up and run_filter show it),
    not only of `plugin inspect`.
    """
    from wasmgate.testing import run_filter

    with open(_PII, "rb") as f:
        module = engine.compile(f.read())
    with pytest.raises(PluginLoadError) as info:
        WasmFilter(name="pii", module=module, engine=engine, config={"email": True})
    assert info.value.what.startswith("wasmgate_init refused the plugin's config (returned 1): ")
    assert "unknown key 'email'" in info.value.what
    with pytest.raises(PluginLoadError, match="unknown key 'email'"):
        run_filter(_PII, config={"email": True})


def test_config_refusal_reason_in_check(tmp_path):
    from wasmgate.config import load_config
    from wasmgate.wasm.runtime import check_plugins

    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"plugins: [{{name: pii, path: {os.path.abspath(_PII)}, config: {{email: true}}}}]\n"
        "routes: [{match: {path_prefix: /}, upstream: u, filters: [pii]}]\n"
        "upstreams: {u: {targets: ['http://127.0.0.1:1']}}\n"
    )
    problems = check_plugins(load_config(str(path)))
    assert len(problems) == 1 and "unknown key 'email'" in problems[0], problems


def test_env_abort_import_has_a_build_hint(engine):
    wat = """(module (import "env" "abort" (func (param i32 i32 i32 i32)))
      (memory (export "memory") 1)
      (func (export "wasmgate_alloc") (param i32) (result i32) (i32.const 0))
      (func (export "handle_request") (param i32 i32) (result i64) (i64.const 0)))"""
    with pytest.raises(PluginLoadError) as info:
        WasmFilter(name="a", module=engine.compile(wasmtime.wat2wasm(wat)), engine=engine)
    assert "imports env.abort, which the host does not provide" in info.value.what
    assert "--use abort=" in info.value.what
