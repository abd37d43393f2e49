# -*- test-case-name: tests.test_wasm_engine -*-
"""
The call path on wasmtime-py's public API (L{CheckedPath}: slower, always
available), and what both call paths share: L{GuestTrap}, L{MemoryCell},
C{"i32"}/C{"i64"} function types and bounds-checked guest memory access
(L{read}, L{write}).

The fast path on wasmtime's private API, and the start-up probe that picks
a path, are in L{wasmgate.wasm._raw}, which is where callers import all of
this from.
"""
from __future__ import annotations

import ctypes
from ctypes import c_size_t, c_void_p
from typing import Any, Callable, Optional, Sequence

import wasmtime
from wasmtime import TrapCode

HostFn = Callable[..., Optional[int]]
"""C{fn(base, size, *args) -> int | None}: a host function's Python side."""


class GuestTrap(Exception):
    """
    A call into the guest did not return normally.

    @ivar code: the wasmtime L{TrapCode} (C{INTERRUPT} for an epoch
        deadline, C{OUT_OF_FUEL}, C{UNREACHABLE}, ...) or C{None} when the
        trap came from a host function or wasmtime did not give one.
    """

    def __init__(self, code: Optional[TrapCode], message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def trap_to_exception(trap: wasmtime.Trap) -> GuestTrap:
    try:
        code = trap.trap_code
    except Exception:  # an unknown code from a newer wasmtime
        code = None
    return GuestTrap(code, trap.message)


def error_to_exception(error: BaseException) -> GuestTrap:
    if isinstance(error, wasmtime.Trap):
        return trap_to_exception(error)
    return GuestTrap(None, str(error))


VALTYPES = {"i32": wasmtime.ValType.i32, "i64": wasmtime.ValType.i64}


def func_type(params: Sequence[str], results: Sequence[str]) -> wasmtime.FuncType:
    """A C{FuncType} from C{"i32"}/C{"i64"} names."""
    return wasmtime.FuncType(
        [VALTYPES[p]() for p in params], [VALTYPES[r]() for r in results]
    )


class MemoryCell:
    """
    Where a host function finds its instance's memory.

    Imports are created before the instance exists, so host functions get
    this cell and the instance's C{memory} export is put into it after
    instantiation. Until then (start-up code: a C{(start ...)} section, or
    C{_start} run while instantiating) a host function sees the memory its
    caller exports as C{memory}, looked up through the caller.
    """

    def __init__(self) -> None:
        self.memory: Optional[wasmtime.Memory] = None


def host_error_trap_message(exc: BaseException) -> str:
    return "wasmgate host function failed: %s" % (type(exc).__name__,)


class CheckedPath:
    """The public wasmtime-py API: slower, always available."""

    raw = False
    name = "checked"

    @staticmethod
    def on_epoch_deadline(store: wasmtime.Store, decide: Callable[[], Optional[int]]) -> bool:
        return False  # the public API has no deadline callback: deadlines stay wall-clock

    @staticmethod
    def set_epoch_deadline(store: wasmtime.Store, ticks: int) -> None:
        store.set_epoch_deadline(ticks)

    def export_caller(
        self,
        store: wasmtime.Store,
        func: wasmtime.Func,
        params: Sequence[str],
        results: Sequence[str],
    ) -> Callable[..., Optional[int]]:
        def call(*args: int) -> Optional[int]:
            try:
                return func(store, *args)  # type: ignore[no-any-return]
            except GuestTrap:
                raise
            except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
                raise error_to_exception(e) from None
            except Exception as e:
                # wasmtime-py re-raises a host function's exception here
                # (through a process-global slot); our own on_error already
                # recorded it, so this is just "the guest was trapped".
                raise GuestTrap(None, host_error_trap_message(e)) from None

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
        def trampoline(caller: Any, *args: int) -> Optional[int]:
            mem = cell.memory
            if mem is None:  # start-up: the caller's own export
                found = caller.get("memory")
                mem = found if isinstance(found, wasmtime.Memory) else None
            if mem is not None:
                base = ctypes.addressof(mem.data_ptr(caller).contents)
                size = mem.data_len(caller)
            else:
                base = size = 0
            try:
                return fn(base, size, *args)
            except BaseException as e:
                on_error(e)
                raise

        return wasmtime.Func(
            store, func_type(params, results), trampoline, access_caller=True
        )

    def memory_span(self, store: wasmtime.Store, memory: wasmtime.Memory) -> tuple[int, int]:
        return ctypes.addressof(memory.data_ptr(store).contents), memory.data_len(store)

    def memory_spanner(self, store: wasmtime.Store, memory: wasmtime.Memory) -> Callable[[], tuple[int, int]]:
        return lambda: self.memory_span(store, memory)


def read(base: int, size: int, ptr: int, length: int) -> bytes:
    """Copy C{length} bytes at guest address C{ptr}, bounds-checked."""
    ptr &= 0xFFFFFFFF
    length &= 0xFFFFFFFF
    if ptr + length > size:
        raise IndexError("guest range %d+%d outside memory of %d bytes" % (ptr, length, size))
    return ctypes.string_at(base + ptr, length) if length else b""


def write(base: int, size: int, ptr: int, data: bytes) -> None:
    """Copy C{data} to guest address C{ptr}, bounds-checked."""
    ptr &= 0xFFFFFFFF
    if ptr + len(data) > size:
        raise IndexError("guest range %d+%d outside memory of %d bytes" % (ptr, len(data), size))
    if data:
        _memmove(base + ptr, data, len(data))


# ctypes.memmove lets go of the GIL (see _raw.RawPath): this one keeps it.
_memmove = ctypes.PYFUNCTYPE(c_void_p, c_void_p, ctypes.c_char_p, c_size_t)(ctypes._memmove_addr)  # type: ignore[attr-defined]
