# -*- test-case-name: tests.test_wasm_engine -*-
"""
The hot path between Python and wasm, in one small place.

wasmtime-py's checked API costs 13-18 us per call and 11-15 us per host
callback (type lookups and C{Val} boxing). A filter call is a handful of
those, so the gateway goes through wasmtime's C "unchecked" entry points
instead: C{wasmtime_func_call_unchecked} with a preallocated
C{wasmtime_val_raw} array, C{wasmtime_func_new_unchecked} for host
functions, and guest memory read and written with ctypes on the memory's
base address (fetched afresh for every call, since memory may move when it
grows).

Those entry points live in C{wasmtime._bindings}, which is not public API.
L{select} therefore runs a small self-check against the engine it is given
and falls back to L{CheckedPath} (the public API) if anything is missing or
behaves differently. Both paths offer the same three operations:

  - C{export_caller(store, func, params, results)}: a Python callable that
    calls an exported function with ints and returns an int (or C{None});
    any trap is raised as L{GuestTrap}.
  - C{host_func(store, params, results, fn, cell, on_error)}: a
    C{wasmtime.Func} for the import list; C{fn(base, size, *args)} gets the
    caller's memory base address and length first. An exception from C{fn}
    is handed to C{on_error} and turned into a trap of the guest.
  - C{memory_span(store, memory)}: C{(base address, length)} right now.
  - C{memory_spanner(store, memory)}: a callable returning the same, with
    what it needs looked up once (for memories read on every call).

All values crossing are plain ints. Types are given as C{"i32"} / C{"i64"}.

This is the one module that touches wasmtime's private API. L{CheckedPath}
and what both paths share (L{GuestTrap}, L{MemoryCell}, L{read}, L{write})
are in L{wasmgate.wasm._checked}; import them from here.
"""
from __future__ import annotations

import ctypes
from ctypes import c_size_t, c_void_p
from typing import Any, Callable, Optional, Sequence

import wasmtime
from wasmtime import TrapCode

from wasmgate.wasm._checked import (
    VALTYPES,
    CheckedPath,
    GuestTrap,
    HostFn,
    MemoryCell,
    error_to_exception,
    func_type,
    host_error_trap_message,
    read,
    trap_to_exception,
    write,
)

try:  # the private bindings; their absence only disables the raw path
    from wasmtime import _ffi as _ffi
except ImportError:  # pragma: no cover - depends on the wasmtime build
    _ffi = None  # type: ignore[assignment]

__all__ = ["CheckedPath", "GuestTrap", "HostFn", "MemoryCell", "RawPath", "func_type", "read", "select", "write"]


