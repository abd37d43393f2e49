# -*- test-case-name: tests.test_wasm_engine -*-
"""
One wasmtime engine for the process: epoch ticker and compiled-module cache.

Timeouts use epoch interruption: a daemon thread bumps the engine's epoch
every C{tick_ms}, and each call sets a deadline a number of ticks ahead.
The ticker bumps the epoch once per wake-up and never catches up after a
late one (the thread needs the GIL): a deadline is set relative to the
current epoch, so a burst of catch-up ticks would fire it early and kill a
call that was within its budget. A late tick can only make a timeout
longer, never shorter; filters measure their CPU time on each tick anyway.

Fuel is an engine-level switch (C{fuel=False} by default): measured with
wasmtime 50, C{consume_fuel} leaves the per-call cost unchanged (0.56 us)
but doubles the run time of guest code (a 1e7-iteration loop: 2.5 ms ->
4.8 ms), so it is only turned on when some plugin asks for a fuel limit.
"""
from __future__ import annotations

import hashlib
import os
import platform
import threading
from typing import Optional

import wasmtime

from wasmgate._files import write_atomically
from wasmgate.wasm import _raw


def _wasmtime_version() -> str:
    try:
        from importlib.metadata import version

        return version("wasmtime")
    except Exception:  # pragma: no cover - unusual installs
        return getattr(wasmtime, "__version__", "unknown")


_CACHE_MAGIC = b"WGCM1\n"

TABLE_ELEMENT_BYTES = 8
"""What wasmtime stores per table element (see C{Store.set_limits})."""

MAX_TABLES = 4
"""Tables a filter store may create (real guests define one, or none)."""

MIN_TABLE_ELEMENTS = 10_000
"""Elements any table may hold, however small the memory cap."""


