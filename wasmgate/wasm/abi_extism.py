# -*- test-case-name: tests.test_abi_extism -*-
"""
The Extism plugin ABI: modules that import C{extism:host/env}, as every
Extism PDK (AssemblyScript, Rust, Go, JS, C, Zig, ...) builds them, run
unchanged (docs/extism.md).

Each instance's store holds two instances: our kernel
(L{wasmgate.wasm._extism_kernel}), whose exports satisfy the memory-block
imports (C{alloc}, C{load_u64}, C{input_load_u8}, C{output_set}, ...), and
the plugin. Python provides the rest: C{config_get} (the plugin's
C{config:} map, values as strings), C{var_get}/C{var_set}, C{log_*} and
C{get_log_level} (to the plugin's log, rate-limited), and C{http_request} /
C{http_status_code} / C{http_headers}, which trap: filters have no network.

A call: the kernel is reset and given the input (one kernel call, one
copy), the exported function (C{export:}, default C{handler}) runs, and the
host reads the output and error slots straight from kernel memory. What
the input and output mean is the seed gateway's contract
(L{wasmgate.wasm._extism_seed}). A function that returns non-zero or sets
an error fails the call with kind C{error} (the plugin's failure policy
applies; the instance is kept, as Extism keeps it).

Vars belong to the filter, not to an instance: every filter thread's
instance sees the same ones, as every call of one Extism plugin does (a
per-thread store would make a var-counting limiter N times as lenient).
They are bounded (L{wasmgate.wasm._extism_host.MAX_VAR_BYTES}, counted as Extism counts); a C{var_set} past
that traps, as Extism's does. They last until the plugin is reloaded.

Memory: the plugin's memory and the kernel's count together against
C{memory_limit_mb}. The kernel grows only into what the plugin's memory
leaves (the host tells it before each call); a call that ends with both
over the cap fails with kind C{oom} and the instance is rebuilt.
"""
from __future__ import annotations

import struct
from typing import Any, Callable, ClassVar, Optional, Union

import wasmtime
from twisted.logger import LogLevel

from wasmgate.wasm import _raw
from wasmgate.wasm._extism_kernel import (
    ERROR_OFFSET,
    EXTISM_NAMES,
    LIMIT,
    OUTPUT_OFFSET,
    kernel_wasm,
)
from wasmgate.wasm._extism_host import (
    VarStore,
    block,
    config_strings,
    kernel_provided,
    log_level,
    new_block,
    no_network,
    take_block,
)
from wasmgate.wasm._extism_seed import apply_action, encode_request
from wasmgate.wasm.abi import exports_of, func_sig
from wasmgate.wasm.failures import BadOutput, GuestError, OverMemoryCap, PluginLoadError
from wasmgate.wasm.hostfuncs import MAX_LOG_MESSAGE, HostFunc
from wasmgate.wasm.instance import InstanceContext
from wasmgate.wasm.messages import Answer, Continue, FilterRequest, FilterResponse
from wasmgate.wasm.wasi import WasiExit

MODULE = "extism:host/env"

_U64 = 0xFFFFFFFFFFFFFFFF
_I64, _I32 = "i64", "i32"
_KERNEL_SIGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "alloc": ((_I64,), (_I64,)),
    "free": ((_I64,), ()),
    "length": ((_I64,), (_I64,)),
    "length_unsafe": ((_I64,), (_I64,)),
    "load_u8": ((_I64,), (_I32,)),
    "load_u64": ((_I64,), (_I64,)),
    "store_u8": ((_I64, _I32), ()),
    "store_u64": ((_I64, _I64), ()),
    "input_length": ((), (_I64,)),
    "input_offset": ((), (_I64,)),
    "input_load_u8": ((_I64,), (_I32,)),
    "input_load_u64": ((_I64,), (_I64,)),
    "input_set": ((_I64, _I64), ()),
    "output_set": ((_I64, _I64), ()),
    "error_set": ((_I64,), ()),
    "error_get": ((), (_I64,)),
    "reset": ((), ()),
    "memory_bytes": ((), (_I64,)),
}
assert set(_KERNEL_SIGS) == set(EXTISM_NAMES)

_LOG_LEVELS = {
    "log_trace": None,  # below get_log_level: dropped
    "log_debug": None,
    "log_info": LogLevel.info,
    "log_warn": LogLevel.warn,
    "log_error": LogLevel.error,
}

_CALL_SIGS = (((), ("i32",)), ((), ()))
_HEADER = struct.Struct("<QQQ")
_LIMIT = struct.Struct("<Q")


