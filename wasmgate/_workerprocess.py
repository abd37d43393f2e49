# -*- test-case-name: tests.test_workers -*-
"""
A supervisor's hold on one worker process: starting it with what it needs
(the start message, the descriptors it inherits), the control channel to
it, and relaying what it logs into the supervisor's log as the worker's.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure

import wasmgate
from wasmgate._control import Control, ControlError
from wasmgate._metricsmerge import WorkerPage

log = Logger()

_NOT_INHERITED = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID")
"""systemd talks to the supervisor only."""

FIRST_INHERITED_FD = 4


class WorkerSlot:
    """
    Worker number C{index}: the process running now (if any) and what the
    supervisor knows of it. A restarted worker takes the same slot.
    """

    def __init__(self, index: int, *, on_event: Callable[["WorkerSlot", str, dict], None], on_exit: Callable[["WorkerSlot", Failure], None]) -> None:
        self.index = index
        self.state = "down"
        """C{starting}, C{ready}, C{stopping} or C{down}."""
        self.pid: Optional[int] = None
        self.config_text: Optional[bytes] = None
        """The config the running process was started or last reloaded with."""
        self.started_at = 0.0
        self.restarts = 0
        self.delay = 0.0
        """Wait before the next restart: doubles while it keeps dying young."""
        self.page: Optional[WorkerPage] = None
        """Its last metrics page."""
        self.requests_carried = 0.0
        """Requests its earlier processes answered (for the per-worker count)."""
        self.restart_call: Any = None
        self._on_event = on_event
        self._on_exit = on_exit
        self._process: Optional[WorkerProcess] = None

    @property
    def alive(self) -> bool:
        return self._process is not None

    def spawn(
        self, reactor: IReactorProcess, *, start: dict, inherited: list[int], config_text: bytes, now: float
    ) -> None:
        """Start the process; C{inherited} descriptors become its 4, 5, ..."""
        protocol = WorkerProcess(self)
        fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", 3: "r"}
        for offset, fd in enumerate(inherited):
            fds[FIRST_INHERITED_FD + offset] = fd
        transport = reactor.spawnProcess(
            protocol,
            sys.executable,
            [sys.executable, "-m", "wasmgate.worker"],
            env=_worker_environment(),
            childFDs=fds,
        )
        self._process = protocol
        self.pid = transport.pid
        self.state = "starting"
        self.config_text = config_text
        self.started_at = now
        transport.writeToChild(0, json.dumps(start).encode("utf-8") + b"\n")

    def call(self, op: str, *, timeout: float = 0.0, reactor: Any = None, **args: Any) -> "defer.Deferred[Any]":
        """Ask the worker to do C{op}; fails with L{ControlError} if it is gone (or too slow)."""
        if self._process is None:
            return defer.fail(ControlError(f"worker {self.index} is not running"))
        d = self._process.control.call(op, **args)
        if timeout and reactor is not None:
            d.addTimeout(timeout, reactor)
        return d

    def signal(self, name: str) -> None:
        process = self._process
        if process is not None and process.transport is not None:
            try:
                process.transport.signalProcess(name)
            except Exception:  # it has just exited: its end is on its way
                pass

    def _event(self, name: str, args: dict) -> None:
        self._on_event(self, name, args)

    def _ended(self, process: "WorkerProcess", reason: Failure) -> None:
        if process is self._process:
            self._process = None
            self.state = "down"
            self._on_exit(self, reason)


class WorkerProcess(ProcessProtocol):
    """One worker process: its channel, and its output relayed to the log."""

    def __init__(self, slot: WorkerSlot) -> None:
        self.slot = slot
        self.control = Control(self._write, on_event=slot._event)
        self._partial: dict[int, bytes] = {1: b"", 2: b""}

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.writeToChild(0, data)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 3:
            self.control.data_received(data)
            return
        lines = (self._partial.get(childFD, b"") + data).split(b"\n")
        self._partial[childFD] = lines.pop()
        for line in lines:
            if line.strip():
                relay_log_line(self.slot.index, line)

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest.strip():
                relay_log_line(self.slot.index, rest)
        self.control.lost(f"worker {self.slot.index} exited")
        self.slot._ended(self, reason)


def relay_log_line(index: int, line: bytes) -> None:
    """A worker's log event (JSON) or stray output, into this process's log as the worker's."""
    try:
        event = eventFromJSON(line.decode("utf-8", "replace"))
    except ValueError:
        event = None
    if not isinstance(event, dict) or "log_time" not in event:
        log.info("worker {worker}: {line}", worker=index, line=line.decode("utf-8", "replace"))
        return
    event["log_system"] = f"worker-{index}"
    event["wasmgate_worker"] = index
    globalLogPublisher(event)


def _worker_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    # The worker imports this very wasmgate, installed or not.
    home = os.path.dirname(os.path.dirname(os.path.abspath(wasmgate.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([home, *filter(None, [env.get("PYTHONPATH")])])
    return env
