# -*- test-case-name: tests.test_wasm_filter,tests.test_abi_httpwasm -*-
"""
A filter's live instances, and which thread or request holds each.

Most ABIs use one instance per filter-pool thread, built on first use
(L{InstancePool.thread_instance}). An ABI whose guests keep a request's
state in globals (http-wasm) checks an instance out per request instead
(L{InstancePool.checkout}); the request's L{Pins} hold it from the request
phase to the response phase, then it goes back to the idle pool.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, Optional

from wasmgate.wasm.failures import FilterFailure, PluginLoadError
from wasmgate.wasm.instance import InstanceContext

if TYPE_CHECKING:
    from wasmgate.wasm.filter import WasmFilter


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

    def hold(self, owner: "WasmFilter", ctx: InstanceContext) -> None:
        self._held[owner] = ctx

    def take(self, owner: "WasmFilter") -> Optional[InstanceContext]:
        """The instance held for C{owner}, no longer held (atomic: any thread)."""
        return self._held.pop(owner, None)

    def holds(self, owner: "WasmFilter") -> bool:
        return owner in self._held

    def __len__(self) -> int:
        return len(self._held)

    def __del__(self) -> None:
        for owner, ctx in list(self._held.items()):
            owner._drop_pinned(ctx)


class InstancePool:
    """
    The instances of one filter (C{name}): every live one (to count, measure
    and close them), each thread's own, and the idle ones requests check out.
    C{build} makes a fresh instance on the calling thread (raising
    L{PluginLoadError}); more than C{max_instances} checked out at once
    fail with kind C{busy}.
    """

    max_idle = 16
    """Idle pooled instances kept for reuse (more are built under load and
    disposed of when they come back)."""

    def __init__(self, name: str, build: Callable[[], InstanceContext], max_instances: int) -> None:
        self.name = name
        self.max_instances = max_instances
        self._build = build
        self.local = threading.local()
        """C{local.ctx}: this thread's own instance, if it has one."""
        self._registry: set[InstanceContext] = set()
        # Re-entrant: a dropped request's Pins may be collected (and give
        # back its instance) on a thread that holds it.
        self._registry_lock = threading.RLock()
        self.closed = False
        self._idle: list[InstanceContext] = []
        self.checked_out = 0
        """Instances requests hold right now."""
        self._pool_lock = threading.RLock()

    def thread_instance(self) -> InstanceContext:
        """This thread's instance, built if it has none (or a dead one)."""
        ctx: Optional[InstanceContext] = getattr(self.local, "ctx", None)
        if ctx is not None and not ctx.dead:
            return ctx
        if self.closed:
            raise FilterFailure(self.name, "load", "filter is closed")
        self.reap()
        try:
            ctx = self._build()
        except PluginLoadError as e:
            raise FilterFailure(self.name, "load", e.what) from None
        self.local.ctx = ctx
        with self._registry_lock:
            self._registry.add(ctx)
        if self.closed:  # closed while we were building
            self.discard(ctx)
            raise FilterFailure(self.name, "load", "filter is closed")
        return ctx

    def discard(self, ctx: InstanceContext) -> None:
        with self._registry_lock:
            self._registry.discard(ctx)
        ctx.dispose()
        if getattr(self.local, "ctx", None) is ctx:
            self.local.ctx = None

    def reap(self) -> None:
        """Dispose of instances whose thread has exited."""
        with self._registry_lock:
            gone = [c for c in self._registry if not c.pooled and not c.thread.is_alive()]
            for c in gone:
                self._registry.discard(c)
        for c in gone:
            with c.lock:
                c.dispose()

    def count(self) -> int:
        """Live instances."""
        self.reap()
        with self._registry_lock:
            return len(self._registry)

    def memory_bytes(self) -> int:
        """Linear memory held by all instances, as of their last call."""
        with self._registry_lock:
            return sum(c.mem_size for c in self._registry)

    def close(self) -> None:
        """Drop every instance; later calls fail with kind C{load}."""
        self.closed = True
        with self._pool_lock:
            self._idle.clear()
        with self._registry_lock:
            ctxs = list(self._registry)
            self._registry.clear()
        for c in ctxs:
            with c.lock:
                c.dispose()

    # -- instances pinned to a request (pins_instances ABIs) ---------------

    def checkout(self) -> InstanceContext:
        with self._pool_lock:
            while self._idle:
                ctx = self._idle.pop()
                if not ctx.dead:
                    self.checked_out += 1
                    return ctx
        if self.closed:
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
        if self.closed:
            self.discard(ctx)
            raise FilterFailure(self.name, "load", "filter is closed")
        with self._pool_lock:
            self.checked_out += 1
        return ctx

    def checkin(self, ctx: InstanceContext) -> None:
        """Back to the idle pool (a dead one is dropped; the pool is capped)."""
        with self._pool_lock:
            self.checked_out -= 1
            if not ctx.dead and not self.closed and len(self._idle) < self.max_idle:
                self._idle.append(ctx)
                return
        if not ctx.dead:
            self.discard(ctx)

    def drop_pinned(self, ctx: InstanceContext) -> None:
        """A request was dropped while holding C{ctx}: throw it away."""
        with self._pool_lock:
            self.checked_out -= 1
        with self._registry_lock:
            self._registry.discard(ctx)
        with ctx.lock:
            ctx.dispose()