class RawPath:
    """
    wasmtime's unchecked C entry points.

    Function pointers are re-declared here with plain C{c_void_p} arguments
    (so ctypes converts ints, its fastest case) instead of patching the
    shared prototypes in C{wasmtime._bindings}.
    """

    raw = True
    name = "raw"

    def __init__(self) -> None:
        if _ffi is None:
            raise RuntimeError("wasmtime._ffi is not importable")
        dll = _ffi.dll
        proto = ctypes.CFUNCTYPE
        # Guest code may run for up to its deadline: the call lets go of the
        # GIL so the reactor thread goes on meanwhile.
        self._call_unchecked = proto(c_void_p, c_void_p, c_void_p, c_void_p, c_size_t, c_void_p)(
            ("wasmtime_func_call_unchecked", dll)
        )
        self._func_new_unchecked = proto(None, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p)(
            ("wasmtime_func_new_unchecked", dll)
        )
        # Accessors that return at once keep the GIL (PYFUNCTYPE): letting go
        # of it for a few nanoseconds of C hands it to another thread and
        # costs a context switch to get it back, on every call.
        quick = ctypes.PYFUNCTYPE
        self._memory_data = quick(c_void_p, c_void_p, c_void_p)(("wasmtime_memory_data", dll))
        self._memory_data_size = quick(c_size_t, c_void_p, c_void_p)(("wasmtime_memory_data_size", dll))
        self._caller_context = quick(c_void_p, c_void_p)(("wasmtime_caller_context", dll))
        self._caller_export_get = quick(ctypes.c_bool, c_void_p, ctypes.c_char_p, c_size_t, c_void_p)(
            ("wasmtime_caller_export_get", dll)
        )
        self._extern_type = _ffi.wasmtime_extern_t
        self._extern_memory = _ffi.WASMTIME_EXTERN_MEMORY.value
        self._trap_new = quick(c_void_p, ctypes.c_char_p, c_size_t)(("wasmtime_trap_new", dll))
        self._set_deadline = quick(None, c_void_p, ctypes.c_uint64)(
            ("wasmtime_context_set_epoch_deadline", dll)
        )
        self._callback_type = proto(c_size_t, c_void_p, c_void_p, ctypes.POINTER(_ffi.wasmtime_val_raw), c_size_t)
        self._deadline_type = proto(
            c_void_p, c_void_p, c_void_p, ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint8)
        )
        self._set_deadline_callback = proto(None, c_void_p, self._deadline_type, c_void_p, c_void_p)(
            ("wasmtime_store_epoch_deadline_callback", dll)
        )
        self._error_new = quick(c_void_p, ctypes.c_char_p)(("wasmtime_error_new", dll))
        self._val_raw = _ffi.wasmtime_val_raw
        self._trap_ptr_type = ctypes.POINTER(_ffi.wasm_trap_t)
        self._error_ptr_type = ctypes.POINTER(_ffi.wasmtime_error_t)
        if ctypes.sizeof(self._val_raw) != 16:
            raise RuntimeError("unexpected wasmtime_val_raw size %d" % ctypes.sizeof(self._val_raw))

    @staticmethod
    def _context(store: wasmtime.Store) -> int:
        # A store's context pointer lives as long as the store: ask once.
        try:
            return store._wasmgate_context  # type: ignore[attr-defined, no-any-return]
        except AttributeError:
            ctx = store._wasmgate_context = ctypes.cast(store._context(), c_void_p).value  # type: ignore[attr-defined]
            return ctx  # type: ignore[no-any-return]

    def set_epoch_deadline(self, store: wasmtime.Store, ticks: int) -> None:
        self._set_deadline(self._context(store), ticks)

    def on_epoch_deadline(self, store: wasmtime.Store, decide: Callable[[], Optional[int]]) -> bool:
        """
        When the store's epoch deadline passes, ask C{decide()} (on the
        guest's thread): a number of ticks to go on for, or C{None} to stop
        the guest, which then fails like an interrupted one.
        """
        error_new = self._error_new

        def callback(context: int, data: int, delta: Any, kind: Any) -> Optional[int]:
            try:
                more = decide()
            except BaseException:  # never let an exception unwind into wasmtime
                more = None
            if more is None:
                return error_new(b"epoch deadline exceeded")  # type: ignore[no-any-return]
            delta[0] = max(1, int(more))
            kind[0] = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE
            return None

        c_callback = self._deadline_type(callback)
        store._wasmgate_deadline_callback = c_callback  # type: ignore[attr-defined]  # keep it alive
        self._set_deadline_callback(ctypes.cast(store.ptr(), c_void_p).value, c_callback, None, None)
        return True

    def _raise_from(self, err: Optional[int], trap: c_void_p) -> None:
        if trap.value:
            ptr = ctypes.cast(trap.value, self._trap_ptr_type)
            trap.value = None
            raise trap_to_exception(wasmtime.Trap._from_ptr(ptr))
        if err:
            error = wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, self._error_ptr_type))
            raise error_to_exception(error)

    def export_caller(
        self,
        store: wasmtime.Store,
        func: wasmtime.Func,
        params: Sequence[str],
        results: Sequence[str],
    ) -> Callable[..., Optional[int]]:
        ctx = self._context(store)
        n = max(len(params), len(results), 1)
        vals = (self._val_raw * n)()
        vals_addr = ctypes.addressof(vals)
        fstruct = func._func
        func_addr = ctypes.addressof(fstruct)
        trap = c_void_p()
        trap_addr = ctypes.addressof(trap)
        call_unchecked = self._call_unchecked
        raise_from = self._raise_from
        setters = [_setter(vals, i, t) for i, t in enumerate(params)]
        result = results[0] if results else None

        # Specialised shapes for the ABI's calls: (i32) -> i32 and
        # (i32, i32) -> i64 / i32. The generic one handles the rest.
        if list(params) == ["i32", "i32"] and result is not None:
            v0, v1 = vals[0], vals[1]
            if result == "i64":

                def call2(a: int, b: int) -> Optional[int]:
                    v0.i32 = a
                    v1.i32 = b
                    err = call_unchecked(ctx, func_addr, vals_addr, n, trap_addr)
                    if err or trap.value:
                        raise_from(err, trap)
                    return v0.i64  # type: ignore[no-any-return]

            else:

                def call2(a: int, b: int) -> Optional[int]:
                    v0.i32 = a
                    v1.i32 = b
                    err = call_unchecked(ctx, func_addr, vals_addr, n, trap_addr)
                    if err or trap.value:
                        raise_from(err, trap)
                    return v0.i32  # type: ignore[no-any-return]

            call2._keep = (vals, fstruct, trap, func)  # type: ignore[attr-defined]
            return call2

        if not params and result is not None:

            def call0() -> Optional[int]:
                err = call_unchecked(ctx, func_addr, vals_addr, n, trap_addr)
                if err or trap.value:
                    raise_from(err, trap)
                return getattr(v0, result)  # type: ignore[no-any-return]

            v0 = vals[0]
            call0._keep = (vals, fstruct, trap, func)  # type: ignore[attr-defined]
            return call0

        if list(params) == ["i64"] and result == "i64":

            def call1(a: int) -> Optional[int]:
                v0.i64 = a
                err = call_unchecked(ctx, func_addr, vals_addr, n, trap_addr)
                if err or trap.value:
                    raise_from(err, trap)
                return v0.i64  # type: ignore[no-any-return]

            v0 = vals[0]
            call1._keep = (vals, fstruct, trap, func)  # type: ignore[attr-defined]
            return call1

        def call(*args: int) -> Optional[int]:
            if len(args) != len(setters):
                raise TypeError("expected %d arguments, got %d" % (len(setters), len(args)))
            for set_, a in zip(setters, args):
                set_(a)
            err = call_unchecked(ctx, func_addr, vals_addr, n, trap_addr)
            if err or trap.value:
                raise_from(err, trap)
            if result is None:
                return None
            return getattr(vals[0], result)  # type: ignore[no-any-return]

        call._keep = (vals, fstruct, trap, func)  # type: ignore[attr-defined]
        return call

    def host_func(
        self,
        store: wasmtime.Store,
        params: Sequence[str],
        results: Sequence[str],
        fn: HostFn,
        cell: MemoryCell,
        on_error: Callable[[BaseException], None],
    ) -> wasmtime.Func:
        memory_data = self._memory_data
        memory_data_size = self._memory_data_size
        caller_context = self._caller_context
        caller_memory = self._caller_memory
        trap_new = self._trap_new
        params = tuple(params)
        result = results[0] if results else None
        holder: dict[str, Any] = {}

        read_args = _arg_reader(params)

        def callback(env: Any, caller: int, vals: Any, nvals: int) -> int:
            try:
                mem = cell.memory
                if mem is not None:
                    cctx = caller_context(caller)
                    if holder.get("mem") is not mem:
                        holder["mem"] = mem
                        holder["mref"] = ctypes.addressof(mem._memory)
                    mref = holder["mref"]
                    base = memory_data(cctx, mref) or 0
                    size = memory_data_size(cctx, mref)
                else:  # start-up: the caller's own export
                    base, size = caller_memory(caller)
                out = fn(base, size, *read_args(vals))
                if result is not None:
                    setattr(vals[0], result, out)
                return 0
            except BaseException as e:
                try:
                    on_error(e)
                except BaseException:
                    pass
                msg = host_error_trap_message(e).encode("utf-8")
                return trap_new(msg, len(msg)) or 0

        cb = self._callback_type(callback)
        ty = func_type(params, results)
        fstruct = _ffi.wasmtime_func_t()
        self._func_new_unchecked(
            self._context(store),
            ctypes.cast(ty.ptr(), c_void_p),
            ctypes.cast(cb, c_void_p),
            None,
            None,
            ctypes.addressof(fstruct),
        )
        func = wasmtime.Func._from_raw(fstruct)
        # The C side holds a bare pointer to the thunk: keep it alive as
        # long as the Func (and so the store that owns it) is referenced.
        func._wasmgate_keep = (cb, ty, callback)  # type: ignore[attr-defined]
        return func

    def _caller_memory(self, caller: int) -> tuple[int, int]:
        """C{(base, size)} of the memory the calling instance exports as C{memory} (0, 0 if none)."""
        ext = self._extern_type()
        if not self._caller_export_get(caller, b"memory", 6, ctypes.addressof(ext)):
            return 0, 0
        if ext.kind != self._extern_memory:
            return 0, 0
        cctx = self._caller_context(caller)
        mref = ctypes.addressof(ext.of.memory)
        return (self._memory_data(cctx, mref) or 0), self._memory_data_size(cctx, mref)

    def memory_span(self, store: wasmtime.Store, memory: wasmtime.Memory) -> tuple[int, int]:
        ctx = self._context(store)
        mref = ctypes.addressof(memory._memory)
        return (self._memory_data(ctx, mref) or 0), self._memory_data_size(ctx, mref)

    def memory_spanner(self, store: wasmtime.Store, memory: wasmtime.Memory) -> Callable[[], tuple[int, int]]:
        ctx = self._context(store)
        mref = ctypes.addressof(memory._memory)
        data, data_size = self._memory_data, self._memory_data_size

        def span() -> tuple[int, int]:
            return (data(ctx, mref) or 0), data_size(ctx, mref)

        span._keep = memory  # type: ignore[attr-defined]  # mref points into it
        return span


