# -*- test-case-name: tests.test_ops -*-
"""
The gateway as a Twisted service: listeners, admin site, filter thread
pool, epoch ticker; reload swaps generations; stop drains.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from twisted.application import service, strports
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from wasmgate import _reloading
from wasmgate._pluginwatch import PluginWatch
from wasmgate._reloading import PreparedReload, warn_filter_order
from wasmgate._serversetup import (
    InheritedSocket,
    accept_one_at_a_time,
    certificate_store,
    default_max_connections,
    listen_endpoints,
    server_settings,
)
from wasmgate.accesslog import AccessSink, FileSink, access_line, log_sink
from wasmgate.config import ConfigError, GatewayConfig, UpstreamConfig, load_config
from wasmgate.filterpool import FilterThreadPool
from wasmgate.generation import Generation, build_generation
from wasmgate.http.factory import HTTPServerFactory
from wasmgate.http.message import RequestRecord
from wasmgate.metrics import GatewayMetrics
from wasmgate.proxy import Gateway
from wasmgate.state import CounterStore
from wasmgate.systemd import Notifier
from wasmgate.tls import CertificateSlot, CertificateStore, TLSMetrics, tls_endpoint
from wasmgate.tracing import SpanCollector, SpanExport, TracingUnavailable, span_export

__all__ = ["GatewayService", "make_service", "default_max_connections"]

log = Logger()


class ThreadPoolService(service.Service):
    """Starts a L{ThreadPool} with the service and joins it on stop."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


