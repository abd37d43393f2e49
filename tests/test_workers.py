"""
A gateway of two worker processes, as twistd runs it: real processes on
real sockets. Connections reach both workers; the rate limit holds exactly
across them; a reload reaches both or neither; SIGTERM drains both; a
worker killed with SIGKILL is restarted and costs the other worker's
requests nothing; one that keeps dying at start is restarted with back-off;
the shared access log has no torn lines; /metrics adds the workers up.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest_twisted
import treq
from twisted.internet import reactor, task, threads

from tests.conftest import read_until_closed

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Running:
    """A twistd gateway with workers, its ports, and what it printed."""

    def __init__(
        self, tmp_path: Path, upstream_url: str, *, extra: str = "", state: str = "", plugin: str = ""
    ) -> None:
        self.port = _free_port()
        self.admin = _free_port()
        self.config = tmp_path / "gateway.yaml"
        self.log = tmp_path / "twistd.log"
        self.access = tmp_path / "access.jsonl"
        self.upstream_url = upstream_url
        self.plugin = plugin or f"path: {PLUGINS / 'rate_limiter.wasm'}"
        self.write(extra=extra, state=state)
        self.process = subprocess.Popen(
            [TWISTD, "--pidfile=", "-n", "-l", str(self.log), "wasmgate", "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )

    def write(self, *, extra: str = "", state: str = "", limit: Any = 10) -> None:
        self.config.write_text(f"""
server:
  listen: "tcp:{self.port}:interface=127.0.0.1"
  workers: 2
  shutdown_timeout: 10s
admin: {{listen: "tcp:{self.admin}:interface=127.0.0.1"}}
access_log: {self.access}
{state}
plugins:
  - name: limit
    {self.plugin}
    config: {{limit: {limit}, window: 1m, key: client_ip}}
routes:
  - {{name: limited, match: {{path_prefix: /limited}}, filters: [limit], upstream: backend}}
  - {{name: open, match: {{path_prefix: /}}, upstream: backend}}