def _arg_reader(params: tuple[str, ...]) -> Callable[[Any], tuple[int, ...]]:
    """
    A function reading a host call's arguments out of the raw values,
    written out for its signature (a loop with C{getattr} per call costs
    a microsecond of every host call).
    """
    if any(t not in VALTYPES for t in params):
        raise ValueError("unsupported parameter types %r" % (params,))
    fields = ", ".join("vals[%d].%s" % (i, t) for i, t in enumerate(params))
    return eval("lambda vals: (%s%s)" % (fields, "," if len(params) == 1 else ""))  # noqa: S307


def _setter(vals: Any, i: int, t: str) -> Callable[[int], None]:
    v = vals[i]

    def set_(a: int) -> None:
        setattr(v, t, a)

    return set_



_PROBE_WAT = r"""
(module
  (import "probe" "add" (func $add (param i32 i64) (result i64)))
  (import "probe" "fail" (func $fail (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 8) "probe")
  (func $init (drop (call $add (i32.const 0) (i64.const 0))))
  (start $init)
  (func (export "run") (param i32 i32) (result i64)
    (call $add (local.get 0) (i64.extend_i32_u (local.get 1))))
  (func (export "boom") (param i32 i32) (result i32) unreachable)
  (func (export "neg") (param i64) (result i64) (i64.sub (i64.const 0) (local.get 0)))
  (func (export "seven") (result i32) (i32.const 7))
  (func (export "callfail") (param i32 i32) (result i32)
    (call $fail (local.get 0)) (i32.const 7))
)
"""