class GatewayService(service.MultiService):
    """
    The whole gateway. C{generation} is the live one; L{reload} replaces it.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        reactor: Any,
        notifier: Optional[Notifier] = None,
        inherited: Optional[Sequence[InheritedSocket]] = None,
        counters: Optional[CounterStore] = None,
        admin: bool = True,
        watch_plugins: bool = True,
    ) -> None:
        """
        @param inherited: listening sockets a supervisor opened, one per
            C{server.listen} entry, instead of listening itself.
        @param counters: the counter store for C{state: memory} (a
            supervisor's shared one), instead of one of this process's own.
        @param admin: serve C{admin.listen} (a worker leaves it to its supervisor).
        @param watch_plugins: reload when a plugin changes (a supervisor
            watches for its workers).
        """
        super().__init__()
        self.reactor = reactor
        self.notifier = notifier if notifier is not None else Notifier(environ={})
        self.config = config
        self.counters = counters
        self.filter_pool = FilterThreadPool(
            minthreads=0, maxthreads=config.filters.threads, name="wasmgate-filters"
        )
        self._wasm: Optional[Any] = None
        self._generations = 0
        self.plugin_watch: Optional[PluginWatch] = None
        if watch_plugins:
            self.plugin_watch = PluginWatch(
                config=lambda: self.config,
                fetch=lambda plugin: self._wasm_runtime(self.config).source.fetch(plugin),
                digest=self._loaded_digest,
                changed=self._reload_for,
                busy=lambda: self._reloading is not None,
                clock=reactor,
            )
        self._reloading: Optional[defer.Deferred[Any]] = None
        self.reload_lock = defer.DeferredLock()
        """Held from a reload's start to its commit (a worker's two steps too)."""
        self.stopping = False
        """True from the start of L{stopService}: /readyz fails while draining."""
        self._retired: set[Generation] = set()
        """Generations a reload replaced whose requests have not all finished."""
        self.after_reload: list[Callable[[], None]] = []
        """Called (on the reactor thread) once a reload's old generation is closed."""
        self.fatal_error: Optional[str] = None
        self.when_ready: defer.Deferred[Any] = defer.Deferred()
        """Fires when listening and connected to what filters need (Redis)."""
        self.metrics = GatewayMetrics(
            generation=lambda: self.generation, generations=lambda: [self.generation, *self._retired]
        )
        self.generation = self._build(config)
        self.metrics.config_generation.set(self.generation.number)
        ThreadPoolService(self.filter_pool).setServiceParent(self)
        self.access_file: Optional[FileSink] = None
        if config.access_log not in ("log", "off"):
            self.access_file = FileSink(config.access_log, reactor=reactor)
        self.access_log: Optional[AccessSink] = {"log": log_sink, "off": None}.get(
            config.access_log, self.access_file
        )
        self.observers: list[Callable[[RequestRecord, float], None]] = [self.metrics.request_done]
        """Called with every request's record and duration (metrics, tests)."""
        self.settings = server_settings(config)
        self.spans = _span_export(config)
        if self.spans is not None:
            self.metrics.registry.register(SpanCollector(self.spans))
        self.gateway = Gateway(
            generation=lambda: self.generation,
            clock=reactor,
            record=self._record,
            settings=self.settings,
            on_ejection=self.metrics.target_ejected,
            sample_ratio=config.tracing.sample_ratio if config.tracing else 0.0,
        )
        self.http = HTTPServerFactory(
            clock=reactor,
            settings=self.settings,
            start_exchange=self.gateway.start_exchange,
            refused=self._record,
        )
        self.http.secure = config.server.tls is not None
        self.metrics.watch_server(self.http)
        self.metrics.watch_tunnels(self.gateway)
        self._tls_metrics_instance: Optional[TLSMetrics] = None
        self.certificates: Optional[CertificateStore] = None
        self._certificate_slot: Optional[CertificateSlot] = None
        if config.server.tls is not None:
            self.certificates = certificate_store(config, self._tls_metrics())
            self._certificate_slot = CertificateSlot(self.certificates)
        self.listeners = []
        for endpoint in listen_endpoints(config, reactor, inherited):
            if self._certificate_slot is not None:
                endpoint = tls_endpoint(endpoint, self._certificate_slot)
            listener = StreamServerEndpointService(endpoint, self.http)
            listener._raiseSynchronously = True  # a busy port stops the start, as with strports
            listener.setServiceParent(self)
            self.listeners.append(listener)
        self.shares_sockets = inherited is not None
        """Other workers accept on the same sockets."""
        if admin and config.admin.listen:
            from wasmgate.admin import AdminResource, admin_site

            admin_service = strports.service(
                config.admin.listen,
                admin_site(AdminResource(gateway=self), reactor=reactor),
                reactor=reactor,
            )
            admin_service.setServiceParent(self)
            self.admin = admin_service

    def _record(self, record: RequestRecord) -> None:
        """A request is over: metrics, then one access-log line."""
        duration = self.reactor.seconds() - record.started
        if not record.request_id:  # refused at the wire
            record.request_id = self.gateway.ids.next().decode("ascii")
        for observe in self.observers:
            observe(record, duration)
        if self.spans is not None and record.trace is not None and record.trace.sampled and self.config.tracing:
            self.spans.submit(record)
        sink = self.access_log
        if sink is not None:
            sink(access_line(record, duration))

    # -- building --

    def _build(self, config: GatewayConfig) -> Generation:
        return self._assemble(config, self._load_filters(config))

    def _load_filters(self, config: GatewayConfig) -> dict[str, Any]:
        """Read and compile plugins: slow, so reloads run it in a thread."""
        if not config.plugins:
            return {}
        return self._wasm_runtime(config).load_filters(config, previous=self._current_filters())

    def _assemble(self, config: GatewayConfig, filters: dict[str, Any]) -> Generation:
        self._generations += 1
        for name in filters:
            self.metrics.plugin_known(name)
        return build_generation(
            config,
            number=self._generations,
            reactor=self.reactor,
            filters=filters,
            make_chain=lambda chain, overrides: self._wasm_runtime(config).make_chain(chain, overrides),
            tls_policy=self._tls_policy,
        )

    def _current_filters(self) -> dict[str, Any]:
        generation = getattr(self, "generation", None)
        return dict(generation.filters) if generation is not None else {}

    def _wasm_runtime(self, config: GatewayConfig) -> Any:
        if self._wasm is None:
            from wasmgate.wasm.runtime import WasmRuntime

            self._wasm = WasmRuntime(
                config,
                reactor=self.reactor,
                pool=self.filter_pool,
                observer=self.metrics,
                state=self.counters if config.state.backend == "memory" else None,
            )
            self._wasm.runner.max_queue = config.filters.max_queue
            self.metrics.watch_filter_jobs(self._wasm.runner)
            if self.running:
                self._wasm.start()
        return self._wasm

    def _tls_metrics(self) -> TLSMetrics:
        """The process's one L{TLSMetrics}, shared by each certificate store."""
        if self._tls_metrics_instance is None:
            self._tls_metrics_instance = TLSMetrics(self.metrics.registry)
        return self._tls_metrics_instance

    def _tls_policy(self, upstream: UpstreamConfig) -> Any:
        if not any(t.startswith("https://") for t in upstream.targets):
            return None
        from wasmgate.tls import upstream_tls_policy

        try:
            return upstream_tls_policy(
                ca_file=upstream.ca_file,
                insecure_skip_verify=upstream.insecure_skip_verify,
                name=upstream.name,
            )
        except ValueError as e:  # an unreadable or empty CA bundle
            raise ConfigError(self.config.source, [f"upstreams.{upstream.name}.ca_file: {e}"]) from None

    def _loaded_digest(self, name: str) -> Optional[str]:
        loaded = self.generation.filters.get(name)
        return self._wasm.digest_of(loaded) if loaded is not None and self._wasm is not None else None

    def _reload_for(self, why: str) -> None:
        log.info("{why}: reloading", why=why)
        self._reloading = self.reload()
        self._reloading.addErrback(lambda f: None)
        self._reloading.addBoth(lambda _: setattr(self, "_reloading", None))

    def readiness_problems(self) -> list[str]:
        """Why the gateway should not get traffic now (empty: ready)."""
        problems = []
        if not self.running:
            problems.append("not started")
        if self.stopping:
            problems.append("shutting down: draining requests in flight")
        # One dead backend is not a reason to take the gateway, and every
        # other backend behind it, out of the load balancer.
        upstreams = self.generation.upstreams
        down = sorted(name for name, upstream in upstreams.items() if upstream.all_down())
        if upstreams and len(down) == len(upstreams):
            problems.append("every target of every upstream is down (%s)" % ", ".join(down))
        return problems

    # -- life cycle --

    def startService(self) -> None:
        warn_filter_order(self.config)
        if self._wasm is not None:
            self._wasm.start()
        if self.certificates is not None:
            self.certificates.start_watching(self.reactor, self.config.server.tls.watch_interval)
        super().startService()
        if self.access_file is not None:
            self.access_file.start()
        if self.spans is not None:
            self.spans.start()
        self.generation.start_health_checks(self.reactor)
        if self.plugin_watch is not None:
            self.plugin_watch.start()
        self.reactor.callWhenRunning(self._ready)

    def _ready(self) -> None:
        waiting = [l._waitingForPort for l in self.listeners if l._waitingForPort is not None]
        if self.shares_sockets:
            for d in waiting:
                d.addCallback(_accepting_one_at_a_time)
        if self._wasm is not None:
            waiting.append(self._wasm.connect())
        d = defer.gatherResults(waiting, consumeErrors=True)
        d.addCallback(lambda _: self.notifier.ready(f"generation {self.generation.number}"))
        d.addErrback(self._fatal)
        d.chainDeferred(self.when_ready)

    def _fatal(self, failure: Any) -> Any:
        """Something the gateway cannot run without failed at start: stop."""
        error = failure.value
        if isinstance(error, defer.FirstError):
            error = error.subFailure.value
        self.fatal_error = str(error)
        log.critical("cannot start: {error}", error=self.fatal_error)
        if self.reactor.running:
            self.reactor.stop()
        return failure

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        self.stopping = True
        self.notifier.stopping()
        if self.plugin_watch is not None:
            self.plugin_watch.stop()
        # Stop accepting first, then let running requests finish: on this
        # generation and on any a recent reload retired.
        for listener in self.listeners:
            yield listener.stopService()
        self.http.drain()
        generation = self.generation
        running = [generation, *self._retired]
        in_flight = sum(g.in_flight for g in running)
        if in_flight:
            log.info(
                "draining {n} request(s), up to {timeout}s",
                n=in_flight,
                timeout=self.config.server.shutdown_timeout,
            )
        # Requests done on every generation, and their answers flushed.
        drained = defer.gatherResults([g.drained() for g in running] + [self.http.closed()])
        timeout = task.deferLater(self.reactor, self.config.server.shutdown_timeout, lambda: None)
        index, _ = yield defer.race([drained, timeout])
        if index == 1:
            log.warn(
                "shutdown timeout: {n} request(s) cut off", n=sum(g.in_flight for g in running)
            )
            self.http.abort_all()
        yield generation.stop_health_checks()
        if self._wasm is not None:
            self._wasm.runner.close()  # before the filter pool joins its threads
        yield service.MultiService.stopService(self)
        if self.certificates is not None:
            self.certificates.stop_watching()
        if self.access_file is not None:
            self.access_file.close()
        yield generation.close()
        if self._wasm is not None:
            yield self._wasm.stop()
        if self.spans is not None:
            yield threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self.spans.stop)

    def reload(self) -> "defer.Deferred[int]":
        """
        Re-read the config file and swap in a new generation; on any error
        keep the current one. Fires with the new generation number.

        Reloads run one at a time: one asked for while another runs starts
        when it is done (and reads the file as it is then).
        """
        return self.reload_lock.run(self._reload_now)

    @defer.inlineCallbacks
    def _reload_now(self) -> Any:
        self.notifier.reloading()
        self.reopen_logs()
        try:
            prepared = yield self.prepare_reload()
            number = prepared.commit()
        finally:
            self.notifier.ready(f"generation {self.generation.number}")
        return number

    def prepare_reload(self, config: Optional[GatewayConfig] = None) -> "defer.Deferred[PreparedReload]":
        """
        The first step of a reload, for a supervisor that commits only once
        every worker is prepared (hold L{reload_lock} across both): build
        the generation for C{config} (default: the file read again).
        """
        return _reloading.prepare(self, config)  # type: ignore[no-any-return]

    def reopen_logs(self) -> None:
        """Open the access log file again (SIGHUP after logrotate)."""
        if self.access_file is not None:
            self.access_file.reopen()


def _accepting_one_at_a_time(port: Any) -> Any:
    if not accept_one_at_a_time(port):
        log.warn("{port}: cannot accept one connection at a time; bursts may favour one worker", port=port)
    return port


def _span_export(config: GatewayConfig) -> Optional[SpanExport]:
    try:
        return span_export(config.tracing)
    except TracingUnavailable as e:
        raise ConfigError(config.source, [f"tracing: {e}"]) from None


def make_service(
    config_path: str, *, reactor: Any = None, notifier: Optional[Notifier] = None
) -> GatewayService:
    """
    The service twistd runs.

    @raise ConfigError: if the config or a plugin is unusable.
    """
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    config = load_config(config_path)
    return GatewayService(config, reactor=reactor, notifier=notifier)
