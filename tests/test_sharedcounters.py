"""
L{wasmgate.sharedcounters.SharedCounterStore}: the memory store's
semantics, and exact counts when several processes and threads increment
the same key at once.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from wasmgate.sharedcounters import SharedCounterStore
from wasmgate.state import CounterStore, StateError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_protocol() -> None:
    assert isinstance(SharedCounterStore.create(max_keys=10), CounterStore)


def test_incr_get_and_ttl_like_redis() -> None:
    clock = Clock()
    s = SharedCounterStore.create(clock=clock)
    assert s.get("a") == 0
    assert s.incr("a", 1, 0) == 1 and s.incr("a", 5, 0) == 6 and s.incr("a", -2, 0) == 4
    s.incr("w", 1, 1000)
    clock.now += 0.6
    assert s.incr("w", 1, 1000) == 2
    clock.now += 0.5  # 1.1 s after creation: the TTL was not extended
    assert s.get("w") == 0
    assert s.incr("w", 1, 1000) == 1
    clock.now += 1e9
    assert s.get("a") == 4  # no TTL, no expiry


def test_bounded_evicts_expired_first_then_oldest() -> None:
    clock = Clock()
    s = SharedCounterStore.create(max_keys=10, clock=clock)
    s.incr("short", 1, 100)
    for i in range(9):
        s.incr("k%d" % i, 1, 0)
    assert len(s) == 10
    clock.now += 1
    s.incr("new", 1, 0)  # room made by dropping the expired key only
    assert len(s) == 10
    assert s.get("k0") == 1 and s.get("new") == 1
    for i in range(100):
        s.incr("flood%d" % i, 1, 0)
    assert len(s) <= 10
    assert s.get("k0") == 0 and s.get("flood99") == 1


def test_full_store_keeps_headroom_after_a_scan() -> None:
    clock = Clock()
    s = SharedCounterStore.create(max_keys=100, clock=clock)
    for i in range(100):
        s.incr("k%d" % i, 1, 1000 + 10 * i)
    clock.now += 1.005
    s.incr("new", 1, 0)
    assert len(s) == 91
    assert s.get("k99") == 1 and s.get("k5") == 0 and s.get("new") == 1


def test_saturates_at_int64() -> None:
    s = SharedCounterStore.create()
    s.incr("big", (1 << 63) - 1, 0)
    assert s.incr("big", 10, 0) == (1 << 63) - 1
    assert s.incr("small", -(1 << 63), 0) == -(1 << 63)
    assert s.incr("small", -1, 0) == -(1 << 63)


def test_closed_raises_state_error_and_bad_tables_are_refused() -> None:
    s = SharedCounterStore.create()
    s.incr("a", 1, 0)
    s.close()
    with pytest.raises(StateError):
        s.incr("a", 1, 0)
    with pytest.raises(ValueError):
        SharedCounterStore.create(max_keys=0)
    import os

    r, w = os.pipe()
    os.close(w)
    with open(os.devnull, "rb") as f, pytest.raises(Exception):
        SharedCounterStore.attach(f.fileno())
    os.close(r)


_WORKER = textwrap.dedent(
    """
    import sys, threading
    from wasmgate.sharedcounters import SharedCounterStore
    s = SharedCounterStore.attach(int(sys.argv[1]))
    def work():
        for i in range(2000):
            s.incr("shared", 1, 60_000)
            s.incr("key%d" % (i % 50), 1, 60_000)
    threads = [threading.Thread(target=work) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    """
)


def test_exact_across_processes_and_threads() -> None:
    """Two other processes (three threads each) and this one, on one key."""
    s = SharedCounterStore.create(max_keys=1000)
    fd = s.fileno()
    import os

    os.set_inheritable(fd, True)
    others = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(fd)], pass_fds=[fd]) for _ in range(2)
    ]
    mine = [threading.Thread(target=lambda: [s.incr("shared", 1, 60_000) for _ in range(2000)]) for _ in range(2)]
    for t in mine:
        t.start()
    for t in mine:
        t.join()
    assert [p.wait(60) for p in others] == [0, 0]
    assert s.get("shared") == 2 * 3 * 2000 + 2 * 2000
    assert sum(s.get("key%d" % i) for i in range(50)) == 2 * 3 * 2000
    assert len(s) == 51