class ExtismAbi:
    """The Extism plugin ABI (seed contract) for one filter."""

    name: ClassVar[str] = "extism"
    extra_instances: ClassVar[int] = 1
    """The kernel, in every instance's store."""

    @classmethod
    def detect(cls, module: wasmtime.Module) -> bool:
        return any(i.module == MODULE for i in module.imports)

    @classmethod
    def problems(cls, module: wasmtime.Module) -> list[str]:
        names = exports_of(module)
        if not isinstance(names.get("memory"), wasmtime.MemoryType):
            return ["missing export 'memory' (a linear memory)"]
        return []

    @classmethod
    def speaks_response(cls, module: wasmtime.Module) -> bool:
        return False

    @classmethod
    def used_functions(cls, module: wasmtime.Module) -> list[str]:
        """The C{extism:host/env} functions C{module} imports (for C{plugin inspect})."""
        return sorted({i.name for i in module.imports if i.module == MODULE})

    def __init__(self, filt: Any) -> None:
        self.filter = filt
        self.plugin = filt.name
        self.env = filt.host_env
        self.export: str = getattr(filt, "export", "handler")
        sig = func_sig(exports_of(filt.module).get(self.export))
        if sig is None:
            exported = sorted(n for n, t in exports_of(filt.module).items() if isinstance(t, wasmtime.FuncType))
            raise PluginLoadError(
                filt.name,
                "exports no function %r to call (set export: to one of: %s)"
                % (self.export, ", ".join(exported) or "none"),
            )
        if sig not in _CALL_SIGS:
            raise PluginLoadError(filt.name, "export %r must be () -> (i32) (an Extism function)" % (self.export,))
        self._returns = bool(sig[1])
        if getattr(filt, "config_bytes", None) is not None:
            raise PluginLoadError(
                filt.name,
                "Extism plugins read config: as a map of strings (config_get); "
                "config_raw/config_base64 are for guests that read raw bytes",
            )
        self.config = config_strings(filt.config)
        self.vars = VarStore()
        # Compiled per filter, not through the engine's module cache: that
        # cache holds the modules of live plugins only (reloads release them).
        self.kernel = wasmtime.Module(filt.engine.engine, kernel_wasm())

    # -- instance lifecycle ----------------------------------------------

    def link(self, ctx: InstanceContext) -> dict[tuple[str, str], Any]:
        """Instantiate the kernel into C{ctx}'s store; its exports for the plugin's imports."""
        store = ctx.store
        kernel = wasmtime.Instance(store, self.kernel, [])
        exports = kernel.exports(store)
        kmem = exports["memory"]
        ctx.extra_memories = (kmem,)
        path = ctx.path
        st = ctx.abi_state
        st["kmem"] = kmem
        st["kspan"] = path.memory_spanner(store, kmem)
        st["begin"] = path.export_caller(store, exports["wasmgate_begin"], (_I64,), (_I64,))
        st["alloc"] = path.export_caller(store, exports["alloc"], (_I64,), (_I64,))
        st["length"] = path.export_caller(store, exports["length"], (_I64,), (_I64,))
        st["free"] = path.export_caller(store, exports["free"], (_I64,), ())
        return {(MODULE, name): exports[name] for name in EXTISM_NAMES}

    def setup(self, ctx: InstanceContext) -> None:
        st = ctx.abi_state
        st["gspan"] = ctx.path.memory_spanner(ctx.store, ctx.memory)
        self._set_budget(ctx)
        if func_sig(exports_of(self.filter.module).get("_initialize")) == ((), ()):
            try:
                ctx.caller("_initialize", (), ())()
            except _raw.GuestTrap:
                exited = ctx.host_error
                if not (isinstance(exited, WasiExit) and exited.code == 0):
                    raise
                ctx.host_error = None
        st["call"] = ctx.caller(self.export, (), ("i32",) if self._returns else ())

    def _set_budget(self, ctx: InstanceContext) -> None:
        """Tell the kernel how far it may grow: what the plugin's memory leaves of the cap."""
        st = ctx.abi_state
        guest = st["guest"] = st["gspan"]()[1]
        kbase, ksize = st["kspan"]()
        _raw.write(kbase, ksize, LIMIT, _LIMIT.pack(max(0, self.filter.memory_limit - guest)))

    # -- calls ------------------------------------------------------------

    def call(self, ctx: InstanceContext, data: bytes) -> bytes:
        """
        One Extism call with input C{data}: its output.

        @raise GuestError: the function returned non-zero or set an error.
        @raise OverMemoryCap: the input does not fit, or the call ended with
            the plugin's and the kernel's memory over the cap.
        """
        st = ctx.abi_state
        kspan = st["kspan"]
        n = len(data)
        offset = st["begin"](n) & _U64
        if n:
            if offset == 0:
                raise OverMemoryCap("the input (%d bytes) does not fit in the kernel's memory" % (n,))
            kbase, ksize = kspan()
            _raw.write(kbase, ksize, offset, data)
        try:
            rc = st["call"]()
        except _raw.GuestTrap as e:
            # A PDK's abort sets the error before it traps: say it.
            said = self._error_text(ctx, self._error_offset(ctx))
            if said:
                raise _raw.GuestTrap(e.code, "%s (plugin error: %s)" % (e.message, said)) from None
            raise
        kbase, ksize = kspan()
        guest = st["gspan"]()[1]
        total = ctx.mem_size = guest + ksize
        if total > self.filter.memory_limit:
            raise OverMemoryCap("plugin and kernel memory hold %d bytes" % (total,))
        if guest != st["guest"]:  # the kernel's budget follows the plugin's memory
            self._set_budget(ctx)
        out_off, out_len, err_off = _HEADER.unpack(_raw.read(kbase, ksize, OUTPUT_OFFSET, 24))
        if err_off:
            raise GuestError("%s failed: %s" % (self.export, self._error_text(ctx, err_off)))
        if rc:
            raise GuestError("%s returned %d" % (self.export, rc & 0xFFFFFFFF))
        if not out_len:
            return b""
        try:
            return _raw.read(kbase, ksize, out_off, out_len)
        except IndexError:
            raise BadOutput("output range %d+%d is outside the kernel's memory" % (out_off, out_len)) from None

    @staticmethod
    def _error_offset(ctx: InstanceContext) -> int:
        kbase, ksize = ctx.path.memory_span(ctx.store, ctx.abi_state["kmem"])
        return int(_LIMIT.unpack(_raw.read(kbase, ksize, ERROR_OFFSET, 8))[0])

    def _error_text(self, ctx: InstanceContext, offset: int) -> str:
        if not offset:
            return ""
        n = ctx.abi_state["length"](offset) & _U64
        if not n:
            return "(error set to no valid memory block)"
        kbase, ksize = ctx.path.memory_span(ctx.store, ctx.abi_state["kmem"])
        return _raw.read(kbase, ksize, offset, min(n, 4096)).decode("utf-8", "replace")

    def handle_request(
        self,
        ctx: InstanceContext,
        req: FilterRequest,
        route_config: Optional[dict],
        payload: Optional[bytes] = None,
    ) -> Union[Answer, Continue]:
        include_body = self.filter.include_body
        output = self.call(ctx, encode_request(req, include_body))
        if not output:
            return Continue(req, changed=False)
        return apply_action(output, req, self.plugin, include_body)

    def handle_response(
        self,
        ctx: InstanceContext,
        req: FilterRequest,
        resp: FilterResponse,
        route_config: Optional[dict],
    ) -> FilterResponse:
        return resp

    # -- host functions ---------------------------------------------------

    def host_functions(self) -> dict[tuple[str, str], HostFunc]:
        table: dict[str, tuple[tuple[str, ...], tuple[str, ...], Callable[[InstanceContext], _raw.HostFn]]] = {
            "config_get": ((_I64,), (_I64,), self._config_get),
            "var_get": ((_I64,), (_I64,), self._var_get),
            "var_set": ((_I64, _I64), (), self._var_set),
            "get_log_level": ((), (_I32,), lambda ctx: log_level),
            "http_request": ((_I64, _I64), (_I64,), lambda ctx: no_network),
            "http_status_code": ((), (_I32,), lambda ctx: no_network),
            "http_headers": ((), (_I64,), lambda ctx: no_network),
        }
        for name, level in _LOG_LEVELS.items():
            table[name] = ((_I64,), (), self._logger(level))
        out = {(MODULE, name): HostFunc(p, r, make) for name, (p, r, make) in table.items()}
        for name, (params, results) in _KERNEL_SIGS.items():
            out[(MODULE, name)] = HostFunc(params, results, kernel_provided)
        return out

    # Each C{_x(ctx)} returns the host function for that instance.

    # As in Extism, these take ownership of the blocks they are given (keys,
    # values, log lines): they free them. A handle that is no live block
    # traps.

    def _config_get(self, ctx: InstanceContext) -> _raw.HostFn:
        def config_get(base: int, size: int, key: int) -> int:
            value = self.config.get(take_block(ctx, key, "config key"))
            return 0 if value is None else new_block(ctx, value)

        return config_get

    def _var_get(self, ctx: InstanceContext) -> _raw.HostFn:
        def var_get(base: int, size: int, key: int) -> int:
            value = self.vars.get(take_block(ctx, key, "var key"))
            return 0 if value is None else new_block(ctx, value)

        return var_get

    def _var_set(self, ctx: InstanceContext) -> _raw.HostFn:
        def var_set(base: int, size: int, key: int, value: int) -> None:
            name = block(ctx, key, "var key")
            if not value:
                self.vars.set(name, None)
                ctx.abi_state["free"](key)
                return
            data = block(ctx, value, "var value")
            self.vars.set(name, data)
            ctx.abi_state["free"](value)
            ctx.abi_state["free"](key)

        return var_set

    def _logger(self, level: Optional[LogLevel]) -> Callable[[InstanceContext], _raw.HostFn]:
        env = self.env

        def make(ctx: InstanceContext) -> _raw.HostFn:
            def log(base: int, size: int, offset: int) -> None:
                if level is None:  # below the log level: dropped (and freed)
                    ctx.abi_state["free"](offset)
                    return
                text = take_block(ctx, offset, "log message", limit=MAX_LOG_MESSAGE)
                env.log_text(level, text.decode("utf-8", "replace"))

            return log

        return make


ABI = ExtismAbi


