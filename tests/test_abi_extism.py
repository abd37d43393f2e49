"""
The Extism plugin ABI: the kernel and host functions against the reference
host (the C{extism} SDK runs the same .wasm on the same input, and the
output bytes must match), the seed's contract, and the same guarantees as
other filters (deadline, memory cap with the kernel's memory counted,
failure kinds, shared bounded vars).
"""
from __future__ import annotations

import base64
import json
import os
import struct
import threading
from typing import Any, Optional

import pytest
import wasmtime
from twisted.logger import Logger

from tests import extism_guests as x
from wasmgate.testing import FilterHarness, make_request
from wasmgate.wasm._extism_seed import encode_request
from wasmgate.wasm.engine import WasmEngine
from wasmgate.wasm.filter import FilterFailure, PluginLoadError, WasmFilter, select_abi
from wasmgate.wasm.inspect import inspect_module
from wasmgate.wasm.messages import Answer, Continue

extism = pytest.importorskip("extism")

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGINS = os.path.join(HERE, "..", "plugins", "extism")
RATE_LIMITER = os.path.join(PLUGINS, "rate_limiter.wasm")
REDACTOR = os.path.join(PLUGINS, "header_redactor.wasm")


def wasm(source: str) -> bytes:
    if source.endswith(".wasm"):
        with open(source, "rb") as f:
            return f.read()
    return bytes(wasmtime.wat2wasm(source))


def reference(source: str, config: Optional[dict] = None) -> Any:
    """The same plugin on the reference host (WASI on, as wasmgate always has it)."""
    return extism.Plugin(wasm(source), wasi=True, config=config)


class Ours:
    """One wasmgate filter; C{call} is one raw Extism call on this thread's instance."""

    def __init__(self, source: str, *, raw: bool = True, **kw: Any) -> None:
        self.engine = WasmEngine(raw_calls=raw)
        self.filter = WasmFilter(name="x", module=self.engine.compile(wasm(source)), engine=self.engine, **kw)

    def call(self, data: bytes) -> bytes:
        return self.filter._run(self.filter._instance, self.filter.abi.call, data)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.filter.close()
        self.engine.stop()


@pytest.fixture(params=[True, False], ids=["raw", "checked"])
def raw(request: Any) -> bool:
    return bool(request.param)


# -- detection and inspection --------------------------------------------------


def test_detected_and_inspected(engine: WasmEngine) -> None:
    module = engine.compile(wasm(RATE_LIMITER))
    assert select_abi(module).name == "extism"
    report = inspect_module(RATE_LIMITER, engine)
    assert report.ok and report.abi == "extism" and report.calls == "handler"
    assert "config_get" in report.uses and "var_set" in report.uses and "input_load_u64" in report.uses
    text = report.text()
    assert "  ABI:      extism" in text and "  calls:    handler" in text
    assert "  uses:     alloc, config_get," in text
    missing = inspect_module(RATE_LIMITER, engine, export="main")
    assert not missing.ok
    assert missing.problems == ["exports no function 'main' to call (set export: to one of: handler)"]


def test_load_problems(engine: WasmEngine) -> None:
    bad_type = '(module (import "extism:host/env" "alloc" (func (param i32) (result i64))) (memory (export "memory") 1) (func (export "handler") (result i32) (i32.const 0)))'
    with pytest.raises(PluginLoadError, match=r"imports extism:host/env.alloc with type \(i32\) -> \(i64\), but the host provides \(i64\) -> \(i64\)"):
        WasmFilter(name="t", module=engine.compile(wasm(bad_type)), engine=engine)
    with pytest.raises(PluginLoadError, match="config_raw/config_base64 are for guests that read raw bytes"):
        WasmFilter(name="t", module=engine.compile(wasm(REDACTOR)), engine=engine, config_bytes=b"x")
    other = x.KERNEL_PROBE.replace('(export "handler")', '(export "check")')
    WasmFilter(name="t", module=engine.compile(wasm(other)), engine=engine, export="check").close()


# -- differential: the same bytes from both hosts -------------------------------


