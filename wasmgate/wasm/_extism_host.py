# -*- test-case-name: tests.test_abi_extism -*-
"""
The Python half of C{extism:host/env} (L{wasmgate.wasm.abi_extism}): the
plugin's vars, its config as strings, and reading, taking and making
kernel memory blocks from a host function.
"""
from __future__ import annotations

import json
import threading
from typing import Optional

from wasmgate.wasm import _raw
from wasmgate.wasm.failures import OverMemoryCap
from wasmgate.wasm.hostfuncs import GuestFault
from wasmgate.wasm.instance import InstanceContext

MAX_VAR_BYTES = 1024 * 1024
"""Keys and values of one plugin's vars, together (Extism's default)."""

LOG_LEVEL_INFO = 2
"""What C{get_log_level} answers: Extism's trace=0 debug=1 info=2 warn=3 error=4."""

_U64 = 0xFFFFFFFFFFFFFFFF


_VAR_OVERHEAD = 48
"""What Extism counts per var on top of its key and value (a String and a Vec)."""


class VarStore:
    """
    One plugin's vars: bytes to bytes, bounded, shared by its instances.
    The bound is counted as Extism counts it: every var's key, value and
    L{_VAR_OVERHEAD}, plus the one being set (even when it replaces one).
    """

    def __init__(self, max_bytes: int = MAX_VAR_BYTES) -> None:
        self.max_bytes = max_bytes
        self._vars: dict[bytes, bytes] = {}
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: bytes) -> Optional[bytes]:
        return self._vars.get(key)

    def check(self, key: bytes, value_length: int) -> None:
        """L{GuestFault} if setting C{key} to that many bytes would pass the bound."""
        if self._size + _VAR_OVERHEAD + len(key) + value_length > self.max_bytes:
            raise GuestFault("Variable store is full (%d bytes of vars at most)" % (self.max_bytes,))

    def set(self, key: bytes, value: Optional[bytes]) -> None:
        """Set (or with C{None} remove) C{key}; L{GuestFault} past the bound."""
        with self._lock:
            if value is not None:
                self.check(key, len(value))
            old = self._vars.pop(key, None)
            if old is not None:
                self._size -= _VAR_OVERHEAD + len(key) + len(old)
            if value is not None:
                self._vars[key] = value
                self._size += _VAR_OVERHEAD + len(key) + len(value)

    def __len__(self) -> int:
        return len(self._vars)


def config_strings(config: dict) -> dict[bytes, bytes]:
    """Extism config values are strings: others as JSON text (C{5}, C{true}, ...)."""
    out = {}
    for key, value in config.items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
        out[str(key).encode("utf-8")] = text.encode("utf-8")
    return out


def kernel_provided(ctx: InstanceContext) -> _raw.HostFn:
    raise RuntimeError("provided by the Extism kernel, never by a host function")


def log_level(base: int, size: int) -> int:
    return LOG_LEVEL_INFO


def no_network(base: int, size: int, *args: int) -> int:
    raise GuestFault("Extism HTTP requests are refused: wasmgate filters have no network access")


def block(ctx: InstanceContext, offset: int, what: str, limit: Optional[int] = None) -> bytes:
    """The bytes of the kernel block at C{offset}; L{GuestFault} when it is none."""
    st = ctx.abi_state
    n = st["length"](offset) & _U64
    if not n:
        raise GuestFault("invalid handle offset for %s: %d" % (what, offset & _U64))
    if limit is not None:
        n = min(n, limit)
    kbase, ksize = ctx.path.memory_span(ctx.store, st["kmem"])
    try:
        return _raw.read(kbase, ksize, offset, n)
    except IndexError as e:
        raise GuestFault(str(e)) from None


def take_block(ctx: InstanceContext, offset: int, what: str, limit: Optional[int] = None) -> bytes:
    """L{_block}, then the block is freed (the host owns it now)."""
    data = block(ctx, offset, what, limit)
    ctx.abi_state["free"](offset)
    return data


def new_block(ctx: InstanceContext, data: bytes) -> int:
    """A new kernel block holding C{data}; its offset (0 for no data)."""
    if not data:
        return 0
    st = ctx.abi_state
    offset = st["alloc"](len(data)) & _U64
    if not offset:
        raise OverMemoryCap("the kernel's memory cannot hold %d more bytes" % (len(data),))
    kbase, ksize = ctx.path.memory_span(ctx.store, st["kmem"])
    _raw.write(kbase, ksize, offset, data)
    return offset
