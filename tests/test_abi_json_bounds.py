"""
Tests for the bounds L{wasmgate.wasm.abi_json} puts on a guest's answer:
one too large (over L{MAX_OUTPUT_BYTES}, or twice the input when that is
more) or nested too deeply for Python's C{json} is bad output, counted and
answered like any other, never a traceback. Real guests, built from WAT.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import pytest
import pytest_twisted
from twisted.logger import Logger

from tests import wasm_guests as g
from tests.conftest import CountingPool, chain_of
from tests.test_wasm_filter import Recorder, make
from wasmgate.wasm.abi_json import MAX_OUTPUT_BYTES
from wasmgate.wasm.engine import WasmEngine
from wasmgate.wasm.filter import FilterFailure, WasmFilter
from wasmgate.wasm.messages import Answer, Continue, FilterRequest

Piece = Union[bytes, tuple[bytes, int]]
"""Literal bytes, or one byte repeated that many times."""

DEPTH = 100_000


def answering(pieces: Sequence[Piece]) -> str:
    """
    A JSON ABI guest whose handle_request answers with C{pieces} laid end to
    end in memory it allocates on each call (so even a large input never
    overwrites the answer): literals are copied from data segments, runs
    are written with C{memory.fill}.
    """
    total = sum(len(p) if isinstance(p, bytes) else p[1] for p in pieces)
    segments, body, at, literal = [], [], 0, 1024
    for piece in pieces:
        dest = "(i32.add (local.get $out) (i32.const %d))" % at
        if isinstance(piece, bytes):
            segments.append('(data (i32.const %d) "%s")' % (literal, g.wat_string(piece)))
            body.append("(memory.copy %s (i32.const %d) (i32.const %d))" % (dest, literal, len(piece)))
            literal += len(piece)
            at += len(piece)
        else:
            byte, count = piece
            body.append("(memory.fill %s (i32.const %d) (i32.const %d))" % (dest, byte[0], count))
            at += count
    assert literal < 65536
    return "\n".join(
        [
            "(module",
            '  (memory (export "memory") 2)',
            g.ALLOC.replace('(func (export "wasmgate_alloc")', '(func $alloc (export "wasmgate_alloc")'),
            *("  " + s for s in segments),
            '  (func (export "handle_request") (param i32 i32) (result i64)',
            "    (local $out i32)",
            "    (local.set $out (call $alloc (i32.const %d)))" % total,
            "    (if (i32.eqz (local.get $out)) (then unreachable))",
            *("    " + b for b in body),
            "    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32)) (i64.const %d)))" % total,
            ")",
        ]
    )


DEEP_ARRAYS = answering([b'{"headers":', (b"[", DEPTH), (b"]", DEPTH), b"}"])
"""An object whose one value is arrays nested 100000 deep."""

DEEP_OBJECTS = answering([b"{" + b'"a":{' * 10_000, (b"}", 10_001)])
"""Objects nested 10001 deep (each level costs 5 bytes of data segment,
which must fit below the guest's heap)."""

_HEADER_OPEN, _HEADER_CLOSE = b'{"headers":{"x-big":"', b'"}}'


def big_header(total: int) -> str:
    """A guest answering C{total} bytes: one header whose value fills the rest."""
    return answering([_HEADER_OPEN, (b"a", total - len(_HEADER_OPEN) - len(_HEADER_CLOSE)), _HEADER_CLOSE])


def req(body: Optional[bytes] = None) -> FilterRequest:
    return FilterRequest(
        method="GET", path="/a", query="", headers=[("host", "h")], client_ip="192.0.2.1", body=body
    )


def failure(f: WasmFilter, request: Optional[FilterRequest] = None) -> FilterFailure:
    with pytest.raises(FilterFailure) as e:
        f.run_request(request or req())
    return e.value


@pytest.mark.parametrize("wat", [DEEP_ARRAYS, DEEP_OBJECTS], ids=["arrays", "objects"])
def test_deeply_nested_answer_is_bad_output(engine: WasmEngine, wat: str) -> None:
    """RecursionError in json.loads is the guest's bad output: no traceback, instance kept."""
    events: list[dict] = []
    rec = Recorder()
    f = make(engine, wat, observer=rec, log=Logger(namespace="t", observer=events.append))
    for _ in range(2):
        e = failure(f)
        assert (e.kind, e.message) == ("bad_output", "output is nested too deeply to parse")
    assert rec.failed == [("p", "bad_output")] * 2
    assert f.instance_count() == 1 and not f._local.ctx.dead  # bad output keeps the instance
    assert not [ev for ev in events if "log_failure" in ev]  # nothing logged a traceback
    assert any(ev.get("kind") == "bad_output" for ev in events)  # the usual warning


def test_answer_over_the_bound_is_bad_output(engine: WasmEngine) -> None:
    """One byte over MAX_OUTPUT_BYTES is refused unread; the bound itself is fine."""
    rec = Recorder()
    over = make(engine, big_header(MAX_OUTPUT_BYTES + 1), observer=rec)
    e = failure(over)
    assert e.kind == "bad_output"
    assert e.message == "output of %d bytes is over the bound of %d bytes" % (MAX_OUTPUT_BYTES + 1, MAX_OUTPUT_BYTES)
    assert rec.failed == [("p", "bad_output")] and not over._local.ctx.dead

    at = make(engine, big_header(MAX_OUTPUT_BYTES)).run_request(req())
    assert isinstance(at, Continue)
    [(name, value)] = [h for h in at.request.headers if h[0] == "x-big"]
    assert len(value) == MAX_OUTPUT_BYTES - len(_HEADER_OPEN) - len(_HEADER_CLOSE)


def test_the_bound_grows_with_the_input(engine: WasmEngine) -> None:
    """A filter given a large body may answer with twice its input."""
    f = make(engine, big_header(MAX_OUTPUT_BYTES + 1), include_body=True)
    out = f.run_request(req(body=b"x" * (MAX_OUTPUT_BYTES // 2)))
    assert isinstance(out, Continue) and any(n == "x-big" for n, _ in out.request.headers)
    assert failure(f, req(body=b"x" * 16)).kind == "bad_output"


@pytest.mark.parametrize("policy", ["closed", "open"])
@pytest_twisted.inlineCallbacks
def test_chain_answers_500_under_either_policy(engine: WasmEngine, pool: CountingPool, policy: str):
    """Like any bad output: a 500 whatever the failure policy, counted, the chain stopped."""
    rec = Recorder()
    counter = make(engine, g.COUNTER, "count")
    for name, wat in [("deep", DEEP_ARRAYS), ("huge", big_header(MAX_OUTPUT_BYTES + 1))]:
        f = make(engine, wat, name, failure_policy=policy, observer=rec)
        outcome, decisions = yield chain_of([f, counter], pool).begin(req()).run_request()
        assert isinstance(outcome, Answer)
        assert (outcome.status, outcome.body, outcome.plugin) == (500, b"Internal Server Error\n", name)
        assert [(d.plugin, d.outcome) for d in decisions] == [(name, "failed:bad_output")]
    assert rec.failed == [("deep", "bad_output"), ("huge", "bad_output")]
    assert counter.state.get("count:hits") == 0