def test_kernel_and_host_functions_match_the_reference(raw: bool) -> None:
    config = {"name": "wasmgate-value"}
    data = b"0123456789abcdefXYZ"
    ref = reference(x.KERNEL_PROBE, config)
    ours = Ours(x.KERNEL_PROBE, raw=raw, config=config)
    try:
        for _ in range(3):  # vars carry over from call to call
            expected = ref.call("handler", data)
            got = ours.call(data)
            assert got == expected
        report = struct.unpack("<%dq" % (len(got) // 8), got)[-27:]
        assert report[:4] == (19, ord("0"), ord("Z"), 0)  # input length, first, last, past the end
        assert report[20:22] == (14, int.from_bytes(b"wasmgate", "little"))  # config "name"
        assert report[23] == 2  # the third call saw the var the second set
        assert report[24:] == (4, 0, 0)  # a var set, then removed; a key config_get freed
    finally:
        ours.close()


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 1024, 70_001])
def test_payload_round_trip_matches_the_reference(size: int) -> None:
    data = bytes((i * 7 + 3) & 0xFF for i in range(size))
    ours = Ours(x.ROUND_TRIP)
    try:
        assert ours.call(data) == data == reference(x.ROUND_TRIP).call("handler", data)
    finally:
        ours.close()


@pytest.mark.parametrize(
    "data, kind, words",
    [
        (b"error", "error", "handler failed: it went wrong"),
        (b"zero", "error", "handler failed: it went wrong"),  # an error set is a failure even with 0
        (b"code", "error", "handler returned 7"),
        (b"trap", "trap", "(plugin error: it went wrong)"),
    ],
)
def test_failures_are_failures_on_both_hosts(data: bytes, kind: str, words: str) -> None:
    with pytest.raises(extism.Error):
        reference(x.FAILS).call("handler", data)
    ours = Ours(x.FAILS)
    try:
        with pytest.raises(FilterFailure) as info:
            ours.call(data)
        assert info.value.kind == kind and words in info.value.message
        for _ in range(2):
            with pytest.raises(FilterFailure):
                ours.call(b"error")
            assert ours.filter.instance_count() == 1  # an error keeps its instance
    finally:
        ours.close()


REQUESTS = [
    make_request(method="POST", path="/v1/items", headers=[("Authorization", "Bearer s3cret"), ("X-Api-Key", "k1"), ("accept", "*/*")]),
    make_request(path="/", headers=[("cookie", "a=1"), ("cookie", "b=2"), ("x-note", 'quote " and \\ and \u00e9')]),
    make_request(path="/plain", headers=[("accept", "text/html")]),
    make_request(method="PUT", path="/u", headers=[("authorization", "REDACTED")], body=b"\x00\x01body"),
]


@pytest.mark.parametrize("req", REQUESTS, ids=["auth", "cookies", "untouched", "already"])
@pytest.mark.parametrize("config", [{}, {"headers": "x-note, Accept", "replacement": "***"}], ids=["default", "configured"])
def test_header_redactor_matches_the_reference(req: Any, config: dict) -> None:
    data = encode_request(req, include_body=True)
    ours = Ours(REDACTOR, config=config)
    try:
        assert ours.call(data) == reference(REDACTOR, config).call("handler", data)
    finally:
        ours.close()


def test_rate_limiter_matches_the_reference() -> None:
    config = {"limit": "2", "window_seconds": "60", "key_header": "x-api-key"}
    ref = reference(RATE_LIMITER, config)
    ours = Ours(RATE_LIMITER, config={"limit": 2, "window_seconds": 60, "key_header": "x-api-key"})
    try:
        outputs = []
        for key in ["a", "a", "b", "a", "b", "b", "a"]:
            data = encode_request(make_request(headers={"x-api-key": key}), include_body=False)
            mine, theirs = ours.call(data), ref.call("handler", data)
            assert mine == theirs
            outputs.append(mine)
        assert [bool(o) for o in outputs] == [False, False, False, True, False, True, True]
        blocked = json.loads(outputs[3])
        assert blocked["block"] is True and blocked["status_code"] == 429
        assert blocked["headers"]["retry-after"] == "60"
        with pytest.raises(extism.Error, match="config 'limit' must be a positive integer"):
            reference(RATE_LIMITER, {}).call("handler", data)
    finally:
        ours.close()


