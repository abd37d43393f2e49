# -*- test-case-name: tests.test_wasm_filter -*-
"""
A loaded filter: one compiled module, its limits and per-thread instances.

wasmtime stores are not thread-safe, so every filter-pool thread gets its own
C{Store} + instance of each filter, built on first use from the shared
compiled module. An instance that trapped, timed out, ran out of memory or
whose host call failed is thrown away and rebuilt on next use (its memory
may be half-updated); one that merely returned bad output is kept.

Which ABI a module speaks is decided from its imports and exports (see
L{wasmgate.wasm.abi}); the JSON ABI is in L{wasmgate.wasm.abi_json}, the
http-wasm ABI plugs in as C{wasmgate.wasm.abi_httpwasm} exposing an C{ABI}
class.

An ABI whose class sets C{pins_instances = True} (http-wasm: guests keep a
request's state in globals from C{handle_request} to C{handle_response})
does not use per-thread instances: each request checks an instance out of
the filter's pool for its request phase and, when the ABI says the guest
wants its response phase, the request's L{Pins} hold it until
L{WasmFilter.run_response} or L{WasmFilter.abandon} (on whichever pool
thread; a Store is used by one thread at a time, never concurrently).

The failures (L{wasmgate.wasm.failures}), the ABI seam
(L{wasmgate.wasm.abi}), instances (L{wasmgate.wasm.instance}) and their
pool live in modules of their own; this one imports their public names
under their old home too.
"""
from __future__ import annotations

from typing import Any, Optional, Protocol, Union

import wasmtime
from twisted.logger import Logger

from wasmgate.state import CounterStore, StateError
from wasmgate.wasm import _raw
from wasmgate.wasm._pool import InstancePool, Pins
from wasmgate.wasm.abi import (
    FilterAbi,
    LinkingAbi,
    exports_of,
    func_sig,
    import_problems,
    known_abis,
    select_abi,
)
from wasmgate.wasm.engine import WasmEngine
from wasmgate.wasm.failures import (
    FAILURE_KINDS,
    BadOutput,
    FilterFailure,
    GuestError,
    InitRefused,
    OverMemoryCap,
    PluginLoadError,
)
from wasmgate.wasm.hostfuncs import GuestFault, HostEnv, LogCapture, TokenBucket, wasmgate_functions
from wasmgate.wasm.instance import INIT_TIMEOUT_MS, InstanceContext, build_instance
from wasmgate.wasm.messages import Answer, Continue, FilterRequest, FilterResponse
from wasmgate.wasm.wasi import wasi_functions

__all__ = [
    "FAILURE_KINDS",
    "INIT_TIMEOUT_MS",
    "BadOutput",
    "FilterAbi",
    "FilterFailure",
    "FilterObserver",
    "GuestError",
    "InitRefused",
    "InstanceContext",
    "LinkingAbi",
    "OverMemoryCap",
    "Pins",
    "PluginLoadError",
    "WasmFilter",
    "exports_of",
    "func_sig",
    "import_problems",
    "known_abis",
    "select_abi",
]


class FilterObserver(Protocol):
    """Metrics hook; called on the filter thread (durations come with the
    chain's decisions, on the reactor thread)."""

    def plugin_failed(self, plugin: str, kind: str) -> None: ...


