"""
Tests for L{wasmgate.testing}, the helpers for users' own filter tests.
"""
from __future__ import annotations

import threading

import pytest
import wasmtime

from tests import wasm_guests as g
from wasmgate.testing import (
    FilterFailure,
    FilterHarness,
    PluginLoadError,
    load_wasm,
    make_request,
    memory_store,
    run_filter,
    run_response_filter,
)
from wasmgate.wasm.messages import Answer, Continue, FilterResponse


def test_run_filter_from_wat_and_kwargs() -> None:
    threads = threading.active_count()
    out = run_filter(g.HEADER_REWRITE, path="/x", headers={"X-Remove-Me": "1", "Host": "h"})
    assert isinstance(out, Continue)
    assert out.request.path == "/rewritten"
    assert ("host", "h") in out.request.headers
    assert all(name != "x-remove-me" for name, _ in out.request.headers)
    assert threading.active_count() == threads  # the engine's ticker was stopped


def test_run_filter_answer_and_request_object() -> None:
    out = run_filter(g.BLOCK_403, make_request(method="DELETE"))
    assert isinstance(out, Answer) and out.status == 403 and out.body == b"blocked by wasm\n"


def test_run_filter_from_files(tmp_path) -> None:
    wasm = tmp_path / "f.wasm"
    wasm.write_bytes(wasmtime.wat2wasm(g.BLOCK_403))
    wat = tmp_path / "f.wat"
    wat.write_text(g.BLOCK_403)
    assert isinstance(run_filter(str(wasm)), Answer)
    assert isinstance(run_filter(wat), Answer)
    assert load_wasm(wasm.read_bytes()) == wasm.read_bytes()
    assert load_wasm(g.BLOCK_403.encode())[:4] == b"\0asm"


def test_failures_raise() -> None:
    with pytest.raises(FilterFailure) as e:
        run_filter(g.MISBEHAVING, method="TRAP")
    assert e.value.kind == "trap"
    with pytest.raises(FilterFailure) as e:
        run_filter(g.MISBEHAVING, method="LOOP", timeout_ms=20)
    assert e.value.kind == "timeout"
    with pytest.raises(PluginLoadError):
        run_filter(g.INIT_REFUSES)


def test_fuel() -> None:
    with pytest.raises(FilterFailure) as e:
        run_filter(g.MISBEHAVING, method="LOOP", fuel=10_000, timeout_ms=5_000)
    assert e.value.kind == "timeout" and "fuel" in e.value.message


def test_shared_state_between_calls() -> None:
    store = memory_store()
    for _ in range(3):
        run_filter(g.COUNTER, state=store, name="rl")
    assert store.get("rl:hits") == 3
    with FilterHarness(g.COUNTER, name="rl", state=store) as h:
        h.request()
        h.request(path="/other")
    assert store.get("rl:hits") == 5


def test_run_response_filter() -> None:
    out = run_response_filter(g.RESPONSE_HEADER, headers={"Server": "nginx", "A": "b"})
    assert out.headers == [("a", "b"), ("x-response-filtered", "yes")]
    resp = FilterResponse(200, [], b"x")
    assert run_response_filter(g.PASS_THROUGH, resp) is resp
    out = run_response_filter(g.RESPONSE_STATUS, status=500)
    assert (out.status, out.body) == (418, b"teapot\n")


def test_run_response_filter_drives_an_http_wasm_guest() -> None:
    """
    An http-wasm guest's response phase runs on the instance its request
    phase pinned: run_response_filter runs that request phase first.
    """
    from tests import httpwasm_guests as hw

    out = run_response_filter(hw.REWRITE, headers={"Server": "nginx", "x-replaced": "upstream"})
    headers = dict(out.headers)
    assert headers["x-replaced"] == "by-guest" and "server" not in headers
    assert [v for n, v in out.headers if n == "x-late"] == ["l1", "l2"]
    # the request phase's context reached handle_response, not as an error
    assert (hw.hex_field(headers["x-ctx"]), hw.hex_field(headers["x-err"])) == (7, 0)
    with pytest.raises(ValueError, match="answered the request itself"):
        run_response_filter(hw.ANSWER)


def test_run_filter_runs_extism_plugins():
    """wasmgate.testing runs Extism plugins as the gateway does (the seed's contract)."""
    import os

    from wasmgate.testing import FilterHarness, run_filter
    from wasmgate.wasm.messages import Answer, Continue

    here = os.path.join(os.path.dirname(__file__), "..", "plugins", "extism")
    result = run_filter(os.path.join(here, "header_redactor.wasm"), headers={"authorization": "Bearer x", "a": "b"})
    assert isinstance(result, Continue)
    assert sorted(result.request.headers) == [("a", "b"), ("authorization", "REDACTED")]
    with FilterHarness(os.path.join(here, "rate_limiter.wasm"), config={"limit": 1}) as h:
        assert isinstance(h.request(), Continue)
        blocked = h.request()
        assert isinstance(blocked, Answer) and blocked.status == 429
        assert ("retry-after", "60") in blocked.headers
