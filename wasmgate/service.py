# -*- test-case-name: tests.test_ops -*-
"""
The gateway as a Twisted service: listeners, admin site, filter thread
pool, epoch ticker; reload swaps generations; stop drains.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, Optional

from twisted.application import service, strports
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from wasmgate.accesslog import AccessSink, FileSink, access_line, log_sink
from wasmgate.config import ConfigError, GatewayConfig, UpstreamConfig, load_config
from wasmgate.filterpool import FilterThreadPool
from wasmgate.generation import Generation, build_generation
from wasmgate.http.message import RequestRecord
from wasmgate.http.factory import HTTPServerFactory, ServerSettings
from wasmgate.metrics import GatewayMetrics
from wasmgate.systemd import Notifier
from wasmgate.tls import (
    CertificateError,
    CertificateSlot,
    CertificateStore,
    TLSMetrics,
    certificate_specs,
    tls_endpoint,
)
from wasmgate.proxy import Gateway
from wasmgate.tracing import SpanCollector, SpanExport, TracingUnavailable, span_export

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
        self, config: GatewayConfig, *, reactor: Any, notifier: Optional[Notifier] = None
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.notifier = notifier if notifier is not None else Notifier(environ={})
        self.config = config
        self.filter_pool = FilterThreadPool(
            minthreads=0, maxthreads=config.filters.threads, name="wasmgate-filters"
        )
        self._wasm: Optional[Any] = None
        self._generations = 0
        self._plugin_watch = task.LoopingCall(self._check_plugins)
        self._plugin_watch.clock = reactor
        self._plugin_stamps: dict[str, tuple[float, int]] = {}
        self._reloading: Optional[defer.Deferred[Any]] = None
        self._reload_lock = defer.DeferredLock()
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
        self.settings = _server_settings(config)
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
            self.certificates = _certificate_store(config, self._tls_metrics())
            self._certificate_slot = CertificateSlot(self.certificates)
        self.listeners = []
        for i, description in enumerate(config.server.listen):
            try:
                endpoint = endpoints.serverFromString(reactor, _with_backlog(description))
            except (ValueError, KeyError, IndexError, TypeError) as e:
                why = str(e) or type(e).__name__
                if description.startswith("systemd:") and isinstance(e, (KeyError, IndexError)):
                    why = "systemd passed no such socket (LISTEN_FDS); is the wasmgate.socket unit active?"
                raise ConfigError(
                    config.source, [f"server.listen[{i}]: cannot listen on {description!r}: {why}"]
                ) from None
            if self._certificate_slot is not None:
                endpoint = tls_endpoint(endpoint, self._certificate_slot)
            listener = StreamServerEndpointService(endpoint, self.http)
            listener._raiseSynchronously = True  # a busy port stops the start, as with strports
            listener.setServiceParent(self)
            self.listeners.append(listener)
        if config.admin.listen:
            from wasmgate.admin import AdminResource, admin_site

            admin = strports.service(
                config.admin.listen,
                admin_site(AdminResource(gateway=self), reactor=reactor),
                reactor=reactor,
            )
            admin.setServiceParent(self)
            self.admin = admin

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
                config, reactor=self.reactor, pool=self.filter_pool, observer=self.metrics
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

    def _plugin_watch_interval(self) -> float:
        intervals = [p.reload_interval for p in self.config.plugins if p.reload_interval]
        return min(intervals, default=1.0)

    def _check_plugins(self) -> None:
        """
        Reload when a watched plugin changed: a file by mtime or size, a
        URL by fetching it every C{reload_interval} and comparing sha256
        (the runtime reuses filters whose bytes are the same). A failed
        fetch keeps the current module.
        """
        if self._reloading is not None:
            return
        now = self.reactor.seconds()
        changed = False
        for plugin in self.config.plugins:
            if not plugin.reload_interval:
                continue
            if "://" in plugin.path:
                last = self._plugin_stamps.setdefault(plugin.name, (now, 0))[0]
                if now - last >= plugin.reload_interval:
                    self._plugin_stamps[plugin.name] = (now, 0)
                    self._check_remote(plugin)
                continue
            try:
                st = os.stat(plugin.path)
            except OSError:
                continue
            stamp = (st.st_mtime, st.st_size)
            if self._plugin_stamps.setdefault(plugin.name, stamp) != stamp:
                self._plugin_stamps[plugin.name] = stamp
                changed = True
        if changed:
            self._reload_for("a plugin file changed")

    def _check_remote(self, plugin: Any) -> None:
        assert self._wasm is not None
        loaded = self.generation.filters.get(plugin.name)
        current = self._wasm.digest_of(loaded) if loaded is not None else None

        def compare(data: bytes) -> None:
            if hashlib.sha256(data).hexdigest() != current and self._reloading is None:
                self._reload_for(f"plugin {plugin.name} changed at {plugin.path}")

        def failed(reason: Any) -> None:
            log.warn(
                "plugin {name}: fetching {url} failed, keeping the current module: {error}",
                name=plugin.name, url=plugin.path, error=reason.getErrorMessage(),
            )

        self._wasm.source.fetch(plugin).addCallbacks(compare, failed)

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
        _warn_filter_order(self.config)
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
        self._plugin_watch.start(self._plugin_watch_interval(), now=True)
        self.reactor.callWhenRunning(self._ready)

    def _ready(self) -> None:
        waiting = [l._waitingForPort for l in self.listeners if l._waitingForPort is not None]
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
        if self._plugin_watch.running:
            self._plugin_watch.stop()
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
        return self._reload_lock.run(self._reload_now)

    @defer.inlineCallbacks
    def _reload_now(self) -> Any:
        path = self.config.source
        self.notifier.reloading()
        if self.access_file is not None:
            self.access_file.reopen()  # SIGHUP after logrotate
        try:
            number = yield self._reload(path)
        finally:
            self.notifier.ready(f"generation {self.generation.number}")
        return number

    @defer.inlineCallbacks
    def _reload(self, path: str) -> Any:
        if self.certificates is not None:
            self.certificates.reload()  # problems are logged, old pairs kept
        settings = None
        filters: dict[str, Any] = {}
        try:
            config = yield threads.deferToThread(load_config, path)
            _warn_restart_only(self.config, config)
            _warn_filter_order(config)
            filters = yield threads.deferToThread(self._load_filters, config)
            generation = self._assemble(config, filters)
            settings = self._prepare_settings(config)
        except Exception as e:
            failure = Failure()
            self.metrics.reloaded(False)
            current = tuple(self.generation.filters.values())
            for unused in filters.values():
                if unused not in current:
                    unused.close()
            if isinstance(e, ConfigError):
                log.error("reload failed, keeping the current config:\n{errors}", errors=str(e))
            else:
                log.failure("reload failed, keeping the current config", failure)
            raise
        self._apply_settings(config, settings)
        old, self.generation, self.config = self.generation, generation, config
        generation.inherit_health(old)
        if self.running:
            generation.start_health_checks(self.reactor)
        old.stop_health_checks()
        self.metrics.reloaded(True)
        self.metrics.config_generation.set(generation.number)
        log.info("config generation {n} is live", n=generation.number)
        self._retired.add(old)
        retired = old.drained()
        retired.addCallback(lambda _: self._retired.discard(old))
        retired.addCallback(lambda _: old.close(keep_filters=tuple(generation.filters.values())))
        retired.addCallback(lambda _: [hook() for hook in self.after_reload])
        retired.addErrback(lambda f: log.failure("closing config generation {n}", f, n=old.number))
        return generation.number

    # -- process-wide settings a reload changes --

    def _prepare_settings(self, config: GatewayConfig) -> "_NewSettings":
        """
        Build what a reload must open anew (a certificate store, an access
        log file) before anything is swapped, so that a problem keeps the
        current config whole.

        @raise ConfigError: naming the key that cannot be applied.
        """
        settings = _NewSettings()
        tls, old_tls = config.server.tls, self.config.server.tls
        if tls is not None and old_tls is not None and (
            tls != old_tls or config.server.http2 != self.config.server.http2
        ):
            settings.certificates = _certificate_store(config, self._tls_metrics())
        if config.access_log != self.config.access_log and config.access_log not in ("log", "off"):
            try:
                settings.access_file = FileSink(config.access_log, reactor=self.reactor)
            except OSError as e:
                if settings.certificates is not None:
                    settings.certificates.close()
                raise ConfigError(
                    config.source, [f"access_log: cannot open {config.access_log}: {e.strerror}"]
                ) from None
        return settings

    def _apply_settings(self, config: GatewayConfig, settings: "_NewSettings") -> None:
        """
        Apply a reloaded config's process-wide settings: limits and timeouts
        for new requests, the filter thread count, certificates for new
        handshakes, where access-log lines go.
        """
        new = _server_settings(config)
        for key, value in vars(new).items():
            setattr(self.settings, key, value)
        self.gateway.sample_ratio = config.tracing.sample_ratio if config.tracing and self.spans else 0.0
        if config.filters.threads != self.config.filters.threads:
            self.filter_pool.adjustPoolsize(maxthreads=config.filters.threads)
        if self._wasm is not None:
            self._wasm.runner.workers = config.filters.threads
            self._wasm.runner.max_queue = config.filters.max_queue
        if settings.certificates is not None:
            assert self._certificate_slot is not None and self.certificates is not None
            old_store, self.certificates = self.certificates, settings.certificates
            self._certificate_slot.store = settings.certificates
            old_store.close()
            if self.running:
                self.certificates.start_watching(self.reactor, config.server.tls.watch_interval)  # type: ignore[union-attr]
        if config.access_log != self.config.access_log:
            old_file, self.access_file = self.access_file, settings.access_file
            self.access_log = {"log": log_sink, "off": None}.get(config.access_log, self.access_file)
            if self.access_file is not None and self.running:
                self.access_file.start()
            if old_file is not None:
                old_file.close()


class _NewSettings:
    """What L{GatewayService._prepare_settings} opened for a reload."""

    def __init__(self) -> None:
        self.certificates: Optional[CertificateStore] = None
        self.access_file: Optional[FileSink] = None


def _tracing_export(config: GatewayConfig) -> Any:
    tracing = config.tracing
    return tracing and (tracing.otlp_endpoint, tracing.max_queue, tracing.service_name, tracing.timeout)


_RESTART_ONLY = (
    ("server.listen", lambda c: c.server.listen),
    ("server.tls (on or off)", lambda c: c.server.tls is None),
    ("admin.listen", lambda c: c.admin.listen),
    ("state", lambda c: c.state),
    ("filters.epoch_tick", lambda c: c.filters.epoch_tick),
    ("filters.cache_dir", lambda c: c.filters.cache_dir),
    ("tracing (turning it on; its endpoint, queue, name, timeout)", _tracing_export),
)
"""Settings a reload cannot change in a running process."""


def _warn_filter_order(config: GatewayConfig) -> None:
    """Log what C{wasmgate check} warns of: filters that undo each other's work."""
    from wasmgate.checks import filter_order_warnings

    for warning in filter_order_warnings(config):
        log.warn("{source}: {warning}", source=config.source, warning=warning)


