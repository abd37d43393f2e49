# -*- test-case-name: tests.test_wasm_filter -*-
"""
A loaded filter: one compiled module, its limits and per-thread instances.

wasmtime stores are not thread-safe, so every filter-pool thread gets its own
C{Store} + instance of each filter, built on first use from the shared
compiled module. An instance that trapped, timed out, ran out of memory or
whose host call failed is thrown away and rebuilt on next use (its memory
may be half-updated); one that merely returned bad output is kept.

Which ABI a module speaks is decided from its imports and exports (see
L{FilterAbi}); the JSON ABI is in L{wasmgate.wasm.abi_json}, the http-wasm
ABI plugs in as C{wasmgate.wasm.abi_httpwasm} exposing an C{ABI} class.

An ABI whose class sets C{pins_instances = True} (http-wasm: guests keep a
request's state in globals from C{handle_request} to C{handle_response})
does not use per-thread instances: each request checks an instance out of
the filter's pool for its request phase and, when the ABI says the guest
wants its response phase, the request's L{Pins} hold it until
L{WasmFilter.run_response} or L{WasmFilter.abandon} (on whichever pool
thread; a Store is used by one thread at a time, never concurrently).
"""
from __future__ import annotations

import importlib
import threading
import time
from typing import Any, ClassVar, Optional, Protocol, Sequence, Union

import wasmtime
from twisted.logger import Logger

from wasmgate.state import CounterStore, StateError
from wasmgate.wasm import _raw
from wasmgate.wasm._hints import import_hint
from wasmgate.wasm.engine import WasmEngine
from wasmgate.wasm.hostfuncs import (
    GuestFault,
    HostEnv,
    HostFunc,
    LogCapture,
    TokenBucket,
    wasmgate_functions,
)
from wasmgate.wasm.messages import Answer, Continue, FilterRequest, FilterResponse
from wasmgate.wasm.wasi import wasi_functions

FAILURE_KINDS = ("trap", "timeout", "oom", "bad_output", "state", "load", "busy", "error")
"""C{error}: the guest said it failed (an Extism handler returning non-zero
or setting an error); its instance is fine and kept."""

_UNLIMITED_FUEL = 1 << 62


INIT_TIMEOUT_MS = 1000
"""The deadline of an instance's start-up code, when above C{timeout_ms}."""


class PluginLoadError(Exception):
    """A plugin cannot be loaded; C{what} says why, for a human."""

    def __init__(self, name: str, what: str) -> None:
        super().__init__("plugin %r: %s" % (name, what))
        self.name = name
        self.what = what


class FilterFailure(Exception):
    """
    One call of a filter failed.

    @ivar kind: one of L{FAILURE_KINDS}.
    """

    def __init__(self, plugin: str, kind: str, message: str) -> None:
        super().__init__("plugin %r failed (%s): %s" % (plugin, kind, message))
        self.plugin = plugin
        self.kind = kind
        self.message = message


class BadOutput(Exception):
    """Raised by an ABI when the guest's output breaks the schema."""


class InitRefused(Exception):
    """Raised by an ABI when the guest refuses its configuration."""


class GuestError(Exception):
    """Raised by an ABI when the guest reports a failure of its own (kind C{error})."""


class OverMemoryCap(Exception):
    """Raised by an ABI whose instance holds more memory than its cap (kind C{oom})."""


class FilterObserver(Protocol):
    """Metrics hook; called on the filter thread (durations come with the
    chain's decisions, on the reactor thread)."""

    def plugin_failed(self, plugin: str, kind: str) -> None: ...


class FilterAbi(Protocol):
    """
    How the host talks to one kind of guest. One object per L{WasmFilter};
    per-instance data goes in C{ctx.abi_state}.
    """

    name: ClassVar[str]

    @classmethod
    def detect(cls, module: wasmtime.Module) -> bool:
        """Whether C{module} looks like it speaks this ABI."""

    @classmethod
    def problems(cls, module: wasmtime.Module) -> list[str]:
        """What is missing or mistyped for this ABI (empty: loadable)."""

    @classmethod
    def speaks_response(cls, module: wasmtime.Module) -> bool:
        """Whether the module filters responses too."""

    def host_functions(self) -> dict[tuple[str, str], HostFunc]:
        """Imports this ABI provides on top of the C{wasmgate} module."""

    def setup(self, ctx: "InstanceContext") -> None:
        """Prepare a fresh instance (may raise L{InitRefused} or trap)."""

    def handle_request(
        self, ctx: "InstanceContext", req: FilterRequest, route_config: Optional[dict]
    ) -> Union[Answer, Continue]:
        """Run the request phase; may change C{req} in place when continuing."""

    def handle_response(
        self,
        ctx: "InstanceContext",
        req: FilterRequest,
        resp: FilterResponse,
        route_config: Optional[dict],
    ) -> FilterResponse:
        """Run the response phase."""