def test_var_store_bound_matches_the_reference() -> None:
    """Extism counts vars with its overhead: both hosts refuse the same set."""

    def first_refused(call: Any) -> int:
        for i in range(40):
            try:
                call(bytes([65 + i]))
            except FilterFailure as e:
                assert e.kind == "trap" and "Variable store is full" in e.message
                return i
            except extism.Error:
                return i
        raise AssertionError("never full")

    ref = reference(x.FILL_VARS)
    ours = Ours(x.FILL_VARS)
    try:
        assert first_refused(ours.call) == first_refused(lambda d: ref.call("handler", d)) == 15
    finally:
        ours.close()


# -- the seed's contract ---------------------------------------------------------


def _b64(doc: Any) -> str:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return base64.b64encode(raw).decode()


def run_action(action: str, **request: Any) -> Any:
    include_body = request.pop("include_body", False)
    req = make_request(**request)
    with FilterHarness(x.echo(action), include_body=include_body) as h:
        return h.request(req)


def test_no_output_passes_unchanged() -> None:
    result = run_action("", headers={"a": "1"})
    assert isinstance(result, Continue) and not result.changed
    assert result.request.headers == [("a", "1")]


def test_block_answers() -> None:
    action = json.dumps({"block": True, "status_code": 429, "headers": {"Retry-After": "5"}, "body": _b64(b"slow down"), "extra": 1})
    answer = run_action(action)
    assert isinstance(answer, Answer)
    assert (answer.status, answer.headers, answer.body) == (429, [("retry-after", "5")], b"slow down")
    default = run_action('{"block": true}')
    assert isinstance(default, Answer) and (default.status, default.body) == (403, b"")


def test_non_blocking_payload_replaces_method_path_and_headers() -> None:
    payload = {"method": "PATCH", "path": "/new", "headers": {"a": "changed", "keep": "1", "added": "x"}, "body": _b64(b"ignored")}
    action = json.dumps({"block": False, "status_code": 500, "body": _b64(payload), "headers": {"x-from-action": "y"}})
    result = run_action(action, path="/old", headers=[("a", "1"), ("keep", "1"), ("keep", "2"), ("gone", "z")], body=b"orig")
    assert isinstance(result, Continue)
    req = result.request
    assert (req.method, req.path) == ("PATCH", "/new")
    assert sorted(req.headers) == [("a", "changed"), ("added", "x"), ("keep", "1"), ("keep", "2"), ("x-from-action", "y")]
    assert req.body == b"orig"  # the plugin was not given the body: its "body" means nothing


def test_non_blocking_payload_body_with_include_body() -> None:
    payload = {"method": "POST", "path": "/p", "headers": {}, "body": _b64(b"new")}
    result = run_action(json.dumps({"body": _b64(payload)}), method="POST", path="/p", body=b"old", include_body=True)
    assert isinstance(result, Continue) and result.request.body == b"new"


@pytest.mark.parametrize(
    "action, words",
    [
        ("not json", "output is not valid JSON"),
        ('{"block": "yes"}', "'block' must be true or false"),
        (json.dumps({"body": _b64(b"plain text")}), "must be a base64 RequestPayload"),
        ('{"body": "%%%"}', "must be a base64 RequestPayload"),
        (json.dumps({"block": True, "status_code": 99}), "'status_code' must be an integer from 100 to 599"),
        (json.dumps({"headers": {"bad name": "x"}}), "invalid header name"),
        ("[" * 20000 + "]" * 20000, "nested too deeply"),
        (json.dumps({"body": _b64(b"[" * 15000 + b"]" * 15000)}), "must be a base64 RequestPayload"),
    ],
)
def test_bad_actions_are_bad_output(action: str, words: str) -> None:
    with pytest.raises(FilterFailure) as info:
        run_action(action)
    assert info.value.kind == "bad_output" and words in info.value.message


def test_an_action_over_the_output_bound_is_bad_output_unparsed() -> None:
    from wasmgate.wasm._extism_seed import apply_action
    from wasmgate.wasm.abi_json import MAX_OUTPUT_BYTES

    from wasmgate.wasm.failures import BadOutput

    huge = b'{"headers": {"a": "' + b"x" * MAX_OUTPUT_BYTES + b'"}}'
    with pytest.raises(BadOutput, match="over the 4194304 allowed"):
        apply_action(huge, make_request(), "p", False)