upstreams:
  backend: {{targets: ["{self.upstream_url}"]}}
{extra}
""")

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    async def get(self, path: str) -> Any:
        return await treq.get(f"http://127.0.0.1:{self.admin}{path}", persistent=False)

    async def metrics(self) -> str:
        return await (await self.get("/metrics")).text()

    async def worker_pids(self) -> dict[str, int]:
        text = await self.metrics()
        return {w: int(p) for p, w in re.findall(r'wasmgate_worker_info\{pid="(\d+)",worker="(\d+)"\} 1', text)}

    async def until_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while True:
            assert self.process.poll() is None, self.output()
            try:
                if (await self.get("/readyz")).code == 200:
                    return
            except Exception:
                pass
            assert time.monotonic() < deadline, self.output()
            await _sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in _workers_of(self.process.pid):
            os.kill(pid, signal.SIGKILL)


def _workers_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


async def _sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


def _request(port: int, path: str, sock: Optional[socket.socket] = None) -> bytes:
    """One GET on a new connection (closed after), or on C{sock} (kept alive)."""
    if sock is None:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as new:
            new.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            return read_until_closed(new)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
    if length is None:  # chunked
        while not body.endswith(b"0\r\n\r\n"):
            body += sock.recv(65536)
        chunks, rest = [], body
        while True:
            size, _, rest = rest.partition(b"\r\n")
            if int(size, 16) == 0:
                break
            chunks.append(rest[: int(size, 16)])
            rest = rest[int(size, 16) + 2 :]
        return head + b"\r\n\r\n" + b"".join(chunks)
    while len(body) < int(length.group(1)):
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _on_both(port: int, pids: list[int], *, each: int = 3) -> tuple[list[socket.socket], list[int]]:
    """
    Kept-alive connections, at least C{each} held by every worker (which
    worker accepts a connection is the kernel's and the workers' race).
    """
    conns: list[socket.socket] = []
    owners: list[int] = []
    while min(owners.count(pid) for pid in pids) < each:
        assert len(conns) < 200, owners
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        assert _status(_request(port, "/echo", sock)) == 200
        conns.append(sock)
        owners.append(_owner(sock, pids))
    return conns, owners


def _owner(sock: socket.socket, pids: list[int]) -> int:
    """Which of C{pids} holds the server side of C{sock} (from /proc)."""
    local_port = sock.getsockname()[1]
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].split(":")[1], 16)
            if remote_port == local_port:
                inodes.add(fields[9])
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return pid
    raise AssertionError("no worker holds this connection")


@pytest_twisted.ensureDeferred
async def test_connections_reach_both_workers_and_the_limit_is_exact(tmp_path, upstream):
    gw = Running(tmp_path, upstream.url)
    try:
        await gw.until_ready()
        pids = await gw.worker_pids()
        assert len(pids) == 2 and gw.process.pid not in pids.values()
        answers = await threads.deferToThread(lambda: [_request(gw.port, "/limited") for _ in range(40)])
        assert sorted(_status(a) for a in answers) == [200] * 10 + [429] * 30
        text = await gw.metrics()
        served = dict(re.findall(r'wasmgate_worker_requests_total\{worker="(\d)"\} (\S+)', text))
        assert len(served) == 2 and all(float(n) > 0 for n in served.values()), served
        # One gateway: the workers' counts added up, not listed twice.
        counted = re.findall(r'^http_requests_total\{.*route="limited".*\} (\S+)$', text, re.M)
        assert sum(float(n) for n in counted) == 40
        assert len(re.findall(r"^# TYPE http_requests_total counter$", text, re.M)) == 1
    finally:
        gw.stop()


@pytest_twisted.ensureDeferred
async def test_reload_reaches_every_worker_or_none(tmp_path, upstream):
    gw = Running(tmp_path, upstream.url)
    try:
        await gw.until_ready()
        gw.write(extra="", state="", limit=3)
        gw.config.write_text(gw.config.read_text().replace("  workers: 2\n", "  workers: 2\n  banner: gen2\n"))
        answer = await treq.post(f"http://127.0.0.1:{gw.admin}/reload", persistent=False)
        assert answer.code == 200 and await answer.text() == "generation 2\n"
        # Both workers run it: the new limit, and the banner on the gateway's own answers.
        answers = await threads.deferToThread(lambda: [_request(gw.port, "/limited/x") for _ in range(12)])
        assert sorted(_status(a) for a in answers) == [200] * 3 + [429] * 9
        refused = [a for a in answers if _status(a) == 429]
        assert all(re.search(rb"(?i)\r\nserver: gen2\r\n", a) for a in refused)
        # A config one worker cannot load changes neither.
        gw.write(limit="-1")
        answer = await treq.post(f"http://127.0.0.1:{gw.admin}/reload", persistent=False)
        body = await answer.text()
        assert answer.code == 500 and "limit" in body and "gateway.yaml" in body, body
        text = await gw.metrics()
        assert "wasmgate_config_generation 2.0" in text
        assert 'wasmgate_reloads_total{result="error"} 1.0' in text
        answers = await threads.deferToThread(lambda: [_request(gw.port, "/limited/y") for _ in range(6)])
        assert all(_status(a) == 429 for a in answers)  # still limit 3, counts shared
        assert "reload failed, every worker keeps the current config" in gw.output()
        # What a restarted worker would pick up alone is refused for all.
        gw.write(limit=3, state="state: {backend: redis, url: 'redis://127.0.0.1:1'}")
        answer = await treq.post(f"http://127.0.0.1:{gw.admin}/reload", persistent=False)
        body = await answer.text()
        assert answer.code == 500 and "state changed: restart the gateway to change it" in body, body
    finally:
        gw.stop()


@pytest_twisted.ensureDeferred
async def test_sighup_reopens_every_workers_access_log_even_with_a_bad_config(tmp_path, upstream):
    gw = Running(tmp_path, upstream.url)
    try:
        await gw.until_ready()
        await threads.deferToThread(lambda: [_request(gw.port, "/echo") for _ in range(4)])
        await _sleep(1.5)  # flushed
        rotated = tmp_path / "access.jsonl.1"
        gw.access.rename(rotated)  # logrotate
        gw.write(limit="-1")
        gw.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while not gw.access.exists():
            assert time.monotonic() < deadline, gw.output()
            await _sleep(0.1)
        await threads.deferToThread(lambda: [_request(gw.port, "/echo") for _ in range(20)])
        gw.process.send_signal(signal.SIGTERM)
        assert await threads.deferToThread(gw.process.wait, 30) == 0
        assert len(rotated.read_text().splitlines()) == 4
        assert len(gw.access.read_text().splitlines()) == 20
        assert "reload failed, every worker keeps the current config" in gw.output()
    finally:
        gw.stop()


@pytest_twisted.ensureDeferred
async def test_a_changed_plugin_file_reloads_every_worker(tmp_path, upstream):
    """The supervisor watches plugin files for its workers: one reload for all."""
    import shutil

    copy = tmp_path / "limit.wasm"
    shutil.copyfile(PLUGINS / "rate_limiter.wasm", copy)
    gw = Running(tmp_path, upstream.url, plugin=f"path: {copy}\n    reload_interval: 200ms")
    try:
        await gw.until_ready()
        assert "wasmgate_config_generation 1.0" in await gw.metrics()
        await _sleep(0.5)
        os.utime(copy, (time.time() + 5, time.time() + 5))  # replaced (by a deploy, say)
        deadline = time.monotonic() + 20
        while "wasmgate_config_generation 2.0" not in await gw.metrics():
            assert time.monotonic() < deadline, gw.output()
            await _sleep(0.1)
        assert "a plugin file changed: reloading every worker" in gw.output()
        assert gw.output().count("config generation 2 is live") == 3  # two workers, then the supervisor
    finally:
        gw.stop()


@pytest_twisted.ensureDeferred
async def test_a_killed_worker_is_restarted_and_the_other_loses_nothing(tmp_path, upstream):
    gw = Running(tmp_path, upstream.url)
    try:
        await gw.until_ready()
        pids = await gw.worker_pids()
        conns, owners = await threads.deferToThread(_on_both, gw.port, list(pids.values()))
        try:
            victim_slot, victim = next(iter(pids.items()))
            survivors = [sock for sock, pid in zip(conns, owners) if pid != victim]
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            while True:
                now = await gw.worker_pids()
                if now.get(victim_slot) not in (None, victim):
                    break
                assert time.monotonic() - killed_at < 1.0, gw.output()  # restarted after 0.1 s
                await _sleep(0.05)

            def rounds() -> list[int]:
                return [_status(_request(gw.port, "/echo", sock)) for _ in range(5) for sock in survivors]

            # The other worker's kept-alive connections went on through it all.
            assert set(await threads.deferToThread(rounds)) == {200}
            # New connections are served too.
            fresh = await threads.deferToThread(lambda: [_status(_request(gw.port, "/echo")) for _ in range(10)])
            assert set(fresh) == {200}
            text = await gw.metrics()
            assert f'wasmgate_worker_restarts_total{{worker="{victim_slot}"}} 1.0' in text
            assert f"worker {victim_slot} (pid {victim}) was killed by signal 9" in gw.output()
            await gw.until_ready()
        finally:
            for sock in conns:
                sock.close()
    finally:
        gw.stop()


@pytest_twisted.ensureDeferred
async def test_sigterm_drains_every_worker_and_exits_0(tmp_path, upstream):
    gw = Running(tmp_path, upstream.url)
    conns: list[socket.socket] = []
    try:
        await gw.until_ready()
        pids = list((await gw.worker_pids()).values())
        conns, owners = await threads.deferToThread(_on_both, gw.port, pids, each=2)
        # Two slow requests on each worker (within the test thread pool's 10).
        busy = [s for pid in pids for s in [c for c, o in zip(conns, owners) if o == pid][:2]]
        slow = [threads.deferToThread(_request, gw.port, "/slow?delay=1.5", sock) for sock in busy]
        await _sleep(0.5)
        gw.process.send_signal(signal.SIGTERM)
        answers = [await d for d in slow]
        assert all(_status(a) == 200 and a.endswith(b"slow") for a in answers)
        assert await threads.deferToThread(gw.process.wait, 30) == 0
        assert _workers_of(gw.process.pid) == []
        assert all(not os.path.exists(f"/proc/{pid}") for pid in pids)
        assert "Traceback" not in gw.output()
    finally:
        for sock in conns:
            sock.close()
        gw.stop()


@pytest_twisted.ensureDeferred
async def test_a_worker_that_keeps_dying_at_start_is_restarted_with_back_off(tmp_path, upstream):
    dead = _free_port()  # nothing listens: every worker fails to reach its Redis
    gw = Running(tmp_path, upstream.url, state=f"state: {{backend: redis, url: 'redis://127.0.0.1:{dead}', timeout: 20ms}}")
    try:
        await _sleep(6)
        assert gw.process.poll() is None, gw.output()
        assert (await gw.get("/healthz")).code == 200
        ready = await gw.get("/readyz")
        assert ready.code == 503 and "worker" in await ready.text()
        restarts = re.findall(r"worker (\d) \(pid \d+\) exited with status 1 .* restarting it in (\d+\.\d)s", gw.output())
        # Not a tight loop: each worker waits twice as long as before each
        # time it dies young (0.1, 0.2, 0.4 s, ... up to 30 s).
        for worker in ("0", "1"):
            delays = [float(d) for w, d in restarts if w == worker]
            assert len(delays) >= 2 and delays == [0.1 * 2**i for i in range(len(delays))], restarts
        assert len(restarts) <= 12
    finally:
        gw.stop()


@pytest_twisted.ensureDeferred
async def test_one_access_log_with_whole_lines_from_both_workers(tmp_path, upstream):
    gw = Running(tmp_path, upstream.url)
    try:
        await gw.until_ready()

        def load() -> None:
            conns = [socket.create_connection(("127.0.0.1", gw.port), timeout=20) for _ in range(6)]
            for _ in range(250):
                for sock in conns:
                    _request(gw.port, "/echo?" + "x" * 300, sock)
            for sock in conns:
                sock.close()

        await threads.deferToThread(load)
        gw.process.send_signal(signal.SIGTERM)
        assert await threads.deferToThread(gw.process.wait, 30) == 0
        lines = gw.access.read_bytes().split(b"\n")
        assert lines[-1] == b""
        records = [json.loads(line) for line in lines[:-1]]  # a torn line would not parse
        assert len(records) == 1500
        assert len({r["request_id"] for r in records}) == 1500
    finally:
        gw.stop()


class _Slot:
    """A worker slot whose control calls answer as told (the supervisor's side alone)."""

    def __init__(self, index: int, commit_fails: bool = False) -> None:
        self.index, self.pid, self.alive, self.state = index, 1000 + index, True, "ready"
        self.commit_fails = commit_fails
        self.config_text = b"old"
        self.calls: list[str] = []
        self.signals: list[str] = []

    def call(self, name: str, **args: Any) -> Any:
        from twisted.internet import defer

        self.calls.append(name)
        if name == "commit" and self.commit_fails:
            return defer.fail(RuntimeError("commit blew up"))
        return defer.succeed(None)

    def signal(self, name: str) -> None:
        self.signals.append(name)


def test_a_worker_that_fails_to_commit_is_restarted_not_left_behind(tmp_path):
    """
    Every worker prepared the new config, one failed to commit it: it would
    serve a state nobody knows, so it is restarted (and starts on the new
    config); the others took it.
    """
    from twisted.internet.testing import MemoryReactorClock

    from wasmgate.config import parse_config
    from wasmgate.supervisor import SupervisorService

    text = (
        "server: {listen: 'tcp:0:interface=127.0.0.1', workers: 3}\n"
        "routes: [{name: all, match: {path_prefix: /}, upstream: u}]\n"
        "upstreams: {u: {targets: ['http://127.0.0.1:1']}}\n"
    )
    config = parse_config(text, source=str(tmp_path / "gateway.yaml"))
    supervisor = SupervisorService(config, text.encode(), reactor=MemoryReactorClock())
    slots = [_Slot(0), _Slot(1, commit_fails=True), _Slot(2)]
    try:
        d = supervisor._move(slots, b"new")
        assert d.called and d.result == [slots[1]], d.result
        assert [s.calls for s in slots] == [["prepare", "commit"]] * 3
        assert [s.config_text for s in slots] == [b"new", b"old", b"new"]
        assert [s.signals for s in slots] == [[], ["TERM"], []]
        assert slots[1].state == "stopping"  # not counted ready, not caught up while it drains
    finally:
        if supervisor.counters is not None:
            supervisor.counters.close()
