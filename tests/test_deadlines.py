"""
Filter deadlines count the filter's own CPU time: waiting (for the GIL on a
busy gateway, or in a host call, which has its own timeout) does not use
it up, so an overloaded gateway does not fail healthy filters, while a
guest that computes too long is stopped on time.
"""
from __future__ import annotations

import time

import pytest

from tests import wasm_guests as guests
from wasmgate.state import MemoryCounterStore
from wasmgate.testing import FilterFailure, run_filter


WAIT_THEN_COMPUTE = """
(module
  (import "wasmgate" "counter_incr" (func $incr (param i32 i32 i64 i64) (result i64)))
  (memory (export "memory") 2)
  %(alloc)s
  (data (i32.const 1024) "hits")
  ;; a host call (which may wait), then a little computing: the loop's
  ;; back edge is where wasmtime checks the epoch deadline
  (func (export "handle_request") (param i32 i32) (result i64)
    (local $i i32)
    (drop (call $incr (i32.const 1024) (i32.const 4) (i64.const 1) (i64.const 0)))
    (loop $spin
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $spin (i32.lt_u (local.get $i) (i32.const 10000))))
    (i64.const 0))
)
""" % {"alloc": guests.ALLOC}


class SlowStore(MemoryCounterStore):
    """Counters whose every call waits C{delay} seconds (not computing)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def incr(self, key: str, delta: int, ttl_ms: int) -> int:
        time.sleep(self.delay)
        return super().incr(key, delta, ttl_ms)


def test_waiting_in_a_host_call_is_not_computing():
    store = SlowStore(0.15)  # three times the 50 ms limit, all of it waiting
    started = time.monotonic()
    run_filter(WAIT_THEN_COMPUTE, state=store, timeout_ms=50)
    assert time.monotonic() - started >= 0.15
    assert store.get("plugin:hits") == 1  # the call completed


def test_computing_past_the_limit_is_stopped_on_time():
    started = time.monotonic()
    with pytest.raises(FilterFailure) as info:
        run_filter(guests.MISBEHAVING, method="LOOP", timeout_ms=50)
    assert info.value.kind == "timeout"
    assert time.monotonic() - started < 0.5
