# -*- test-case-name: tests.test_gateway_filters -*-
"""
The gateway's wasm side, built from config: one engine, one counter store,
plugins loaded into filters and filters into route chains.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import Counter
from typing import Any, Callable, Mapping, Optional, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from wasmgate.config import ConfigError, GatewayConfig, PluginConfig
from wasmgate.filterjobs import BatchingRunner
from wasmgate.sources import PluginSource
from wasmgate.state import CounterStore, MemoryCounterStore
from wasmgate.wasm.chain import FilterChain
from wasmgate.wasm.engine import WasmEngine
from wasmgate.wasm.filter import PluginLoadError, WasmFilter

log = Logger()


class _TrackedFilter(WasmFilter):
    """
    A filter that tells its runtime once it is closed: a retired config
    generation closes the filters it does not hand on, and the runtime must
    then let go of them (and of their module) or every reload would leak.
    """

    def __init__(self, *, on_close: Callable[[WasmFilter], None], **kw: Any) -> None:
        self._on_close: Optional[Callable[[WasmFilter], None]] = on_close
        super().__init__(**kw)

    def close(self) -> None:
        super().close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self)


class WasmRuntime:
    """
    Owns the L{WasmEngine} and the counter store for the process; loads
    plugins (reusing unchanged ones across reloads) and builds chains.

    It remembers what each live (unclosed) filter was built from, and the
    engine's in-memory module cache is kept to the modules of those: a
    closed filter is forgotten, and its module with it unless another live
    filter (or a load in progress) uses the same bytes.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        reactor: Any,
        pool: ThreadPool,
        observer: Any = None,
        state: Optional[CounterStore] = None,
    ) -> None:
        self.reactor = reactor
        self.pool = pool
        self.runner = BatchingRunner(reactor, pool, workers=config.filters.threads)
        """Every chain's jobs, several to a thread hop under load."""
        self.observer = observer
        self.engine = WasmEngine(
            tick_ms=config.filters.epoch_tick * 1000,
            cache_dir=config.filters.cache_dir,
            fuel=any(p.fuel for p in config.plugins),
        )
        if self.engine.path_note:
            log.warn(
                "filters are called on wasmtime's checked path (slower): {why}", why=self.engine.path_note
            )
        self.state = state if state is not None else make_counter_store(config, reactor=reactor)
        self._sources: dict[WasmFilter, tuple[str, PluginConfig]] = {}
        # Digests being compiled or built right now (loads run in a thread,
        # retired filters are closed on the reactor thread).
        self._loading: Counter[str] = Counter()
        self._sources_lock = threading.Lock()
        cache = config.filters.cache_dir
        self.source = PluginSource(
            reactor=reactor, cache_dir=os.path.join(cache, "plugins") if cache else None
        )

    def start(self) -> None:
        self.engine.start()

    def connect(self) -> Deferred[None]:
        """Fires once the counter store is usable (Redis connected)."""
        connect = getattr(self.state, "connect", None)
        return connect() if connect is not None else succeed(None)

    def stop(self) -> Deferred[None]:
        self.engine.stop()
        aclose = getattr(self.state, "aclose", None)
        if aclose is not None:
            return aclose()
        self.state.close()
        return succeed(None)

    def load_filters(
        self, config: GatewayConfig, *, previous: Mapping[str, WasmFilter] = {}
    ) -> dict[str, WasmFilter]:
        """
        A filter per plugin of C{config}. A plugin whose file and settings
        are unchanged keeps its previous filter (and warm instances).

        @raise ConfigError: naming every plugin that failed to load and why.
        """
        filters: dict[str, WasmFilter] = {}
        problems: list[str] = []
        for i, plugin in enumerate(config.plugins):
            try:
                filters[plugin.name] = self._load(plugin, previous.get(plugin.name))
            except PluginLoadError as e:
                problems.append(f"plugins[{i}] ({plugin.name}): {e.what}")
        if problems:
            for f in filters.values():
                if f not in previous.values():
                    f.close()
            raise ConfigError(config.source, problems)
        return filters

    def _load(self, plugin: PluginConfig, previous: Optional[WasmFilter]) -> WasmFilter:
        data = self.source.fetch_blocking(plugin)
        digest = hashlib.sha256(data).hexdigest()
        with self._sources_lock:
            if previous is not None and self._sources.get(previous) == (digest, plugin):
                return previous
            self._loading[digest] += 1
        try:
            wasm_filter = self._build(plugin, data)
        except BaseException:
            with self._sources_lock:
                self._loading[digest] -= 1
                self._release(digest)
            raise
        with self._sources_lock:
            self._loading[digest] -= 1
            self._sources[wasm_filter] = (digest, plugin)
            self._release(digest)
        log.info(
            "plugin {name} loaded ({abi} ABI, sha256 {digest})",
            name=plugin.name, abi=wasm_filter.abi_name, digest=digest[:12],
        )
        return wasm_filter

    def _build(self, plugin: PluginConfig, data: bytes) -> WasmFilter:
        try:
            module = self.engine.compile(data)
        except Exception as e:  # wasmtime raises WasmtimeError for bad modules
            raise PluginLoadError(plugin.name, f"not a valid wasm module: {_first_line(e)}") from None
        return _TrackedFilter(
            on_close=self._filter_closed,
            name=plugin.name,
            module=module,
            engine=self.engine,
            timeout_ms=plugin.timeout_ms,
            memory_limit_mb=plugin.memory_limit_mb,
            failure_policy=plugin.failure_policy,
            fuel=plugin.fuel,
            config=dict(plugin.config),
            include_body=plugin.include_body,
            max_instances=plugin.max_instances,
            config_bytes=plugin.config_bytes,
            export=plugin.export,
            state=self.state,
            observer=self.observer,
        )

    def _filter_closed(self, wasm_filter: WasmFilter) -> None:
        """A filter was closed: forget it, and its module if now unused."""
        with self._sources_lock:
            source = self._sources.pop(wasm_filter, None)
            if source is not None:
                self._release(source[0])

    def _release(self, digest: str) -> None:
        """Drop C{digest}'s module from the engine unless still in use (lock held)."""
        if self._loading[digest] > 0:
            return
        self._loading.pop(digest, None)
        if all(d != digest for d, _ in self._sources.values()):
            self.engine.forget_digest(digest)

    def digest_of(self, wasm_filter: WasmFilter) -> Optional[str]:
        """The sha256 of the bytes C{wasm_filter} was built from (None once closed)."""
        with self._sources_lock:
            source = self._sources.get(wasm_filter)
        return source[0] if source is not None else None

    def live_filters(self) -> list[WasmFilter]:
        """The filters this runtime built that are not closed yet."""
        with self._sources_lock:
            return list(self._sources)

    def make_chain(
        self, filters: Sequence[WasmFilter], overrides: Mapping[str, Mapping[str, Any]]
    ) -> FilterChain:
        return FilterChain(
            filters,
            runner=self.runner,
            route_config={name: dict(value) for name, value in overrides.items()},
        )


def make_counter_store(config: GatewayConfig, *, reactor: Any) -> CounterStore:
    """The counter store C{state:} asks for."""
    if config.state.backend == "redis":
        from wasmgate.state_redis import RedisCounterStore

        assert config.state.url is not None
        return RedisCounterStore(url=config.state.url, reactor=reactor, timeout=config.state.timeout)
    return MemoryCounterStore(max_keys=config.state.max_keys)


def check_plugins(config: GatewayConfig) -> list[str]:
    """For C{wasmgate check}: load every plugin once, report what fails."""
    runtime = WasmRuntime(
        config, reactor=None, pool=ThreadPool(minthreads=0, maxthreads=1), state=MemoryCounterStore()
    )
    try:
        filters = runtime.load_filters(config)
    except ConfigError as e:
        return [p.split(": ", 1)[1] for p in e.problems]
    finally:
        runtime.stop()
    for f in filters.values():
        f.close()
    return []


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