class LinkingAbi(Protocol):
    """
    An ABI that instantiates modules of its own into each instance's store
    before the guest (Extism: the kernel). Its class says how many
    (C{extra_instances}); C{link} returns the externs that satisfy some of
    the guest's imports, by C{(module, name)}.
    """

    extra_instances: ClassVar[int]

    def link(self, ctx: "InstanceContext") -> dict[tuple[str, str], Any]: ...


def _abi_classes() -> list[Any]:
    found = []
    for name in ("wasmgate.wasm.abi_extism", "wasmgate.wasm.abi_httpwasm", "wasmgate.wasm.abi_json"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        abi = getattr(mod, "ABI", None)
        if abi is not None:
            found.append(abi)
    return found


def select_abi(module: wasmtime.Module) -> Any:
    """The ABI class for C{module}, or C{None} when none fits."""
    for abi in _abi_classes():
        if abi.detect(module):
            return abi
    return None


def known_abis() -> list[str]:
    return [a.name for a in _abi_classes()]


class Pins:
    """
    The instances one request holds from its request phase to its response
    phase (ABIs that pin, such as http-wasm), one per filter. The request's
    owner (L{wasmgate.wasm.chain.RequestRun}) ends them; a L{Pins} dropped
    with instances still held throws them away (no guest call: that may
    happen on any thread).
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: dict["WasmFilter", InstanceContext] = {}

    def hold(self, owner: "WasmFilter", ctx: "InstanceContext") -> None:
        self._held[owner] = ctx

    def take(self, owner: "WasmFilter") -> Optional["InstanceContext"]:
        """The instance held for C{owner}, no longer held (atomic: any thread)."""
        return self._held.pop(owner, None)

    def holds(self, owner: "WasmFilter") -> bool:
        return owner in self._held

    def __len__(self) -> int:
        return len(self._held)

    def __del__(self) -> None:
        for owner, ctx in list(self._held.items()):
            owner._drop_pinned(ctx)


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
        self.max_instances = max_instances
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
        self._local = threading.local()
        self._registry: set[InstanceContext] = set()
        # Re-entrant: a dropped request's Pins may be collected (and give
        # back its instance) on a thread that holds it.
        self._registry_lock = threading.RLock()
        self._closed = False
        self.pins_instances = False
        self._idle: list[InstanceContext] = []
        self._checked_out = 0
        self._pool_lock = threading.RLock()
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

    def _build(self) -> InstanceContext:
        """A fresh instance on this thread; L{PluginLoadError} if impossible."""
        store = wasmtime.Store(self.engine.engine)
        limits = self.engine.store_limits(self.memory_limit)
        if self._extra_instances:
            limits["instances"] += self._extra_instances
            limits["memories"] += self._extra_instances
        store.set_limits(**limits)
        if self.engine.fuel:
            store.set_fuel(self.fuel if self.fuel is not None else _UNLIMITED_FUEL)
        store.set_epoch_deadline(self._init_ticks)
        ctx = InstanceContext(self, store)
        ctx.path.on_epoch_deadline(store, ctx.on_deadline)
        ctx.start_clock(max(self.timeout_ms, INIT_TIMEOUT_MS) / 1000)
        try:
            link = getattr(self.abi, "link", None)
            linked: dict[tuple[str, str], Any] = link(ctx) if link is not None else {}
            externs: list[Any] = []
            for imp in self.module.imports:
                key = (imp.module, imp.name)
                ext = linked.get(key)
                if ext is None:
                    spec = self._hosts[key]
                    ext = ctx.path.host_func(
                        store, spec.params, spec.results, spec.make(ctx), ctx.cell, ctx.record_host_error
                    )
                    ctx.host_funcs.append(ext)
                externs.append(ext)
            try:
                with self._log_capture.capturing() as logged:
                    ctx.instance = wasmtime.Instance(store, self.module, externs)
            except (wasmtime.WasmtimeError, wasmtime.Trap) as e:
                raise PluginLoadError(
                    self.name, "cannot instantiate: %s%s" % (_first_line(e), _said(logged))
                )
            ctx.exports = ctx.instance.exports(store)
            memory = ctx.exports.get("memory")
            if not isinstance(memory, wasmtime.Memory):
                raise PluginLoadError(self.name, "module does not export its memory as 'memory'")
            ctx.memory = ctx.cell.memory = memory
            ctx.span()
            # What the guest logs while it starts goes into the load error:
            # a config refusal says why only there.
            with self._log_capture.capturing() as logged:
                try:
                    self.abi.setup(ctx)
                except InitRefused as e:
                    raise PluginLoadError(self.name, str(e) + _said(logged))
                except _raw.GuestTrap as e:
                    kind, msg = self._classify(ctx, e)
                    raise PluginLoadError(
                        self.name, "initialisation failed (%s): %s%s" % (kind, msg, _said(logged))
                    )
                except (BadOutput, GuestError, OverMemoryCap) as e:
                    raise PluginLoadError(self.name, "initialisation failed: %s%s" % (e, _said(logged)))
        except BaseException:
            ctx.dispose()
            raise
        return ctx

    def _instance(self) -> InstanceContext:
        ctx: Optional[InstanceContext] = getattr(self._local, "ctx", None)
        if ctx is not None and not ctx.dead:
            return ctx
        if self._closed:
            raise FilterFailure(self.name, "load", "filter is closed")
        self._reap()
        try:
            ctx = self._build()
        except PluginLoadError as e:
            raise FilterFailure(self.name, "load", e.what) from None
        self._local.ctx = ctx
        with self._registry_lock:
            self._registry.add(ctx)
        if self._closed:  # closed while we were building
            self._discard(ctx)
            raise FilterFailure(self.name, "load", "filter is closed")
        return ctx

    def _discard(self, ctx: InstanceContext) -> None:
        with self._registry_lock:
            self._registry.discard(ctx)
        ctx.dispose()
        if getattr(self._local, "ctx", None) is ctx:
            self._local.ctx = None

    def _reap(self) -> None:
        """Dispose of instances whose thread has exited."""
        with self._registry_lock:
            gone = [c for c in self._registry if not c.pooled and not c.thread.is_alive()]
            for c in gone:
                self._registry.discard(c)
        for c in gone:
            with c.lock:
                c.dispose()

    def instance_count(self) -> int:
        """Live instances (one per thread that has used this filter)."""
        self._reap()
        with self._registry_lock:
            return len(self._registry)

    def memory_bytes(self) -> int:
        """Linear memory held by all instances, as of their last call."""
        with self._registry_lock:
            return sum(c.mem_size for c in self._registry)

    def close(self) -> None:
        """Drop every instance; later calls fail with kind C{load}."""
        self._closed = True
        with self._pool_lock:
            self._idle.clear()
        with self._registry_lock:
            ctxs = list(self._registry)
            self._registry.clear()
        for c in ctxs:
            with c.lock:
                c.dispose()

    @property
    def closed(self) -> bool:
        return self._closed

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
                self._checkin(ctx)
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
            self._checkin(ctx)
        return True

    def _run_pinned_request(
        self, req: FilterRequest, route_config: Optional[dict], pins: Optional[Pins]
    ) -> Union[Answer, Continue]:
        held: list[InstanceContext] = []

        def acquire() -> InstanceContext:
            ctx = self._checkout()
            held.append(ctx)
            return ctx

        try:
            result = self._run(acquire, self.abi.handle_request, req, route_config)
        except FilterFailure:
            if held:
                self._checkin(held[0])
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
            self._checkin(ctx)
        return result  # type: ignore[no-any-return]

    def _checkout(self) -> InstanceContext:
        with self._pool_lock:
            while self._idle:
                ctx = self._idle.pop()
                if not ctx.dead:
                    self._checked_out += 1
                    return ctx
        if self._closed:
            raise FilterFailure(self.name, "load", "filter is closed")
        with self._registry_lock:
            if len(self._registry) >= self.max_instances:
                # Each request in flight holds one: memory stays bounded
                # (max_instances x memory_limit_mb) under a flood.
                raise FilterFailure(
                    self.name, "busy", "all %d instances are in use (max_instances)" % (self.max_instances,)
                )
        try:
            ctx = self._build()
        except PluginLoadError as e:
            raise FilterFailure(self.name, "load", e.what) from None
        ctx.pooled = True
        with self._registry_lock:
            self._registry.add(ctx)
        if self._closed:
            self._discard(ctx)
            raise FilterFailure(self.name, "load", "filter is closed")
        with self._pool_lock:
            self._checked_out += 1
        return ctx

    def _checkin(self, ctx: InstanceContext) -> None:
        """Back to the idle pool (a dead one is dropped; the pool is capped)."""
        with self._pool_lock:
            self._checked_out -= 1
            if not ctx.dead and not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(ctx)
                return
        if not ctx.dead:
            self._discard(ctx)

    max_idle = 16
    """Idle pooled instances kept for reuse (more are built under load and
    disposed of when they come back)."""

    def _drop_pinned(self, ctx: InstanceContext) -> None:
        """A request was dropped while holding C{ctx}: throw it away."""
        with self._pool_lock:
            self._checked_out -= 1
        with self._registry_lock:
            self._registry.discard(ctx)
        with ctx.lock:
            ctx.dispose()

    def pinned_count(self) -> int:
        """Instances requests hold right now (checked out of the pool)."""
        return self._checked_out

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
                    kind, msg = self._classify(ctx, e)
                    failure = FilterFailure(self.name, kind, msg)
                except (GuestFault, StateError) as e:  # raised outside a guest call
                    failure = FilterFailure(self.name, "state" if isinstance(e, StateError) else "trap", str(e))
                except Exception:
                    # A host-side bug: log it loudly, fail like a trap.
                    self.log.failure("internal error running plugin {plugin}", plugin=self.name)
                    failure = FilterFailure(self.name, "trap", "internal error in the host")
            # Outside the lock: the instance is spent.
            self._discard(ctx)
            raise failure
        except FilterFailure as f:
            self._report_failure(f)
            raise

    def _classify(self, ctx: InstanceContext, trap: _raw.GuestTrap) -> tuple[str, str]:
        host_error, ctx.host_error = ctx.host_error, None
        if host_error is not None:
            if isinstance(host_error, StateError):
                return "state", str(host_error)
            if isinstance(host_error, OverMemoryCap):
                return "oom", "hit its memory limit of %d MiB (%s)" % (
                    self.memory_limit // (1024 * 1024),
                    host_error,
                )
            return "trap", "host function failed: %s" % (host_error,)
        code = trap.code
        if code is wasmtime.TrapCode.INTERRUPT or ctx.deadline_hit:
            ctx.deadline_hit = False
            return "timeout", "exceeded its %g ms time limit" % (self.timeout_ms,)
        if code is wasmtime.TrapCode.OUT_OF_FUEL:
            return "timeout", "ran out of fuel (%d)" % (self.fuel or 0,)
        if code is wasmtime.TrapCode.ALLOCATION_TOO_LARGE or self._near_memory_cap(ctx):
            return "oom", "hit its memory limit of %d MiB (%s)" % (
                self.memory_limit // (1024 * 1024),
                _first_line(trap),
            )
        return "trap", _first_line(trap)

    def _near_memory_cap(self, ctx: InstanceContext) -> bool:
        # wasmtime's store limiter makes memory.grow return -1 without a
        # trace; a trap with memory this close to the cap is counted as oom.
        try:
            size = ctx.total_memory()
        except Exception:
            return False
        return size + max(65536, self.memory_limit // 16) > self.memory_limit

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


def func_sig(ty: Any) -> Optional[tuple[tuple[str, ...], tuple[str, ...]]]:
    """C{(params, results)} as type names, or None if C{ty} is no function."""
    if not isinstance(ty, wasmtime.FuncType):
        return None
    return tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results)


def exports_of(module: wasmtime.Module) -> dict[str, Any]:
    """A module's exports by name: their types."""
    return {e.name: e.type for e in module.exports}


def import_problems(module: wasmtime.Module, hosts: dict[tuple[str, str], HostFunc]) -> list[str]:
    """Imports of C{module} the host cannot satisfy, as messages."""
    out = []
    for imp in module.imports:
        key = (imp.module, imp.name)
        ty = imp.type
        spec = hosts.get(key)
        if spec is None:
            hint = import_hint(*key)
            out.append(
                "imports %s.%s, which the host does not provide%s" % (key + ((" (%s)" % hint) if hint else "",))
            )
            continue
        if not isinstance(ty, wasmtime.FuncType):
            out.append("imports %s.%s as a non-function" % key)
            continue
        params = tuple(str(p) for p in ty.params)
        results = tuple(str(r) for r in ty.results)
        if (params, results) != (spec.params, spec.results):
            out.append(
                "imports %s.%s with type (%s) -> (%s), but the host provides (%s) -> (%s)"
                % (
                    key[0],
                    key[1],
                    ", ".join(params),
                    ", ".join(results),
                    ", ".join(spec.params),
                    ", ".join(spec.results),
                )
            )
    return out