def _warn_restart_only(old: GatewayConfig, new: GatewayConfig) -> None:
    for key, value in _RESTART_ONLY:
        if value(old) != value(new):
            log.warn("{key} changed: takes effect only after a restart", key=key)


def _span_export(config: GatewayConfig) -> Optional[SpanExport]:
    try:
        return span_export(config.tracing)
    except TracingUnavailable as e:
        raise ConfigError(config.source, [f"tracing: {e}"]) from None


def _server_settings(config: GatewayConfig) -> ServerSettings:
    server = config.server
    return ServerSettings(
        max_body_bytes=server.max_body_bytes,
        read_timeout=server.timeouts.read,
        idle_timeout=server.timeouts.idle,
        write_timeout=server.timeouts.write,
        max_connections=server.max_connections or default_max_connections(),
        banner=server.banner.encode("ascii") if server.banner else None,
        http2=server.http2,
        h2c=server.h2c,
        max_concurrent_streams=server.max_concurrent_streams,
    )


def raise_fd_limit() -> int:
    """
    Raise this process's open-file limit to its hard limit where it may (a
    gateway holds two descriptors per request in flight); the limit now.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def default_max_connections() -> int:
    """
    C{server.max_connections} when not set: half the file descriptors left
    after a reserve (each client connection may need an upstream one too),
    so the gateway turns clients away before it runs out of descriptors.
    """
    return max(64, (raise_fd_limit() - 256) // 2)


def _with_backlog(description: str) -> str:
    """
    A TCP listener gets nginx's accept backlog (511) unless the endpoint
    string sets one: Twisted's default of 50 drops SYNs when hundreds of
    clients connect at once, and they retry only after a second.
    """
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return description + ":backlog=511"
    return description


def _certificate_store(config: GatewayConfig, metrics: TLSMetrics) -> CertificateStore:
    tls = config.server.tls
    assert tls is not None
    try:
        return CertificateStore(
            certificate_specs(tls),
            min_version=tls.min_version,
            metrics=metrics,
            alpn_protocols=(b"h2", b"http/1.1") if config.server.http2 else (b"http/1.1",),
        )
    except CertificateError as e:
        raise ConfigError(config.source, [f"server.tls: {p}" for p in e.problems]) from None


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
