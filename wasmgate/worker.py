# -*- test-case-name: tests.test_workers -*-
"""
One worker process of a gateway with C{server.workers} above 1: what
C{python -m wasmgate.worker} runs when its supervisor starts it.

A worker is a whole gateway (its own reactor, filter threads and wasm
instances) that accepts on sockets its supervisor opened, counts in the
counter table its supervisor shares, logs as JSON to its supervisor, and
takes reloads in two steps so that all workers change config together.
It stops, draining, on SIGTERM or when its supervisor goes away.

Descriptors: 0 the supervisor's calls, 1 stdout, 2 log events (JSON
lines), 3 this worker's answers and events, then what the start message
names (listening sockets, the counter table).
"""
from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorCore
from twisted.internet.protocol import Protocol
from twisted.internet.stdio import StandardIO
from twisted.logger import Logger, globalLogBeginner, jsonFileLogObserver
from twisted.python.failure import Failure

from wasmgate._control import Control
from wasmgate._reloading import PreparedReload
from wasmgate.config import ConfigError, parse_config
from wasmgate.service import GatewayService

log = Logger()

CALLS_IN = 0
LOG_OUT = 2
ANSWERS_OUT = 3


class WorkerControl(Protocol):
    """The worker's end of its supervisor's channel."""

    def __init__(self, service: GatewayService, reactor: IReactorCore) -> None:
        self.service = service
        self.reactor = reactor
        self._prepared: Optional[PreparedReload] = None
        self.control = Control(
            lambda data: self.transport.write(data),  # type: ignore[union-attr]
            handlers={
                "prepare": self.prepare,
                "commit": self.commit,
                "abort": self.abort,
                "reopen": self.reopen,
                "metrics": self.metrics,
                "readiness": self.service.readiness_problems,
            },
        )

    def dataReceived(self, data: bytes) -> None:
        self.control.data_received(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.control.lost()
        if not self.service.stopping and self.reactor.running:
            log.warn("the supervisor went away: stopping")
            self.reactor.stop()

    @defer.inlineCallbacks
    def prepare(self, config: str, source: str) -> Any:
        """Build the generation for C{config} and hold the reload lock until commit or abort."""
        yield self.service.reload_lock.acquire()
        try:
            parsed = parse_config(config.encode("utf-8", "surrogateescape"), source=source)
            self._prepared = yield self.service.prepare_reload(parsed)
        except BaseException:
            self.service.reload_lock.release()
            raise
        return None

    def commit(self) -> int:
        prepared, self._prepared = self._prepared, None
        if prepared is None:
            raise ConfigError("<control>", ["commit without a prepared reload"])
        try:
            return prepared.commit()
        finally:
            self.service.reload_lock.release()

    def abort(self) -> "defer.Deferred[None]":
        prepared, self._prepared = self._prepared, None
        if prepared is None:
            return defer.succeed(None)
        self.service.reload_lock.release()
        return prepared.abort()

    def reopen(self) -> None:
        """SIGHUP at the supervisor: the access log and the certificate files, again."""
        self.service.reopen_logs()
        if self.service.certificates is not None:
            self.service.certificates.reload()  # problems are logged, old pairs kept

    def metrics(self) -> str:
        from prometheus_client.exposition import generate_latest

        return generate_latest(self.service.metrics.registry).decode("utf-8")


def _read_start() -> dict:
    """The supervisor's first line: what this worker is to run (read before the reactor)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(CALLS_IN, 65536)
        if not chunk:
            raise SystemExit("wasmgate worker: no start message (run by the supervisor only)")
        data += chunk
    return json.loads(data)  # type: ignore[no-any-return]


def _tell(event: str, **args: Any) -> None:
    """An event to the supervisor before the channel's protocol runs."""
    os.write(ANSWERS_OUT, json.dumps({"event": event, **args}).encode("utf-8") + b"\n")


def main() -> None:
    start = _read_start()
    log_file = open(LOG_OUT, "w", encoding="utf-8", buffering=1, closefd=False)
    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(log_file, recordSeparator="")], redirectStandardIO=True)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the supervisor
    from wasmgate.twistd import GarbageCollection, use_gateway_reactor

    use_gateway_reactor()
    from twisted.internet import reactor

    from wasmgate.sharedcounters import SharedCounterStore

    try:
        config = parse_config(start["config"].encode("utf-8", "surrogateescape"), source=start["source"])
        counters = SharedCounterStore.attach(start["counters"]) if start.get("counters") is not None else None
        service = GatewayService(
            config,
            reactor=reactor,
            inherited=[(fd, family) for fd, family in start["listen"]],
            counters=counters,
            admin=False,
            watch_plugins=False,
        )
    except ConfigError as e:
        _tell("fatal", error=str(e), config=True)
        raise SystemExit(1)
    GarbageCollection(service).setServiceParent(service)
    worker = WorkerControl(service, reactor)
    StandardIO(worker, stdin=CALLS_IN, stdout=ANSWERS_OUT, reactor=reactor)
    service.when_ready.addCallbacks(
        lambda _: worker.control.event("ready", pid=os.getpid()),
        lambda f: worker.control.event("fatal", error=service.fatal_error or f.getErrorMessage(), config=False),
    )
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    sys.exit(1 if service.fatal_error else 0)


if __name__ == "__main__":
    main()
