# -*- test-case-name: tests.test_workers -*-
"""
A gateway of several worker processes (C{server.workers} above 1), run by
a supervisor: the process twistd runs and systemd watches. It opens the
listening sockets (or takes systemd's) and the shared counter table, starts
the workers and restarts those that die (backing off from one that keeps
dying), reloads them all together, serves the admin port for the whole
gateway, and drains them all on SIGTERM. It never runs a filter nor
proxies a request.
"""
from __future__ import annotations

from typing import Any, Optional

from twisted.application import service, strports
from twisted.internet import defer, task, threads
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import Logger
from twisted.python.failure import Failure

from wasmgate._control import ControlError
from wasmgate._metricsmerge import MetricsMerge, WorkerPage, render
from wasmgate._pluginwatch import PluginWatch
from wasmgate._reloading import restart_only_changes, warn_filter_order
from wasmgate._sharedlisteners import SharedListeners
from wasmgate._supervisormetrics import SupervisorMetrics
from wasmgate._workerprocess import WorkerSlot
from wasmgate.config import ConfigError, GatewayConfig, PluginConfig, parse_config
from wasmgate.systemd import Notifier

log = Logger()

HEALTHY_RUN = 10.0
"""A worker that ran this long before dying is restarted at once (after 0.1 s)."""
MAX_DELAY = 30.0