class WasmFilter:
    """
    One plugin, ready to run in any filter-pool thread.

    C{run_request} / C{run_response} block and raise L{FilterFailure};
    L{wasmgate.wasm.chain.FilterChain} applies the failure policy.
    Constructing a filter validates the module by building a throwaway
    instance on the calling thread (raising L{PluginLoadError}) and starts
    the engine's epoch ticker if it is not running.
    """

    def __init__(
        self,
        *,
        name: str,
        module: wasmtime.Module,
        engine: WasmEngine,
        timeout_ms: float = 50,
        memory_limit_mb: float = 16,
        failure_policy: str = "closed",
        fuel: Optional[int] = None,
        config: Optional[dict] = None,
        include_body: bool = False,
        max_instances: int = 256,
        config_bytes: Optional[bytes] = None,
        export: str = "handler",
        state: Optional[CounterStore] = None,
        log: Optional[Logger] = None,
        observer: Optional[FilterObserver] = None,
    ) -> None:
        self.name = name
        self.module = module
        self.engine = engine
        self.timeout_ms = timeout_ms
        self.memory_limit = int(memory_limit_mb * 1024 * 1024)
        self.failure_policy = failure_policy
        self.fuel = fuel
        self.config = dict(config or {})
        self.config_bytes = config_bytes
        """The exact bytes a guest that reads raw config gets (C{config_raw:} /
        C{config_base64:}), instead of C{config} as JSON."""
        self.export = export
        """The function an Extism plugin's calls go to."""
        self.include_body = include_body
        self.state = state
        self.observer = observer
        self._log_capture = LogCapture(
            log if log is not None else Logger(namespace="wasmgate.plugin.%s" % (name,))
        )
        self.host_env = HostEnv(plugin=name, state=state, log=self._log_capture.logger)
        self.log = self.host_env.log
        self._failure_log = TokenBucket(rate=0.2, burst=3)
        self._pool = InstancePool(name, self._build, max_instances)
        self._local = self._pool.local
        self._instance = self._pool.thread_instance
        """This thread's instance (built on first use)."""
        self.pins_instances = False
        self._ticks = engine.deadline_ticks(timeout_ms)
        # Start-up code (wasmgate_init, _start) parses config and allocates
        # once per instance: it gets a longer, still bounded, deadline.
        self._init_ticks = engine.deadline_ticks(max(timeout_ms, INIT_TIMEOUT_MS))
        try:
            self._validate_settings()
            abi_class = select_abi(module)
            if abi_class is None:
                raise PluginLoadError(
                    name,
                    "speaks no known ABI (expected the wasmgate JSON ABI: exports memory, "
                    "wasmgate_alloc, handle_request; known: %s)" % ", ".join(known_abis()),
                )
            self.abi = abi_class(self)
            self.abi_name: str = abi_class.name
            self._extra_instances = int(getattr(abi_class, "extra_instances", 0))
            self.pins_instances = bool(getattr(abi_class, "pins_instances", False))
            self.has_response_filter: bool = bool(abi_class.speaks_response(module))
            self.response_by_default = True
            """False when the guest's C{wasmgate_wants_response} says its base
            config needs no response phase (route overrides still get one)."""
            problems = list(abi_class.problems(module))
            self._hosts = dict(wasmgate_functions(self.host_env))
            self._hosts.update(self.abi.host_functions())
            self._hosts.update(wasi_functions(self.host_env, module))
            problems += import_problems(module, self._hosts)
            if problems:
                raise PluginLoadError(name, "; ".join(problems))
            engine.start()
            ctx = self._build()
            ctx.dispose()
        except PluginLoadError:
            if observer is not None:
                observer.plugin_failed(name, "load")
            raise

    def _validate_settings(self) -> None:
        if self.failure_policy not in ("closed", "open"):
            raise PluginLoadError(self.name, "failure_policy must be 'closed' or 'open'")
        if not self.timeout_ms > 0:
            raise PluginLoadError(self.name, "timeout_ms must be positive")
        if self.memory_limit < 65536:
            raise PluginLoadError(self.name, "memory_limit_mb must allow at least one 64 KiB page")
        if self.fuel is not None:
            if self.fuel <= 0:
                raise PluginLoadError(self.name, "fuel must be positive")
            if not self.engine.fuel:
                raise PluginLoadError(
                    self.name, "a fuel limit needs the engine built with fuel=True"
                )

    # -- instances ---------------------------------------------------------

    @property
    def max_instances(self) -> int:
        return self._pool.max_instances

    def _build(self) -> InstanceContext:
        """A fresh instance on this thread; L{PluginLoadError} if impossible."""
        return build_instance(
            self,
            self._hosts,
            self._log_capture,
            init_ticks=self._init_ticks,
            extra_instances=self._extra_instances,
        )

    def instance_count(self) -> int:
        """Live instances (one per thread that has used this filter)."""
        return self._pool.count()

    def memory_bytes(self) -> int:
        """Linear memory held by all instances, as of their last call."""
        return self._pool.memory_bytes()

    def close(self) -> None:
        """Drop every instance; later calls fail with kind C{load}."""
        self._pool.close()

    @property
    def closed(self) -> bool:
        return self._pool.closed

    # -- calls -------------------------------------------------------------

    def run_request(
        self,
        req: FilterRequest,
        *,
        route_config: Optional[dict] = None,
        pins: Optional[Pins] = None,
        payload: Any = None,
    ) -> Union[Answer, Continue]:
        """
        Run the request phase on this thread (blocking). A pinning guest
        that wants its response phase stays with the request in C{pins}
        (without C{pins} it is told at once that the request ended).
        C{payload} is the chain's encoding of C{req}, for ABIs that use one.
        """
        if self.pins_instances:
            return self._run_pinned_request(req, route_config, pins)
        return self._run(self._instance, self.abi.handle_request, req, route_config, payload)  # type: ignore[no-any-return]

    def run_response(
        self,
        req: FilterRequest,
        resp: FilterResponse,
        *,
        route_config: Optional[dict] = None,
        pins: Optional[Pins] = None,
    ) -> FilterResponse:
        """
        Run the response phase on this thread (blocking).

        For a pinning ABI this runs on the instance C{pins} hold for this
        filter and then returns it to the pool; with none held (the guest
        answered, was skipped, or never ran) C{resp} is returned as is.
        """
        if not self.has_response_filter:
            return resp
        if self.pins_instances:
            ctx = pins.take(self) if pins is not None else None
            if ctx is None:
                return resp
            try:
                return self._run(  # type: ignore[no-any-return]
                    lambda: ctx, self.abi.handle_response, req, resp, route_config
                )
            finally:
                self._pool.checkin(ctx)
        return self._run(self._instance, self.abi.handle_response, req, resp, route_config)  # type: ignore[no-any-return]

    # -- instances pinned to a request (pins_instances ABIs) ---------------

    def abandon(self, req: FilterRequest, pins: Pins) -> bool:
        """
        End C{req}'s hold without a response phase (blocking; filter thread).

        The guest's C{handle_response} runs with C{is_error=1} so it can
        clean up, then the instance goes back to the pool. A failure there
        is counted and logged like any other (nothing is left to answer).
        Idempotent: C{False} when nothing was held for this filter.
        """
        ctx = pins.take(self)
        if ctx is None:
            return False
        try:
            self._run(lambda: ctx, self.abi.abandon, req)
        except FilterFailure:
            pass
        finally:
            self._pool.checkin(ctx)
        return True

    def _run_pinned_request(
        self, req: FilterRequest, route_config: Optional[dict], pins: Optional[Pins]
    ) -> Union[Answer, Continue]:
        held: list[InstanceContext] = []

        def acquire() -> InstanceContext:
            ctx = self._pool.checkout()
            held.append(ctx)
            return ctx

        try:
            result = self._run(acquire, self.abi.handle_request, req, route_config)
        except FilterFailure:
            if held:
                self._pool.checkin(held[0])
            raise
        ctx = held[0]
        if self.abi.wants_response(ctx):
            if pins is None:
                pins = Pins()
                pins.hold(self, ctx)
                self.abandon(req, pins)
            else:
                pins.hold(self, ctx)
        else:
            self._pool.checkin(ctx)
        return result  # type: ignore[no-any-return]

    def _drop_pinned(self, ctx: InstanceContext) -> None:
        """A request was dropped while holding C{ctx}: throw it away."""
        self._pool.drop_pinned(ctx)

    def pinned_count(self) -> int:
        """Instances requests hold right now (checked out of the pool)."""
        return self._pool.checked_out

    def _run(self, acquire: Any, method: Any, *args: Any) -> Any:
        try:
            ctx = acquire()
            with ctx.lock:
                if ctx.dead:
                    raise FilterFailure(self.name, "load", "filter is closed")
                ctx.start_clock(self.timeout_ms / 1000)
                ctx.path.set_epoch_deadline(ctx.store, self._ticks)
                if self.fuel is not None:
                    ctx.store.set_fuel(self.fuel)
                ctx.host_error = None
                try:
                    return method(ctx, *args)
                except BadOutput as e:
                    raise FilterFailure(self.name, "bad_output", str(e)) from None
                except GuestError as e:
                    raise FilterFailure(self.name, "error", str(e)) from None
                except OverMemoryCap as e:
                    failure = FilterFailure(self.name, "oom", str(e))
                except _raw.GuestTrap as e:
                    kind, msg = ctx.classify(e)
                    failure = FilterFailure(self.name, kind, msg)
                except (GuestFault, StateError) as e:  # raised outside a guest call
                    failure = FilterFailure(self.name, "state" if isinstance(e, StateError) else "trap", str(e))
                except Exception:
                    # A host-side bug: log it loudly, fail like a trap.
                    self.log.failure("internal error running plugin {plugin}", plugin=self.name)
                    failure = FilterFailure(self.name, "trap", "internal error in the host")
            # Outside the lock: the instance is spent.
            self._pool.discard(ctx)
            raise failure
        except FilterFailure as f:
            self._report_failure(f)
            raise

    def _report_failure(self, f: FilterFailure) -> None:
        if self.observer is not None:
            self.observer.plugin_failed(self.name, f.kind)
        allowed, refused = self._failure_log.take()
        if allowed:
            self.log.warn(
                "plugin {plugin} failed ({kind}): {message}{suppressed}",
                plugin=self.name,
                kind=f.kind,
                message=f.message,
                suppressed=(" (%d similar failures not logged)" % refused) if refused else "",
            )

    def __repr__(self) -> str:
        return "<WasmFilter %s abi=%s>" % (self.name, getattr(self, "abi_name", "?"))


