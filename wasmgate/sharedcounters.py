# -*- test-case-name: tests.test_sharedcounters -*-
"""
Counters shared by every worker process of one gateway, exactly: a hash
table in shared memory (an anonymous memfd the supervisor creates and each
worker maps), guarded by a POSIX record lock (C{lockf}: held per process,
so workers sharing one inherited descriptor still exclude each other)
across processes and a thread lock within one.
This is what nginx's C{lua_shared_dict} is to its workers: C{limit: 10}
lets 10 requests through per window whichever worker each lands on.

Keys are stored as 128-bit BLAKE2b digests, so every slot has one size and
the table never moves. Open addressing with linear probing; nothing is
deleted except by a compaction (expired keys first, then the oldest), which
rebuilds the table, so no tombstones are needed. A worker killed while it
holds the lock loses it as it dies; at worst the one slot it was writing
is wrong.

Same semantics as L{wasmgate.state.MemoryCounterStore}: TTL set when a key
is created and not extended, values saturating at the signed 64-bit range,
C{max_keys} bounding memory.
"""
from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
import threading
import time
from typing import Callable, Optional

from wasmgate.state import StateError

_MAGIC = b"WGCTR001"
_HEADER = struct.Struct("<8sQQQQ")
"""magic, capacity (slots, a power of two), max_keys, live keys, next creation number."""
_HEADER_SIZE = 64
_SLOT = struct.Struct("<16sqdQ")
"""key digest (all zero: empty), value, expiry (monotonic seconds, 0: none), creation number."""
_EMPTY = bytes(16)
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).digest()


class SharedCounterStore:
    """
    A L{wasmgate.state.CounterStore} in shared memory. The supervisor
    L{create}s it and passes L{fileno} to its workers, which L{attach}.
    """

    def __init__(self, fd: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._fd = fd
        size = os.fstat(fd).st_size
        self._map: Optional[mmap.mmap] = mmap.mmap(fd, size)
        magic, capacity, max_keys, _, _ = _HEADER.unpack_from(self._map, 0)
        if magic != _MAGIC or size != _HEADER_SIZE + capacity * _SLOT.size:
            raise StateError("not a wasmgate counter table")
        self.capacity = capacity
        self.max_keys = max_keys
        self._mask = capacity - 1
        self._clock = clock
        self._lock = threading.Lock()

    @classmethod
    def create(cls, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic) -> "SharedCounterStore":
        """A new, empty table for C{max_keys} keys (kept at most half full)."""
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        capacity = 1 << max(4, (2 * max_keys - 1).bit_length())
        fd = _anonymous_file()
        os.ftruncate(fd, _HEADER_SIZE + capacity * _SLOT.size)
        os.pwrite(fd, _HEADER.pack(_MAGIC, capacity, max_keys, 0, 1), 0)
        return cls(fd, clock=clock)

    @classmethod
    def attach(cls, fd: int, *, clock: Callable[[], float] = time.monotonic) -> "SharedCounterStore":
        """The table whose file descriptor a worker inherited."""
        return cls(fd, clock=clock)

    def fileno(self) -> int:
        return self._fd

    def incr(self, key: str, delta: int, ttl_ms: int) -> int:
        digest = _digest(key)
        now = self._clock()
        with self._lock:
            table = self._locked()
            try:
                offset, found = self._find(table, digest)
                if found:
                    _, value, expires, seq = _SLOT.unpack_from(table, offset)
                    if expires and expires <= now:
                        value, expires, seq = 0, _expiry(now, ttl_ms), self._next_seq(table)
                else:
                    _, _, _, live, _ = _HEADER.unpack_from(table, 0)
                    if live >= self.max_keys:
                        self._compact(table, now)
                        offset, _ = self._find(table, digest)
                    self._set_live(table, +1)
                    value, expires, seq = 0, _expiry(now, ttl_ms), self._next_seq(table)
                value = min(_INT64_MAX, max(_INT64_MIN, value + delta))
                _SLOT.pack_into(table, offset, digest, value, expires, seq)
                return value
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def get(self, key: str) -> int:
        digest = _digest(key)
        now = self._clock()
        with self._lock:
            table = self._locked()
            try:
                offset, found = self._find(table, digest)
                if not found:
                    return 0
                _, value, expires, _ = _SLOT.unpack_from(table, offset)
                return 0 if expires and expires <= now else value  # type: ignore[no-any-return]
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def __len__(self) -> int:
        """Keys held, expired ones not yet reclaimed included."""
        with self._lock:
            table = self._locked()
            try:
                return _HEADER.unpack_from(table, 0)[3]  # type: ignore[no-any-return]
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Unmap and close this process's handle (the others keep theirs)."""
        with self._lock:
            table, self._map = self._map, None
            if table is not None:
                table.close()
                os.close(self._fd)

    # -- the table, with both locks held --

    def _locked(self) -> mmap.mmap:
        table = self._map
        if table is None:
            raise StateError("counter store is closed")
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        return table

    def _find(self, table: mmap.mmap, digest: bytes) -> tuple[int, bool]:
        """The slot holding C{digest}, or the empty one where it would go."""
        index = int.from_bytes(digest[:8], "little") & self._mask
        while True:
            offset = _HEADER_SIZE + index * _SLOT.size
            held = table[offset : offset + 16]
            if held == digest:
                return offset, True
            if held == _EMPTY:
                return offset, False
            index = (index + 1) & self._mask

    def _next_seq(self, table: mmap.mmap) -> int:
        magic, capacity, max_keys, live, seq = _HEADER.unpack_from(table, 0)
        _HEADER.pack_into(table, 0, magic, capacity, max_keys, live, seq + 1)
        return seq  # type: ignore[no-any-return]

    def _set_live(self, table: mmap.mmap, change: int) -> None:
        magic, capacity, max_keys, live, seq = _HEADER.unpack_from(table, 0)
        _HEADER.pack_into(table, 0, magic, capacity, max_keys, live + change, seq)

    def _compact(self, table: mmap.mmap, now: float) -> None:
        """
        Full: drop expired keys, then the oldest, down to 90% of
        C{max_keys} (so that a scan is not repeated on every insert), and
        lay the rest out again.
        """
        region = memoryview(table)[_HEADER_SIZE:]
        try:
            kept = [
                slot
                for slot in _SLOT.iter_unpack(region)
                if slot[0] != _EMPTY and not (slot[2] and slot[2] <= now)
            ]
        finally:
            region.release()
        target = self.max_keys - max(1, self.max_keys // 10)
        if len(kept) > target:
            kept.sort(key=lambda slot: slot[3])
            kept = kept[len(kept) - target :]
        table[_HEADER_SIZE:] = bytes(len(table) - _HEADER_SIZE)
        for slot in kept:
            offset, _ = self._find(table, slot[0])
            _SLOT.pack_into(table, offset, *slot)
        magic, capacity, max_keys, _, seq = _HEADER.unpack_from(table, 0)
        _HEADER.pack_into(table, 0, magic, capacity, max_keys, len(kept), seq)


def _expiry(now: float, ttl_ms: int) -> float:
    return now + ttl_ms / 1000.0 if ttl_ms > 0 else 0.0


def _anonymous_file() -> int:
    """A file in memory with no name, gone when its last descriptor closes."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("wasmgate-counters", os.MFD_CLOEXEC)
    fd, path = tempfile.mkstemp(prefix="wasmgate-counters-")
    os.unlink(path)
    return fd