class WasmEngine:
    """
    The shared C{wasmtime.Engine}, its epoch ticker and module cache.

    @ivar engine: the C{wasmtime.Engine}.
    @ivar path: the call path (L{_raw.RawPath} or L{_raw.CheckedPath})
        chosen by the start-up self-check.
    @ivar path_note: why the raw path is not used (empty when it is).
    @ivar compiles: modules compiled from wasm bytes so far.
    @ivar deserializes: modules loaded from the on-disk cache so far.
    @ivar cache_errors: unusable cache files met (and replaced).
    """

    def __init__(
        self,
        *,
        tick_ms: float = 1.0,
        cache_dir: Optional[str] = None,
        fuel: bool = False,
        raw_calls: bool = True,
    ) -> None:
        if not tick_ms > 0:
            raise ValueError("tick_ms must be positive")
        self.tick_ms = float(tick_ms)
        self.cache_dir = cache_dir
        self.fuel = fuel
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.consume_fuel = fuel
        self.engine = wasmtime.Engine(config)
        self.path, self.path_note = _raw.select(self.engine, with_fuel=fuel, prefer_raw=raw_calls)
        self.compiles = 0
        self.deserializes = 0
        self.cache_errors = 0
        self._modules: dict[str, wasmtime.Module] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.config_tag = "wasmtime%s-%s-epoch-fuel%d" % (
            _wasmtime_version(),
            platform.machine(),
            int(fuel),
        )

    # -- epoch ticker ----------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start the ticker thread (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            self._stop = threading.Event()
            t = threading.Thread(
                target=self._tick, args=(self._stop,), name="wasmgate-epoch", daemon=True
            )
            self._thread = t
        t.start()

    def stop(self) -> None:
        """Stop the ticker and wait for it (idempotent)."""
        with self._lock:
            t, self._thread = self._thread, None
            self._stop.set()
        if t is not None:
            t.join()

    def _tick(self, stop: threading.Event) -> None:
        interval = self.tick_ms / 1000.0
        increment = self.engine.increment_epoch
        while not stop.wait(interval):
            increment()

    def deadline_ticks(self, timeout_ms: float) -> int:
        """Epoch ticks to allow for C{timeout_ms} (one extra for the tick in progress)."""
        return max(1, -int(-timeout_ms // self.tick_ms)) + 1

    # -- modules ----------------------------------------------------------

    def compile(self, wasm_bytes: bytes) -> wasmtime.Module:
        """
        A compiled module for C{wasm_bytes}, from memory, disk or wasmtime.

        Raises C{wasmtime.WasmtimeError} for bytes that are not a valid
        module. A cache file that is unreadable, corrupt or from another
        wasmtime version is ignored and replaced.
        """
        if isinstance(wasm_bytes, str):
            raise TypeError("compile() takes wasm bytes")
        digest = hashlib.sha256(wasm_bytes).hexdigest()
        with self._lock:
            module = self._modules.get(digest)
        if module is not None:
            return module
        module = self._load_cached(digest)
        if module is None:
            module = wasmtime.Module(self.engine, bytes(wasm_bytes))
            with self._lock:
                self.compiles += 1
            self._store_cached(digest, module)
        with self._lock:
            return self._modules.setdefault(digest, module)

    def forget(self, wasm_bytes: bytes) -> None:
        """Drop a module from the in-memory cache (e.g. after a reload)."""
        self.forget_digest(hashlib.sha256(wasm_bytes).hexdigest())

    def forget_digest(self, digest: str) -> None:
        """
        Drop the module compiled from bytes with sha256 C{digest} from the
        in-memory cache. Filters built from it keep working (they hold the
        module); the cache just stops keeping it alive for later compiles.
        """
        with self._lock:
            self._modules.pop(digest, None)

    def cached_digests(self) -> frozenset[str]:
        """The sha256 digests of the modules held in memory."""
        with self._lock:
            return frozenset(self._modules)

    def store_limits(self, memory_size: int) -> dict[str, int]:
        """
        Keyword arguments for C{Store.set_limits} capping one filter store
        at C{memory_size} bytes of linear memory.

        Without them a guest can allocate around the memory cap: wasmtime
        bounds each memory separately (so more memories would multiply it)
        and leaves tables unbounded (C{table.grow} of millions of 8-byte
        elements). A store holds one instance with one memory; its tables
        get at most C{memory_size} bytes of elements between them, though
        each may always hold L{MIN_TABLE_ELEMENTS}: far above the function
        tables of real AssemblyScript, TinyGo or Rust guests.
        """
        per_table = max(MIN_TABLE_ELEMENTS, memory_size // (TABLE_ELEMENT_BYTES * MAX_TABLES))
        return {
            "memory_size": memory_size,
            "table_elements": per_table,
            "instances": 1,
            "tables": MAX_TABLES,
            "memories": 1,
        }

    def cache_path(self, digest: str) -> Optional[str]:
        if self.cache_dir is None:
            return None
        return os.path.join(self.cache_dir, "%s-%s.cwasm" % (digest, self.config_tag))

    def _load_cached(self, digest: str) -> Optional[wasmtime.Module]:
        path = self.cache_path(digest)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            self.cache_errors += 1
            return None
        # Serialized modules are trusted native code: never hand wasmtime
        # bytes that are not exactly what we wrote.
        head = len(_CACHE_MAGIC)
        if (
            len(blob) < head + 32
            or blob[:head] != _CACHE_MAGIC
            or hashlib.sha256(blob[head + 32 :]).digest() != blob[head : head + 32]
        ):
            self.cache_errors += 1
            return None
        try:
            module = wasmtime.Module.deserialize(self.engine, blob[head + 32 :])
        except Exception:
            self.cache_errors += 1
            return None
        with self._lock:
            self.deserializes += 1
        return module

    def _store_cached(self, digest: str, module: wasmtime.Module) -> None:
        path = self.cache_path(digest)
        if path is None:
            return
        try:
            payload = bytes(module.serialize())
            write_atomically(path, _CACHE_MAGIC + hashlib.sha256(payload).digest() + payload)
        except OSError:
            # A read-only or full cache directory only costs a recompile.
            self.cache_errors += 1

    def __repr__(self) -> str:
        return "<WasmEngine path=%s fuel=%s tick_ms=%s>" % (self.path.name, self.fuel, self.tick_ms)