def test_config_values_are_strings() -> None:
    probe = x.module(
        """
  (func (export "handler") (result i32)
    (local $v i64)
    (local.set $v (call $config_get (call $block (i32.const 100) (i32.const 1))))
    (call $output_set (local.get $v) (call $length (local.get $v)))
    (i32.const 0))
""",
        '  (data (i32.const 100) "k")',
    )
    for value, text in [(5, b"5"), (True, b"true"), ("s", b"s"), ({"a": [1]}, b'{"a":[1]}')]:
        ours = Ours(probe, config={"k": value})
        try:
            assert ours.call(b"") == text == reference(probe, {"k": text.decode()}).call("handler", b"")
        finally:
            ours.close()


# -- the same guarantees as other filters -------------------------------------------


def test_deadline() -> None:
    ours = Ours(x.SPIN, timeout_ms=20)
    try:
        for _ in range(2):  # a fresh instance after the first timeout
            with pytest.raises(FilterFailure) as info:
                ours.call(b"")
            assert info.value.kind == "timeout"
    finally:
        ours.close()


def test_memory_cap_counts_the_kernel() -> None:
    mib = 1024 * 1024
    big = b"\x00" + bytes(mib + mib // 4)
    ours = Ours(x.GROW, memory_limit_mb=2)
    try:
        ours.call(big)  # 1.25 MiB of input fits beside a small plugin
        assert ours.filter.memory_bytes() > mib
    finally:
        ours.close()
    ours = Ours(x.GROW, memory_limit_mb=2)
    try:
        ours.call(b"\x01")  # the plugin grows its own memory by 1 MiB
        with pytest.raises(FilterFailure) as info:  # now the same input does not fit
            ours.call(big)
        assert info.value.kind == "oom" and "does not fit" in info.value.message
    finally:
        ours.close()
    ours = Ours(x.GROW, memory_limit_mb=2)
    try:
        with pytest.raises(FilterFailure) as info:  # both grow in one call: over the cap at its end
            ours.call(b"\x01" + big[1:])
        assert info.value.kind == "oom" and "plugin and kernel memory" in info.value.message
        ours.call(b"\x00")  # on a fresh instance
        assert ours.filter.memory_bytes() < mib
    finally:
        ours.close()


def test_vars_are_shared_by_the_filters_threads() -> None:
    """One limit across threads: each thread has its own instance, the vars are the plugin's."""
    with FilterHarness(RATE_LIMITER, config={"limit": 3, "window_seconds": 60}) as h:
        results: list[Any] = []

        def one() -> None:
            results.append(h.request(path="/"))

        for _ in range(4):
            t = threading.Thread(target=one)
            t.start()
            t.join()
        assert [isinstance(r, Answer) for r in results] == [False, False, False, True]
        assert results[-1].status == 429


def test_http_is_refused() -> None:
    with pytest.raises(extism.Error):
        reference(x.HTTP).call("handler", b"")
    with pytest.raises(FilterFailure) as info:
        Ours(x.HTTP).call(b"")
    assert info.value.kind == "trap" and "no network access" in info.value.message


def test_logs_go_to_the_plugin_log() -> None:
    events: list[dict] = []
    ours = Ours(x.KERNEL_PROBE, log=Logger(namespace="t", observer=events.append))
    try:
        ours.call(b"0123456789")
        said = [(e["log_level"].name, e["message"]) for e in events if "message" in e]
        assert said == [("info", "hello, world")]  # log_debug is below the level
    finally:
        ours.close()


def test_kernel_stays_out_of_the_module_cache(engine: WasmEngine) -> None:
    """The engine's cache holds live plugins' modules only (reloads release them): not the kernel."""
    import hashlib

    data = wasm(REDACTOR)
    f = WasmFilter(name="t", module=engine.compile(data), engine=engine)
    try:
        from wasmgate.wasm._extism_kernel import kernel_wasm

        cached = engine.cached_digests()
        assert hashlib.sha256(data).hexdigest() in cached
        assert hashlib.sha256(kernel_wasm()).hexdigest() not in cached
    finally:
        f.close()
