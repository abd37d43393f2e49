# -*- test-case-name: tests.test_wasm_filter -*-
"""
One instance of a filter: its C{Store}, the guest instance in it, the
deadline of the call in progress, how it is built and what a trap in it
means (L{InstanceContext.classify}).

wasmtime stores are not thread-safe: an instance is used by one thread at
a time (its C{lock}), and L{wasmgate.wasm._pool} decides which.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence

import wasmtime

from wasmgate.state import StateError
from wasmgate.wasm import _raw
from wasmgate.wasm.failures import BadOutput, GuestError, InitRefused, OverMemoryCap, PluginLoadError
from wasmgate.wasm.hostfuncs import HostFunc, LogCapture

if TYPE_CHECKING:
    from wasmgate.wasm.filter import WasmFilter

INIT_TIMEOUT_MS = 1000
"""The deadline of an instance's start-up code, when above C{timeout_ms}."""

_UNLIMITED_FUEL = 1 << 62


class InstanceContext:
    """One thread's store + instance of one filter."""

    def __init__(self, filt: "WasmFilter", store: wasmtime.Store) -> None:
        self.filter = filt
        self.store = store
        self.path = filt.engine.path
        self.cell = _raw.MemoryCell()
        self.instance: Optional[wasmtime.Instance] = None
        self.exports: Any = None
        self.memory: Optional[wasmtime.Memory] = None
        self.host_funcs: list[wasmtime.Func] = []
        self.host_error: Optional[BaseException] = None
        self.abi_state: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.thread = threading.current_thread()
        self.pooled = False
        """Checked out per request (not owned by C{thread})."""
        self.dead = False
        self.mem_size = 0
        self.extra_memories: tuple[wasmtime.Memory, ...] = ()
        """Memories of the ABI's own modules in this store (counted against the cap)."""
        self._callers: dict[str, Any] = {}
        # The deadline of the call in progress (see start_clock).
        self.cpu_start = 0.0
        self.wall_start = 0.0
        self.limit = 0.0
        self.deadline_hit = False

    def start_clock(self, limit: float) -> None:
        """
        A call with C{limit} seconds of this thread's CPU time starts now.

        Deadlines are CPU time, not wall time: on a busy gateway a filter
        thread waits for the GIL (inside host calls too), and that wait is
        no fault of the guest. A wall-clock cap of ten times the limit still
        bounds a call that mostly waits.
        """
        self.cpu_start = time.thread_time()
        self.wall_start = time.monotonic()
        self.limit = limit
        self.deadline_hit = False

    def on_deadline(self) -> Optional[int]:
        """The epoch deadline passed: ticks to go on for, or None to stop."""
        used = time.thread_time() - self.cpu_start
        if used >= self.limit or time.monotonic() - self.wall_start >= 10 * self.limit:
            self.deadline_hit = True
            return None
        return self.filter.engine.deadline_ticks((self.limit - used) * 1000)

    def record_host_error(self, exc: BaseException) -> None:
        if self.host_error is None:
            self.host_error = exc

    def export(self, name: str) -> Any:
        return self.exports.get(name) if self.exports is not None else None

    def caller(self, name: str, params: Sequence[str], results: Sequence[str]) -> Any:
        """A fast callable for export C{name} (cached per instance)."""
        c = self._callers.get(name)
        if c is None:
            c = self._callers[name] = self.path.export_caller(
                self.store, self.exports[name], params, results
            )
        return c

    def span(self) -> tuple[int, int]:
        """The memory's current base address and size (never cache these)."""
        base, size = self.path.memory_span(self.store, self.memory)
        self.mem_size = size
        return base, size

    def total_memory(self) -> int:
        """The guest's memory and the ABI's own, in bytes, right now."""
        total = self.span()[1]
        for mem in self.extra_memories:
            total += self.path.memory_span(self.store, mem)[1]
        self.mem_size = total
        return total

    def classify(self, trap: _raw.GuestTrap) -> tuple[str, str]:
        """The failure kind and message of C{trap} in this instance."""
        filt = self.filter
        host_error, self.host_error = self.host_error, None
        if host_error is not None:
            if isinstance(host_error, StateError):
                return "state", str(host_error)
            if isinstance(host_error, OverMemoryCap):
                return "oom", "hit its memory limit of %d MiB (%s)" % (
                    filt.memory_limit // (1024 * 1024),
                    host_error,
                )
            return "trap", "host function failed: %s" % (host_error,)
        code = trap.code
        if code is wasmtime.TrapCode.INTERRUPT or self.deadline_hit:
            self.deadline_hit = False
            return "timeout", "exceeded its %g ms time limit" % (filt.timeout_ms,)
        if code is wasmtime.TrapCode.OUT_OF_FUEL:
            return "timeout", "ran out of fuel (%d)" % (filt.fuel or 0,)
        if code is wasmtime.TrapCode.ALLOCATION_TOO_LARGE or self._near_memory_cap():
            return "oom", "hit its memory limit of %d MiB (%s)" % (
                filt.memory_limit // (1024 * 1024),
                _first_line(trap),
            )
        return "trap", _first_line(trap)

    def _near_memory_cap(self) -> bool:
        # wasmtime's store limiter makes memory.grow return -1 without a
        # trace; a trap with memory this close to the cap is counted as oom.
        memory_limit = self.filter.memory_limit
        try:
            size = self.total_memory()
        except Exception:
            return False
        return size + max(65536, memory_limit // 16) > memory_limit

    def dispose(self) -> None:
        if self.dead:
            return
        self.dead = True
        self._callers.clear()
        self.exports = self.instance = self.memory = None
        self.cell.memory = None
        self.extra_memories = ()
        store, self.store = self.store, None
        if store is not None:
            store.close()
        # The thunks may go only after the store that points at them.
        self.host_funcs = []
        self.mem_size = 0


def build_instance(
    filt: "WasmFilter",
    hosts: dict[tuple[str, str], HostFunc],
    log_capture: LogCapture,
    *,
    init_ticks: int,
    extra_instances: int,
) -> InstanceContext:
    """
    A fresh instance of C{filt} on this thread, its start-up code run;
    L{PluginLoadError} if impossible. C{hosts} satisfy the module's imports
    (those the ABI does not link itself); what the guest logs while it
    starts is caught by C{log_capture} and put into the error.
    """
    store = wasmtime.Store(filt.engine.engine)
    limits = filt.engine.store_limits(filt.memory_limit)
    if extra_instances:
        limits["instances"] += extra_instances
        limits["memories"] += extra_instances
    store.set_limits(**limits)
    if filt.engine.fuel:
        store.set_fuel(filt.fuel if filt.fuel is not None else _UNLIMITED_FUEL)
    store.set_epoch_deadline(init_ticks)
    ctx = InstanceContext(filt, store)
    ctx.path.on_epoch_deadline(store, ctx.on_deadline)
    ctx.start_clock(max(filt.timeout_ms, INIT_TIMEOUT_MS) / 1000)
    try:
        link = getattr(filt.abi, "link", None)
        linked: dict[tuple[str, str], Any] = link(ctx) if link is not None else {}
        externs: list[Any] = []
        for imp in filt.module.imports:
            key = (imp.module, imp.name)
            ext = linked.get(key)
            if ext is None:
                spec = hosts[key]
                ext = ctx.path.host_func(
                    store, spec.params, spec.results, spec.make(ctx), ctx.cell, ctx.record_host_error
                )
                ctx.host_funcs.append(ext)
            externs.append(ext)
        try:
            with log_capture.capturing() as logged:
                ctx.instance = wasmtime.Instance(store, filt.module, externs)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as e:
            raise PluginLoadError(
                filt.name, "cannot instantiate: %s%s" % (_first_line(e), _said(logged))
            )
        ctx.exports = ctx.instance.exports(store)
        memory = ctx.exports.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            raise PluginLoadError(filt.name, "module does not export its memory as 'memory'")
        ctx.memory = ctx.cell.memory = memory
        ctx.span()
        # What the guest logs while it starts goes into the load error:
        # a config refusal says why only there.
        with log_capture.capturing() as logged:
            try:
                filt.abi.setup(ctx)
            except InitRefused as e:
                raise PluginLoadError(filt.name, str(e) + _said(logged))
            except _raw.GuestTrap as e:
                kind, msg = ctx.classify(e)
                raise PluginLoadError(
                    filt.name, "initialisation failed (%s): %s%s" % (kind, msg, _said(logged))
                )
            except (BadOutput, GuestError, OverMemoryCap) as e:
                raise PluginLoadError(filt.name, "initialisation failed: %s%s" % (e, _said(logged)))
    except BaseException:
        ctx.dispose()
        raise
    return ctx


def _said(logged: Sequence[str]) -> str:
    """What the guest logged, as the end of an error message ("" if nothing)."""
    return (": " + "; ".join(logged)) if logged else ""


def _first_line(e: BaseException) -> str:
    """The useful line of a wasmtime message (its cause, not the backtrace header)."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Caused by:" in lines:
        rest = lines[lines.index("Caused by:") + 1 :]
        if rest:
            return rest[-1]
    return lines[0]
