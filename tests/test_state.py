"""
The counter stores' shared semantics, for L{wasmgate.state.MemoryCounterStore}
and L{wasmgate.sharedcounters.SharedCounterStore} alike (what only the shared
table does, across processes, is in C{tests.test_sharedcounters}).
"""
from __future__ import annotations

import threading

import pytest

from wasmgate.sharedcounters import SharedCounterStore
from wasmgate.state import CounterStore, MemoryCounterStore, StateError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "shared"])
def make(request):
    """
    C{make(**options)}: a counter store of either kind the gateway runs
    (one process's memory, or the table workers share): both keep the
    same semantics.
    """
    made = []

    def make_store(**options):
        store = MemoryCounterStore(**options) if request.param == "memory" else SharedCounterStore.create(**options)
        made.append(store)
        return store

    yield make_store
    for store in made:
        store.close()


def test_protocol(make) -> None:
    assert isinstance(make(), CounterStore)


def test_incr_and_get(make) -> None:
    s = make()
    assert s.get("a") == 0
    assert s.incr("a", 1, 0) == 1
    assert s.incr("a", 5, 0) == 6
    assert s.incr("a", -2, 0) == 4
    assert s.get("a") == 4
    assert s.get("b") == 0


def test_ttl_set_on_create_not_extended(make) -> None:
    """Like INCRBY + PEXPIRE NX: later increments keep the first expiry."""
    clock = Clock()
    s = make(clock=clock)
    s.incr("w", 1, 1000)
    clock.now += 0.6
    assert s.incr("w", 1, 1000) == 2
    clock.now += 0.5  # 1.1 s after creation
    assert s.get("w") == 0
    assert s.incr("w", 1, 1000) == 1  # a new window
    clock.now += 0.9
    assert s.get("w") == 1


def test_no_ttl_never_expires(make) -> None:
    clock = Clock()
    s = make(clock=clock)
    s.incr("k", 3, 0)
    s.incr("n", 3, -5)
    clock.now += 1e9
    assert s.get("k") == 3 and s.get("n") == 3


def test_bounded_evicts_expired_first_then_oldest(make) -> None:
    clock = Clock()
    s = make(max_keys=10, clock=clock)
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
    assert s.get("k0") == 0  # oldest went first
    assert s.get("flood99") == 1


def test_full_store_keeps_headroom_after_a_scan(make) -> None:
    """
    A full store whose scan frees only a key or two still evicts down to
    90%, so the next inserts do not each scan every key again.
    """
    clock = Clock()
    s = make(max_keys=100, clock=clock)
    for i in range(100):
        s.incr("k%d" % i, 1, 1000 + 10 * i)  # one expires every 10 ms
    clock.now += 1.005  # only k0 has expired
    s.incr("new", 1, 0)
    assert len(s) == 91  # 90 kept (the newest), and the new key
    assert s.get("k99") == 1 and s.get("k5") == 0 and s.get("new") == 1


def test_saturates_at_int64(make) -> None:
    s = make()
    s.incr("big", (1 << 63) - 1, 0)
    assert s.incr("big", 10, 0) == (1 << 63) - 1
    assert s.incr("small", -(1 << 63), 0) == -(1 << 63)
    assert s.incr("small", -1, 0) == -(1 << 63)


def test_atomic_across_threads(make) -> None:
    s = make()
    n, m = 8, 2000

    def work() -> None:
        for _ in range(m):
            s.incr("shared", 1, 60_000)

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert s.get("shared") == n * m


def test_closed_raises_state_error(make) -> None:
    s = make()
    s.incr("a", 1, 0)
    s.close()
    with pytest.raises(StateError):
        s.incr("a", 1, 0)
    with pytest.raises(StateError):
        s.get("a")


def test_max_keys_validated() -> None:
    with pytest.raises(ValueError):
        MemoryCounterStore(max_keys=0)