class SupervisorService(service.MultiService):
    """The supervisor of C{config.server.worker_count()} workers."""

    def __init__(
        self, config: GatewayConfig, config_text: bytes, *, reactor: Any, notifier: Optional[Notifier] = None
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.config = config
        self.config_text = config_text
        self.notifier = notifier if notifier is not None else Notifier(environ={})
        self.generation = 1
        self.stopping = False
        self.fatal_error: Optional[str] = None
        self.ever_ready = False
        self.when_ready: defer.Deferred[None] = defer.Deferred()
        """Fires once every worker is ready for the first time."""
        self.reload_lock = defer.DeferredLock()
        self.counters = None
        if config.state.backend == "memory":
            from wasmgate.sharedcounters import SharedCounterStore

            self.counters = SharedCounterStore.create(max_keys=config.state.max_keys)
        self.listeners = SharedListeners(config, reactor=reactor)
        self.listeners.setServiceParent(self)
        self.slots = [
            WorkerSlot(i, on_event=self._worker_event, on_exit=self._worker_exit)
            for i in range(config.server.worker_count())
        ]
        self.merge = MetricsMerge(drop=("wasmgate_config_generation", "wasmgate_reloads"))
        self.metrics = SupervisorMetrics(self)
        self._all_stopped: Optional[defer.Deferred[None]] = None
        self._source: Optional[Any] = None
        self.plugin_watch = PluginWatch(
            config=lambda: self.config,
            fetch=self._fetch_plugin,
            digest=lambda name: None,
            changed=self._reload_for,
            busy=lambda: self.reload_lock.locked,
            clock=reactor,
        )
        if config.admin.listen:
            from wasmgate.admin import AdminResource, admin_site

            self.admin = strports.service(
                config.admin.listen, admin_site(AdminResource(gateway=self), reactor=reactor), reactor=reactor
            )
            self.admin.setServiceParent(self)

    # -- life cycle --

    def startService(self) -> None:
        warn_filter_order(self.config)
        super().startService()
        log.info("starting {n} workers", n=len(self.slots))
        for slot in self.slots:
            self._spawn(slot)
        self.plugin_watch.start()

    def _spawn(self, slot: WorkerSlot) -> None:
        slot.restart_call = None
        if self.stopping:
            return
        inherited = self.listeners.filenos()
        counters = None
        if self.counters is not None:
            counters = len(inherited)
            inherited = [*inherited, self.counters.fileno()]
        start = {
            "index": slot.index,
            "source": self.config.source,
            "config": self.config_text.decode("utf-8", "surrogateescape"),
            "listen": [[4 + i, family] for i, family in enumerate(self.listeners.families())],
            "counters": None if counters is None else 4 + counters,
        }
        slot.spawn(self.reactor, start=start, inherited=inherited, config_text=self.config_text, now=self.reactor.seconds())
        log.info("worker {i} started (pid {pid})", i=slot.index, pid=slot.pid)

    def _worker_event(self, slot: WorkerSlot, name: str, args: dict) -> None:
        if name == "ready":
            slot.state = "ready"
            log.info("worker {i} ready (pid {pid})", i=slot.index, pid=slot.pid)
            if slot.config_text != self.config_text:
                self._catch_up(slot)
            if not self.ever_ready and all(s.state == "ready" for s in self.slots):
                self.ever_ready = True
                self.notifier.ready(f"generation {self.generation}, {len(self.slots)} workers")
                self.when_ready.callback(None)
        elif name == "fatal":
            log.error("worker {i} cannot start: {error}", i=slot.index, error=args.get("error"))
            if args.get("config") and not self.ever_ready:
                # The config itself is unusable (a plugin that does not
                # load): every worker would fail alike; stop, as one
                # process would.
                self.fatal_error = args.get("error") or "a worker cannot start"
                if self.reactor.running:
                    self.reactor.stop()

    def _worker_exit(self, slot: WorkerSlot, reason: Failure) -> None:
        if slot.page is not None:
            self.merge.retire(slot.page)
            slot.requests_carried += slot.page.total("http_requests_total")
            slot.page = None
        if self.stopping:
            if self._all_stopped is not None and not any(s.alive for s in self.slots):
                self._all_stopped.callback(None)
            return
        if self.fatal_error is not None:
            return
        ran = self.reactor.seconds() - slot.started_at
        slot.delay = 0.1 if ran >= HEALTHY_RUN or not slot.delay else min(MAX_DELAY, slot.delay * 2)
        slot.restarts += 1
        log.error(
            "worker {i} (pid {pid}) {how} after {ran:.1f}s; restarting it in {delay:.1f}s",
            i=slot.index, pid=slot.pid, how=_how(reason), ran=ran, delay=slot.delay,
        )
        slot.restart_call = self.reactor.callLater(slot.delay, self._spawn, slot)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        self.stopping = True
        self.notifier.stopping()
        self.plugin_watch.stop()
        for slot in self.slots:
            if slot.restart_call is not None and slot.restart_call.active():
                slot.restart_call.cancel()
        if any(s.alive for s in self.slots):
            log.info("stopping {n} workers: each drains its requests", n=sum(s.alive for s in self.slots))
            self._all_stopped = defer.Deferred()
            for slot in self.slots:
                slot.state = "stopping" if slot.alive else slot.state
                slot.signal("TERM")
            grace = task.deferLater(self.reactor, self.config.server.shutdown_timeout + 5, lambda: None)
            index, _ = yield defer.race([self._all_stopped, grace])
            if index == 1:
                log.warn("workers still running after the shutdown timeout: killing them")
                for slot in self.slots:
                    slot.signal("KILL")
        yield service.MultiService.stopService(self)
        if self.counters is not None:
            self.counters.close()

    # -- reload --

    def reload(self) -> "defer.Deferred[int]":
        """
        Read the config file again and move every worker to it, or none: each
        prepares the new generation, and only when all have does any commit.
        Fires with the new generation number.
        """
        return self.reload_lock.run(self._reload_now)

    @defer.inlineCallbacks
    def _reload_now(self) -> Any:
        self.notifier.reloading()
        # What a SIGHUP does whatever the config says: logs reopened (after
        # logrotate), certificate files read again.
        alive = [s for s in self.slots if s.alive]
        yield defer.DeferredList([s.call("reopen") for s in alive], consumeErrors=True)
        try:
            try:
                text, config = yield threads.deferToThread(_read_config, self.config.source)
                changed = restart_only_changes(self.config, config)
                if changed:
                    # One process would warn and go on; here a worker that
                    # restarts would pick them up and differ from the rest.
                    raise ConfigError(
                        config.source,
                        [f"{key} changed: restart the gateway to change it (with workers, a reload cannot)" for key in changed],
                    )
                warn_filter_order(config)
                restarted = yield self._move([s for s in self.slots if s.alive], text)
            except Exception as e:
                self.metrics.reloads["error"] += 1
                if isinstance(e, ConfigError):
                    log.error("reload failed, every worker keeps the current config:\n{errors}", errors=str(e))
                else:
                    log.error("reload failed, every worker keeps the current config: {error}", error=e)
                raise
            self.config, self.config_text = config, text
            self.generation += 1
            self.metrics.reloads["ok"] += 1
            if restarted:
                log.warn(
                    "config generation {n} is live; worker(s) {which} failed to commit it and restart on it",
                    n=self.generation, which=", ".join(str(s.index) for s in restarted),
                )
            else:
                log.info("config generation {n} is live in every worker", n=self.generation)
            for slot in self.slots:
                if slot.state == "ready" and slot.config_text != text:
                    self._catch_up(slot)
            return self.generation
        finally:
            self.notifier.ready(f"generation {self.generation}, {len(self.slots)} workers")

    @defer.inlineCallbacks
    def _move(self, slots: list[WorkerSlot], text: bytes) -> Any:
        """
        Prepare C{slots} for C{text}, then commit all (or abort all). Fires
        with the slots that failed to commit (they are being restarted).
        """
        source = self.config.source
        decoded = text.decode("utf-8", "surrogateescape")
        results = yield defer.DeferredList(
            [s.call("prepare", config=decoded, source=source) for s in slots], consumeErrors=True
        )
        prepared = [s for s, (ok, _) in zip(slots, results) if ok]
        problems = [r for s, (ok, r) in zip(slots, results) if not ok and s.alive]
        if problems:
            yield defer.DeferredList([s.call("abort") for s in prepared], consumeErrors=True)
            error = problems[0].value
            if isinstance(error, ControlError) and error.problems:
                raise ConfigError.of_lines(source, error.problems)
            raise error
        commits = yield defer.DeferredList([s.call("commit") for s in prepared], consumeErrors=True)
        restarted = []
        for slot, (ok, result) in zip(prepared, commits):
            if ok:
                slot.config_text = text
            elif slot.alive:
                # Prepared but not committed: its state is unknown, and a
                # worker that differs from the rest must not serve. A fresh
                # one starts on the new config.
                log.error(
                    "worker {i} (pid {pid}) failed to commit generation: {error}; restarting it",
                    i=slot.index, pid=slot.pid, error=result.getErrorMessage(),
                )
                slot.state = "stopping"  # (not ready, and no catch-up while it drains)
                slot.signal("TERM")
                restarted.append(slot)
        return restarted

    def _catch_up(self, slot: WorkerSlot) -> None:
        """A worker started on a config a reload has since replaced: move it too."""

        def move() -> Any:
            if slot.state != "ready" or slot.config_text == self.config_text:
                return None
            return self._move([slot], self.config_text)

        d = self.reload_lock.run(move)
        d.addErrback(
            lambda f: log.error(
                "worker {i} cannot take the current config: {error}", i=slot.index, error=f.getErrorMessage()
            )
        )

    def _reload_for(self, why: str) -> None:
        log.info("{why}: reloading every worker", why=why)
        self.reload().addErrback(lambda f: None)

    def _fetch_plugin(self, plugin: PluginConfig) -> "defer.Deferred[bytes]":
        if self._source is None:
            from wasmgate.sources import PluginSource

            self._source = PluginSource(reactor=self.reactor, cache_dir=None)
        return self._source.fetch(plugin)

    # -- the admin port --

    @defer.inlineCallbacks
    def readiness_problems(self) -> Any:
        problems = []
        if self.stopping:
            problems.append("shutting down: draining requests in flight")
        ready = [s for s in self.slots if s.state == "ready"]
        problems += [f"worker {s.index}: {s.state}" for s in self.slots if s.state != "ready"]
        answers = yield defer.DeferredList(
            [s.call("readiness", timeout=5, reactor=self.reactor) for s in ready], consumeErrors=True
        )
        for slot, (ok, result) in zip(ready, answers):
            if not ok:
                problems.append(f"worker {slot.index}: not answering")
            else:
                problems += [p for p in result if p not in problems]
        return problems

    @defer.inlineCallbacks
    def metrics_page(self) -> Any:
        """The whole gateway's metrics: every worker's, added up, and the supervisor's."""
        ready = [s for s in self.slots if s.state == "ready"]
        answers = yield defer.DeferredList(
            [s.call("metrics", timeout=5, reactor=self.reactor) for s in ready], consumeErrors=True
        )
        for slot, (ok, text) in zip(ready, answers):
            if ok:
                slot.page = WorkerPage(text)
        pages = [s.page for s in self.slots if s.page is not None]
        return render(self.merge.families(pages) + self.metrics.families())


def _read_config(path: str) -> tuple[bytes, GatewayConfig]:
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, [f"cannot read the config file: {e.strerror}"])
    return text, parse_config(text, source=path)


def _how(reason: Failure) -> str:
    error = reason.value
    if isinstance(error, ProcessTerminated) and error.signal is not None:
        return f"was killed by signal {error.signal}"
    if isinstance(error, (ProcessDone, ProcessTerminated)):
        return f"exited with status {error.exitCode}"
    return str(error)

