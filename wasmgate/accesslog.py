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

import io
from typing import Any, Callable, Optional

from twisted.internet import task
from twisted.logger import Logger

_access = Logger(namespace="wasmgate.access")

AccessSink = Callable[[str], None]


def log_sink(line: str) -> None:
    """Emit one access-log line as a twisted.logger event."""
    _access.info("{access_log}", access_log=line)


class FileSink:
    """
    JSON lines appended to a file through a buffer, flushed every
    C{flush_interval} seconds and when the buffer fills; L{reopen} after
    the file was rotated.
    """

    def __init__(
        self, path: str, *, reactor: Any, flush_interval: float = 1.0, buffer_bytes: int = 64 * 1024
    ) -> None:
        self.path = path
        self._buffer_bytes = buffer_bytes
        self._file: Optional[io.BufferedWriter] = None
        self.reopen()
        self._flusher = task.LoopingCall(self.flush)
        self._flusher.clock = reactor
        self._flush_interval = flush_interval

    def __call__(self, line: str) -> None:
        assert self._file is not None
        self._file.write(line.encode("utf-8") + b"\n")

    def start(self) -> None:
        if not self._flusher.running:
            self._flusher.start(self._flush_interval, now=False)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def reopen(self) -> None:
        """Close and open the file again (after logrotate moved it)."""
        old, self._file = self._file, open(self.path, "ab", buffering=self._buffer_bytes)
        if old is not None:
            old.close()

    def close(self) -> None:
        if self._flusher.running:
            self._flusher.stop()
        if self._file is not None:
            self._file.close()
            self._file = None
