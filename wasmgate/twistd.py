# -*- test-case-name: tests.test_cli -*-
"""
What C{twistd wasmgate} runs: the service, a refusal to start on a bad
config or a port it cannot listen on, and SIGHUP wired to reload.
"""
from __future__ import annotations

import gc
import os
import signal
import sys
from typing import Any

from twisted.application import service
from twisted.logger import Logger

from wasmgate._listen import ListenerRefused, name_refusals
from wasmgate.config import ConfigError
from wasmgate.service import GatewayService
from wasmgate.systemd import Notifier

log = Logger()


class _Signals(service.Service):
    """
    SIGHUP reloads the config; SIGTERM and SIGINT stop gracefully and the
    process exits 0 (Twisted's own handlers would re-raise the signal).
    Installed once the reactor runs, after Twisted's.
    """

    def __init__(self, gateway: Any, reactor: Any) -> None:
        self.gateway = gateway
        self.reactor = reactor
        self._shutting_down = False

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        signal.signal(signal.SIGHUP, self._hup)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)

    def _hup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._reload)

    def _stop(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._shutdown, signal.Signals(signum).name)

    def _shutdown(self, name: str) -> None:
        if self._shutting_down:
            # A second signal (systemd, or a shell's "kill 0") while the
            # drain runs: the first one is already being acted on.
            log.info("{signal}: already shutting down", signal=name)
            return
        self._shutting_down = True
        log.info("{signal}: shutting down gracefully", signal=name)
        if self.reactor.running:
            self.reactor.stop()

    def _reload(self) -> None:
        self.gateway.reload().addErrback(lambda failure: None)  # logged by reload


class GarbageCollection(service.Service):
    """
    The process-wide garbage collector, tuned for a long-running server
    (only here, in the process twistd runs, never in a library user's):
    once started, everything built so far (modules, config, code) is frozen
    out of collections, and young-generation collections run every 10,000
    allocations instead of 700. Measured under load this halves the time
    spent collecting (which showed as filters overrunning their deadlines
    when a collection ran inside one). After a reload the old generation is
    let go and the survivors are frozen again.
    """

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    def startService(self) -> None:
        super().startService()
        gc.set_threshold(10_000, 20, 20)
        from twisted.internet import reactor

        reactor.callWhenRunning(self._freeze)
        self.gateway.after_reload.append(self._refreeze)

    def _freeze(self) -> None:
        gc.collect()
        gc.freeze()

    def _refreeze(self) -> None:
        gc.unfreeze()
        self._freeze()


def use_gateway_reactor() -> None:
    """
    Run on L{wasmgate._reactor.EagerWriteReactor} (epoll, writes at the end
    of each loop iteration), unless a reactor is installed already
    (C{twistd -r NAME}) or epoll is missing. Call before anything imports
    C{twisted.internet.reactor}.
    """
    try:
        from wasmgate._reactor import install_unless_chosen
    except ImportError:  # no epoll on this system
        return
    install_unless_chosen()


def make_twistd_service(config_path: str) -> service.IService:
    from twisted.internet import reactor

    try:
        gateway = _gateway_or_supervisor(config_path, reactor)
    except ConfigError as e:
        sys.stderr.write(f"wasmgate: refusing to start, the configuration has errors:\n{e}\n")
        sys.stderr.flush()
        raise SystemExit(1)
    for key, listener in _listeners_by_key(gateway):
        name_refusals(listener, key)
    _print_refusals_in_one_line()
    _Signals(gateway, reactor).setServiceParent(gateway)
    if isinstance(gateway, GatewayService):  # a supervisor runs no filters: nothing to tune
        GarbageCollection(gateway).setServiceParent(gateway)
    reactor.addSystemEventTrigger("after", "shutdown", _exit_if_failed, gateway)
    return gateway


def _gateway_or_supervisor(config_path: str, reactor: Any) -> Any:
    """
    One gateway process, or with C{server.workers} above 1 a supervisor of
    that many (which reads the config once and hands its text to them).

    @raise ConfigError: if the config is unusable.
    """
    from wasmgate.config import parse_config

    try:
        with open(config_path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(config_path, [f"cannot read the config file: {e.strerror}"])
    config = parse_config(text, source=config_path)
    if config.server.worker_count() <= 1:
        return GatewayService(config, reactor=reactor, notifier=Notifier())
    from wasmgate._serversetup import raise_fd_limit
    from wasmgate.supervisor import SupervisorService

    raise_fd_limit()
    return SupervisorService(config, text, reactor=reactor, notifier=Notifier())


def _listeners_by_key(gateway: Any) -> list[tuple[str, service.IService]]:
    """The gateway's listening services with their config keys (it keeps them in config order)."""
    listeners = gateway.listeners if isinstance(gateway, GatewayService) else []
    keyed = [(f"server.listen[{i}]", listener) for i, listener in enumerate(listeners)]
    admin = getattr(gateway, "admin", None)
    if admin is not None:
        keyed.append(("admin.listen", admin))
    return keyed


def _print_refusals_in_one_line() -> None:
    """
    A listener that cannot listen stops twistd as it starts the services
    (which removes its pid file and tells a daemon's parent); what reaches
    the terminal is one line naming the config key, exit status 1, instead
    of a traceback. Only in the process twistd runs.
    """
    previous = sys.excepthook

    def excepthook(kind: Any, value: BaseException, traceback: Any) -> None:
        if isinstance(value, ListenerRefused):
            stderr = sys.__stderr__  # twistd sent sys.stderr to its log
            if stderr is not None:
                stderr.write(f"wasmgate: cannot start: {value}\n")
                stderr.flush()
            return
        previous(kind, value, traceback)

    sys.excepthook = excepthook


def _exit_if_failed(gateway: Any) -> None:
    """twistd exits 0 whatever stopped the reactor: not after a failed start."""
    if gateway.fatal_error is not None:
        sys.stderr.write(f"wasmgate: cannot start: {gateway.fatal_error}\n")
        sys.stderr.flush()
        os._exit(1)
