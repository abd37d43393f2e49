# -*- test-case-name: tests.test_ops,tests.test_workers -*-
"""
A reload in two steps: L{prepare} builds everything the new config needs
(filters, generation, a certificate store, an access-log file) while the
old one keeps serving; L{PreparedReload.commit} swaps it in, or
L{PreparedReload.abort} lets it go. One process does both at once; a
supervisor prepares every worker before it lets any commit, so a config
that fails anywhere changes nothing anywhere.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from wasmgate.accesslog import FileSink, log_sink
from wasmgate.config import ConfigError, GatewayConfig
from wasmgate.generation import Generation
from wasmgate.tls import CertificateStore

if TYPE_CHECKING:
    from wasmgate.service import GatewayService

log = Logger()


class PreparedReload:
    """A new generation, built and not yet live."""

    def __init__(
        self, service: "GatewayService", config: GatewayConfig, generation: Generation, settings: "NewSettings"
    ) -> None:
        self.service = service
        self.config = config
        self.generation = generation
        self.settings = settings
        self.done = False

    def commit(self) -> int:
        """Make it live; the old generation drains and closes. Its number."""
        assert not self.done
        self.done = True
        gw = self.service
        config, generation = self.config, self.generation
        apply_settings(gw, config, self.settings)
        old, gw.generation, gw.config = gw.generation, generation, config
        generation.inherit_health(old)
        if gw.running:
            generation.start_health_checks(gw.reactor)
        old.stop_health_checks()
        gw.metrics.reloaded(True)
        gw.metrics.config_generation.set(generation.number)
        log.info("config generation {n} is live", n=generation.number)
        gw._retired.add(old)
        retired = old.drained()
        retired.addCallback(lambda _: gw._retired.discard(old))
        retired.addCallback(lambda _: old.close(keep_filters=tuple(generation.filters.values())))
        retired.addCallback(lambda _: [hook() for hook in gw.after_reload])
        retired.addErrback(lambda f: log.failure("closing config generation {n}", f, n=old.number))
        return generation.number

    def abort(self) -> "defer.Deferred[None]":
        """Let it go: what it opened is closed; the live generation is untouched."""
        if self.done:
            return defer.succeed(None)
        self.done = True
        self.settings.close()
        live = tuple(self.service.generation.filters.values())
        return self.generation.close(keep_filters=live)


@defer.inlineCallbacks
def prepare(service: "GatewayService", config: Optional[GatewayConfig] = None) -> Any:
    """
    Build a L{PreparedReload} for C{config} (default: the config file read
    again). On any error the current config stays whole; the error is
    logged and raised.
    """
    if service.certificates is not None:
        service.certificates.reload()  # problems are logged, old pairs kept
    settings = None
    filters: dict[str, Any] = {}
    try:
        if config is None:
            from wasmgate.config import load_config

            config = yield threads.deferToThread(load_config, service.config.source)
        assert config is not None
        warn_restart_only(service.config, config)
        warn_filter_order(config)
        filters = yield threads.deferToThread(service._load_filters, config)
        generation = service._assemble(config, filters)
        settings = prepare_settings(service, config)
    except Exception as e:
        failure = Failure()
        service.metrics.reloaded(False)
        current = tuple(service.generation.filters.values())
        for unused in filters.values():
            if unused not in current:
                unused.close()
        if isinstance(e, ConfigError):
            log.error("reload failed, keeping the current config:\n{errors}", errors=str(e))
        else:
            log.failure("reload failed, keeping the current config", failure)
        raise
    return PreparedReload(service, config, generation, settings)


class NewSettings:
    """What L{prepare_settings} opened for a reload."""

    def __init__(self) -> None:
        self.certificates: Optional[CertificateStore] = None
        self.access_file: Optional[FileSink] = None

    def close(self) -> None:
        if self.certificates is not None:
            self.certificates.close()
        if self.access_file is not None:
            self.access_file.close()


def prepare_settings(service: "GatewayService", config: GatewayConfig) -> NewSettings:
    """
    Build what a reload must open anew (a certificate store, an access log
    file) before anything is swapped, so that a problem keeps the current
    config whole.

    @raise ConfigError: naming the key that cannot be applied.
    """
    from wasmgate._serversetup import certificate_store

    settings = NewSettings()
    current = service.config
    tls, old_tls = config.server.tls, current.server.tls
    if tls is not None and old_tls is not None and (tls != old_tls or config.server.http2 != current.server.http2):
        settings.certificates = certificate_store(config, service._tls_metrics())
    if config.access_log != current.access_log and config.access_log not in ("log", "off"):
        try:
            settings.access_file = FileSink(config.access_log, reactor=service.reactor)
        except OSError as e:
            settings.close()
            raise ConfigError(
                config.source, [f"access_log: cannot open {config.access_log}: {e.strerror}"]
            ) from None
    return settings


def apply_settings(service: "GatewayService", config: GatewayConfig, settings: NewSettings) -> None:
    """
    Apply a reloaded config's process-wide settings: limits and timeouts
    for new requests, the filter thread count, certificates for new
    handshakes, where access-log lines go, the share of traces sampled.
    """
    from wasmgate._serversetup import server_settings

    current = service.config
    for key, value in vars(server_settings(config)).items():
        setattr(service.settings, key, value)
    service.gateway.sample_ratio = config.tracing.sample_ratio if config.tracing and service.spans else 0.0
    if config.filters.threads != current.filters.threads:
        service.filter_pool.adjustPoolsize(maxthreads=config.filters.threads)
    if service._wasm is not None:
        service._wasm.runner.workers = config.filters.threads
        service._wasm.runner.max_queue = config.filters.max_queue
    if settings.certificates is not None:
        assert service._certificate_slot is not None and service.certificates is not None
        old_store, service.certificates = service.certificates, settings.certificates
        service._certificate_slot.store = settings.certificates
        old_store.close()
        if service.running:
            service.certificates.start_watching(service.reactor, config.server.tls.watch_interval)  # type: ignore[union-attr]
    if config.access_log != current.access_log:
        old_file, service.access_file = service.access_file, settings.access_file
        service.access_log = {"log": log_sink, "off": None}.get(config.access_log, service.access_file)
        if service.access_file is not None and service.running:
            service.access_file.start()
        if old_file is not None:
            old_file.close()


def _tracing_export(config: GatewayConfig) -> Any:
    tracing = config.tracing
    return tracing and (tracing.otlp_endpoint, tracing.max_queue, tracing.service_name, tracing.timeout)


RESTART_ONLY: tuple[tuple[str, Callable[[GatewayConfig], Any]], ...] = (
    ("server.listen", lambda c: c.server.listen),
    ("server.tls (on or off)", lambda c: c.server.tls is None),
    ("server.workers", lambda c: c.server.workers),
    ("admin.listen", lambda c: c.admin.listen),
    ("state", lambda c: c.state),
    ("filters.epoch_tick", lambda c: c.filters.epoch_tick),
    ("filters.cache_dir", lambda c: c.filters.cache_dir),
    ("tracing (turning it on; its endpoint, queue, name, timeout)", _tracing_export),
)
"""Settings a reload cannot change in a running process."""


def restart_only_changes(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """The settings that differ and that a running gateway cannot change."""
    changed = [key for key, value in RESTART_ONLY if value(old) != value(new)]
    if old.tracing is not None and new.tracing is None:
        changed.remove("tracing (turning it on; its endpoint, queue, name, timeout)")  # off: at once
    return changed


def warn_restart_only(old: GatewayConfig, new: GatewayConfig) -> None:
    for key in restart_only_changes(old, new):
        log.warn("{key} changed: takes effect only after a restart", key=key)


def warn_filter_order(config: GatewayConfig) -> None:
    """Log what C{wasmgate check} warns of: filters that undo each other's work."""
    from wasmgate.checks import filter_order_warnings

    for warning in filter_order_warnings(config):
        log.warn("{source}: {warning}", source=config.source, warning=warning)
