# -*- test-case-name: tests.test_ops -*-
"""
Where access-log lines go: through twisted.logger (the default: twistd's
--logfile, or stdout for journald), to a file of their own, or nowhere.

Going through twisted.logger costs tens of microseconds a request (each
event is formatted with a timestamp and system prefix); a busy gateway can
write plain JSON lines to their own file instead, buffered like nginx's
C{access_log ... buffer=}, and reopened on SIGHUP for log rotation.
"""
from __future__ import annotations

import os
import json
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet import task
from twisted.logger import Logger

from wasmgate.metrics import normalise_path

if TYPE_CHECKING:
    from wasmgate.http.message import RequestRecord

_access = Logger(namespace="wasmgate.access")

AccessSink = Callable[[str], None]


def access_line(info: "RequestRecord", duration: float) -> str:
    """
    One request as a JSON line. Of the request's headers only the host it
    was routed by and the User-Agent; no query string (a request refused
    while its head was read logs its raw target, cut to 200 characters). Times
    in milliseconds: the whole exchange, the upstream's part (from sending
    to the end of its response) and each filter phase's.
    """
    line: dict[str, Any] = {
        "time": round(time.time(), 3),
        "request_id": info.request_id,
        "client_ip": info.client_ip,
        "method": info.method,
        "host": info.host,
        "path": info.path,
        "path_template": normalise_path(info.path),
        "route": info.route,
        "status": info.status,
        "bytes": info.bytes,
        "duration_ms": round(duration * 1000, 3),
        "upstream": info.target,
        "filters": [f"{d.plugin}:{d.phase}:{d.outcome}" for d in info.decisions],
    }
    if info.protocol != "HTTP/1.1":
        line["protocol"] = info.protocol
    if info.sni:
        line["sni"] = info.sni
    if info.upstream_ended:
        line["upstream_ms"] = round((info.upstream_ended - info.upstream_started) * 1000, 3)
    if info.decisions:
        phases: dict[str, float] = {}
        for d in info.decisions:
            phases[d.phase] = phases.get(d.phase, 0.0) + d.seconds
        line["filter_ms"] = {phase: round(seconds * 1000, 3) for phase, seconds in phases.items()}
    if info.user_agent is not None:
        line["user_agent"] = info.user_agent
    if info.tunnel is not None:  # a WebSocket: its bytes each way and why it ended
        line["bytes_in"] = info.bytes_in
        line["tunnel_closed"] = info.tunnel
    if info.trace is not None:
        line["trace_id"] = info.trace.trace_id.decode("ascii")
    if info.error:
        line["error"] = info.error
    return json.dumps(line, separators=(",", ":"))


def log_sink(line: str) -> None:
    """Emit one access-log line as a twisted.logger event."""
    _access.info("{access_log}", access_log=line)


class FileSink:
    """
    JSON lines appended to a file, gathered in memory and written every
    C{flush_interval} seconds and when C{buffer_bytes} are waiting;
    L{reopen} after the file was rotated.

    Each write is one C{write(2)} of whole lines to a file opened with
    C{O_APPEND}: several worker processes appending to one access log never
    interleave or tear each other's lines (a buffered file object would
    split a line across two writes when its buffer fills).
    """

    def __init__(
        self, path: str, *, reactor: Any, flush_interval: float = 1.0, buffer_bytes: int = 64 * 1024
    ) -> None:
        self.path = path
        self._buffer_bytes = buffer_bytes
        self._file: Optional[int] = None
        self._pending: list[bytes] = []
        self._size = 0
        self.reopen()
        self._flusher = task.LoopingCall(self.flush)
        self._flusher.clock = reactor
        self._flush_interval = flush_interval

    def __call__(self, line: str) -> None:
        assert self._file is not None
        data = line.encode("utf-8") + b"\n"
        self._pending.append(data)
        self._size += len(data)
        if self._size >= self._buffer_bytes:
            self.flush()

    def start(self) -> None:
        if not self._flusher.running:
            self._flusher.start(self._flush_interval, now=False)

    def flush(self) -> None:
        if self._file is None or not self._pending:
            return
        data = memoryview(b"".join(self._pending))
        self._pending.clear()
        self._size = 0
        while data:
            written = os.write(self._file, data)
            data = data[written:]

    def reopen(self) -> None:
        """Write what waits, then open the file again (after logrotate moved it)."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.flush()
        old, self._file = self._file, fd
        if old is not None:
            os.close(old)

    def close(self) -> None:
        if self._flusher.running:
            self._flusher.stop()
        self.flush()
        if self._file is not None:
            os.close(self._file)
            self._file = None
