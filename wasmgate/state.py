# -*- test-case-name: tests.test_state -*-
"""
Shared counters for filters (rate limits, quotas).

Filters call these from filter-pool threads, in the middle of a wasm call,
so the protocol is blocking. The in-process L{MemoryCounterStore} is the
default; a Redis backend implements the same protocol for counters shared
by a fleet of gateways.

TTL semantics match Redis C{INCRBY key delta} followed by
C{PEXPIRE key ttl NX}: the TTL is set when the key is created (or first
incremented after expiring), and later increments do not extend it. So a
fixed-window counter is just C{incr(key, 1, window_ms)}. A C{ttl_ms} of 0 or
less means "no expiry".
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable, Protocol, runtime_checkable


class StateError(Exception):
    """The counter store could not do what was asked (e.g. Redis is down)."""


@runtime_checkable
class CounterStore(Protocol):
    """Blocking counter operations, safe to call from any thread."""

    def incr(self, key: str, delta: int, ttl_ms: int) -> int:
        """Add C{delta} to C{key} (created at 0) and return the new value."""

    def get(self, key: str) -> int:
        """The value of C{key}, 0 when absent or expired."""

    def close(self) -> None:
        """Release resources; later calls may raise L{StateError}."""


_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


class MemoryCounterStore:
    """
    Process-local counters: thread-safe, expiring, bounded.

    When C{max_keys} is reached, expired keys are dropped first and then the
    oldest keys (by creation), so a flood of distinct keys cannot grow memory
    without bound; it can only make the oldest counters start over.
    Values saturate at the signed 64-bit range, like the guest's C{i64}.
    """

    def __init__(
        self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        # key -> [value, expires_at or None]; insertion order = creation order
        self._data: OrderedDict[str, list] = OrderedDict()
        self._closed = False

    def incr(self, key: str, delta: int, ttl_ms: int) -> int:
        now = self._clock()
        with self._lock:
            if self._closed:
                raise StateError("counter store is closed")
            entry = self._data.get(key)
            if entry is not None and entry[1] is not None and entry[1] <= now:
                del self._data[key]
                entry = None
            if entry is None:
                if len(self._data) >= self.max_keys:
                    self._make_room(now)
                expires = now + ttl_ms / 1000.0 if ttl_ms > 0 else None
                entry = self._data[key] = [0, expires]
            entry[0] = min(_INT64_MAX, max(_INT64_MIN, entry[0] + delta))
            return entry[0]  # type: ignore[no-any-return]

    def get(self, key: str) -> int:
        now = self._clock()
        with self._lock:
            if self._closed:
                raise StateError("counter store is closed")
            entry = self._data.get(key)
            if entry is None:
                return 0
            if entry[1] is not None and entry[1] <= now:
                del self._data[key]
                return 0
            return entry[0]  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def _make_room(self, now: float) -> None:
        expired = [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]
        for k in expired:
            del self._data[k]
        # Down to 90% whatever expired: a scan that freed only a key or two
        # would otherwise be repeated on nearly every insert.
        target = self.max_keys - max(1, self.max_keys // 10)
        while len(self._data) > target:
            self._data.popitem(last=False)