def _probe(path: Any, engine: wasmtime.Engine, with_fuel: bool) -> None:
    """Raise if C{path} does not behave as the checked API does."""
    store = wasmtime.Store(engine)
    if with_fuel:
        store.set_fuel(1_000_000)
    store.set_epoch_deadline(1 << 40)
    module = wasmtime.Module(engine, _PROBE_WAT)
    cell = MemoryCell()
    errors: list[BaseException] = []
    seen: list[bytes] = []

    def add(base: int, size: int, a: int, b: int) -> int:
        seen.append(read(base, size, 8, 5))
        return a + b

    def fail(base: int, size: int, a: int) -> None:
        raise KeyError(a)

    add_f = path.host_func(store, ["i32", "i64"], ["i64"], add, cell, errors.append)
    fail_f = path.host_func(store, ["i32"], [], fail, cell, errors.append)
    inst = wasmtime.Instance(store, module, [add_f, fail_f])
    if seen != [b"probe"]:  # the start function's call, before the cell is filled
        raise RuntimeError("host function saw no memory during start-up")
    seen.clear()
    exports = inst.exports(store)
    cell.memory = exports["memory"]
    run = path.export_caller(store, exports["run"], ["i32", "i32"], ["i64"])
    if run(40, 2) != 42 or seen != [b"probe"]:
        raise RuntimeError("raw call returned wrong values")
    if run(-1, 1) != 0:  # i32 -1 + 1 as i64
        raise RuntimeError("raw call mishandles signed values")
    base, size = path.memory_span(store, cell.memory)
    if size != 65536 or read(base, size, 8, 5) != b"probe":
        raise RuntimeError("memory base/size mismatch")
    if path.memory_spanner(store, cell.memory)() != (base, size):
        raise RuntimeError("memory spanner mismatch")
    neg = path.export_caller(store, exports["neg"], ["i64"], ["i64"])
    seven = path.export_caller(store, exports["seven"], [], ["i32"])
    if neg(5) != -5 or neg(-(1 << 62)) != 1 << 62 or seven() != 7:
        raise RuntimeError("raw call (i64) -> i64 or () -> i32 returned wrong values")
    boom = path.export_caller(store, exports["boom"], ["i32", "i32"], ["i32"])
    try:
        boom(0, 0)
    except GuestTrap as e:
        if e.code is not TrapCode.UNREACHABLE:
            raise RuntimeError("trap code not reported: %r" % (e.code,))
    else:
        raise RuntimeError("trap not reported")
    callfail = path.export_caller(store, exports["callfail"], ["i32", "i32"], ["i32"])
    try:
        callfail(5, 0)
    except GuestTrap:
        pass
    else:
        raise RuntimeError("host function error did not trap the guest")
    if len(errors) != 1 or not isinstance(errors[0], KeyError):
        raise RuntimeError("host function error not reported")
    # The instance is still usable after traps.
    if run(1, 2) != 3:
        raise RuntimeError("instance unusable after a trap")


def select(engine: wasmtime.Engine, *, with_fuel: bool, prefer_raw: bool = True) -> tuple[Any, str]:
    """
    The fastest call path that passes the self-check on C{engine}.

    @return: C{(path, why)}; C{why} says why the raw path is not used
        (empty when it is).
    """
    if prefer_raw:
        try:
            raw = RawPath()
            _probe(raw, engine, with_fuel)
            return raw, ""
        except Exception as e:
            why = "raw wasmtime path unavailable (%s: %s); using checked calls" % (type(e).__name__, e)
    else:
        why = "raw wasmtime path disabled"
    checked = CheckedPath()
    _probe(checked, engine, with_fuel)
    return checked, why
