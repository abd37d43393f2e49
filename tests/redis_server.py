# -*- test-case-name: tests.test_state_redis -*-
"""
A real C{redis-server} for tests: on a free loopback port, in a temporary
directory, without persistence; it can be killed, frozen and started again
on the same port. Tests that need one skip (saying why) when the
C{redis-server} binary is not installed.

Its methods block (briefly); from a pytest-twisted test, call the ones used
while the reactor must keep running (kill, restart) with C{deferToThread}.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import pytest


def free_port() -> int:
    """A loopback TCP port nothing listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    """The C{redis-server} path, or skip the test."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return path


class RedisServer:
    """One C{redis-server} process; L{start} it, L{stop} it when done."""

    def __init__(
        self,
        directory: Path,
        *,
        port: Optional[int] = None,
        password: Optional[str] = None,
        tls: Optional[tuple[Path, Path]] = None,
    ) -> None:
        """
        @param tls: (certificate file, key file): serve TLS only, on C{port};
            L{command} is then unavailable.
        """
        self.binary = redis_server_binary()
        self.directory = directory
        self.port = port or free_port()
        self.password = password
        self.tls = tls
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        if self.tls:
            return f"rediss://localhost:{self.port}/0"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", "0" if self.tls is not None else str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(self.directory / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.password is not None:
            args += ["--requirepass", self.password]
        if self.tls is not None:
            cert, key = self.tls
            args += ["--tls-port", str(self.port), "--tls-cert-file", str(cert)]
            args += ["--tls-key-file", str(key), "--tls-auth-clients", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self.log()}")
            try:
                if self.tls is not None:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                if self.command("PING") == "PONG":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer within {timeout} s: {self.log()}")
            time.sleep(0.01)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL): no goodbye to its clients."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    stop = kill

    def restart(self) -> None:
        """Kill it if running, then start it again on the same port (empty)."""
        self.kill()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def log(self) -> str:
        try:
            return (self.directory / "redis.log").read_text()[-2000:]
        except OSError:
            return ""

    def command(self, *args: Union[str, bytes, int], db: int = 0, timeout: float = 2.0) -> object:
        """
        Send one command on a fresh connection and return its reply
        (int, str, None, list; an error reply raises C{RuntimeError}): a
        client independent of the code under test.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            f = s.makefile("rwb")
            setup: list[list[Union[str, bytes, int]]] = []
            if self.password is not None:
                setup.append(["AUTH", self.password])
            if db:
                setup.append(["SELECT", db])
            for command in setup:
                f.write(_encode(command))
            f.write(_encode(args))
            f.flush()
            for _ in setup:
                _read(f)
            return _read(f)


def _encode(args: Sequence[Union[str, bytes, int]]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read(f: "socket.SocketIO | object") -> object:
    line = f.readline()  # type: ignore[attr-defined]
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)  # type: ignore[attr-defined]
        return data[:-2].decode("utf-8", "surrogateescape")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read(f) for _ in range(n)]
    raise RuntimeError(f"unexpected reply {line!r}")
