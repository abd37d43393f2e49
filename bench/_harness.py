"""
The moving parts of bench/run that know nothing about any one peer: the
processes it starts (and always stops, by pid), CPU pinning, /proc
sampling of CPU time and memory, readiness probes and wrk.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class Started:
    """A process this run started, in its own session (pid == pgid)."""

    name: str
    popen: subprocess.Popen
    log_path: Optional[str]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list[int]:
        """This process and all its descendants (nginx's worker, say)."""
        return [self.pid] + descendants(self.pid)

    def log_tail(self, lines: int = 15) -> str:
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """
    Every process the run starts goes through here, so that one
    C{stop_all()} in a C{finally} stops all of them (and only them) by pid,
    whatever went wrong.
    """

    def __init__(self, *, pin: bool) -> None:
        self.pin = pin
        self._started: list[Started] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        cpu: Optional[int],
        log_path: Optional[str] = None,
        env: Optional[dict[str, str]] = None,
        cwd: Optional[str] = None,
        capture: bool = False,
    ) -> Started:
        if cpu is not None and self.pin:
            argv = ["taskset", "-c", str(cpu)] + argv  # taskset execs: same pid
        if capture:
            stdout: Any = subprocess.PIPE
            stderr: Any = subprocess.PIPE
        else:
            stdout = open(log_path or os.devnull, "ab")
            stderr = subprocess.STDOUT
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            if not capture:
                stdout.close()
        started = Started(name=name, popen=popen, log_path=log_path)
        self._started.append(started)
        return started

    def stop(self, started: Started, *, grace: float = 5.0) -> Optional[int]:
        """SIGTERM its process group, SIGKILL after C{grace} seconds; its exit code."""
        if started in self._started:
            self._started.remove(started)
        if started.popen.poll() is None:
            _signal_group(started.pid, signal.SIGTERM)
            try:
                started.popen.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(started.pid, signal.SIGKILL)
                started.popen.wait(5)
        # A leader that already exited is left alone: its pid may be reused.
        return started.popen.returncode

    def stop_all(self) -> None:
        for started in reversed(list(self._started)):
            try:
                self.stop(started, grace=3.0)
            except Exception as e:  # keep stopping the others
                print(f"bench: could not stop {started.name} (pid {started.pid}): {e}")


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read(f"/proc/{entry}/stat")
        if stat is None:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        stat = _read(f"/proc/{pid}/stat")
        if stat is None:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return ticks / CLK_TCK


def memory_kib(pids: list[int], key: str) -> int:
    """Sum of a /proc/PID/status field (VmRSS, VmHWM) over these processes."""
    total = 0
    for pid in pids:
        status = _read(f"/proc/{pid}/status")
        if status is None:
            continue
        for line in status.splitlines():
            if line.startswith(key + ":"):
                total += int(line.split()[1])
                break
    return total


def cpu_times() -> dict[str, tuple[int, int]]:
    """Per core (cpu0, cpu1, ...): (busy, total) jiffies since boot, from /proc/stat."""
    out: dict[str, tuple[int, int]] = {}
    for line in (_read("/proc/stat") or "").splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *values = line.split()
            ticks = [int(v) for v in values[:8]]
            idle = ticks[3] + ticks[4]  # idle + iowait
            out[name] = (sum(ticks) - idle, sum(ticks))
    return out


def core_busy(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, float]:
    """How busy each core was between two L{cpu_times} readings, 0..1."""
    busy = {}
    for name, (b1, t1) in after.items():
        b0, t0 = before.get(name, (0, 0))
        busy[name] = round((b1 - b0) / (t1 - t0), 3) if t1 > t0 else 0.0
    return busy


class RSSSampler:
    """Samples the summed RSS of some processes every C{interval}; keeps the peak."""

    def __init__(self, pids: list[int], *, interval: float = 0.05) -> None:
        self.pids = pids
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, memory_kib(self.pids, "VmRSS"))
            self._stop.wait(self.interval)

    def __enter__(self) -> "RSSSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, memory_kib(self.pids, "VmRSS"))


BENCH_HEADERS = {
    "Authorization": "Bearer bench-secret-token",
    "Cookie": "session=bench",
    "X-Api-Key": "bench-api-key",
    "User-Agent": "wasmgate-bench/1 (probe)",
}


def http_get(
    url_scheme: str, port: int, path: str = "/", *, timeout: float = 2.0
) -> tuple[int, dict[str, str], bytes]:
    """One GET to 127.0.0.1 (TLS unverified for https): status, headers, body."""
    if url_scheme == "https":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=BENCH_HEADERS)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def wait_ready(
    started: Started, scheme: str, port: int, *, timeout: float
) -> tuple[Optional[int], str]:
    """
    Poll until the peer answers a GET: (status, "") or (None, why not).
    Gives up early when the process exits.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not started.alive():
            return None, f"exited with code {started.popen.returncode}"
        try:
            status, _, _ = http_get(scheme, port, timeout=2.0)
            return status, ""
        except (OSError, http.client.HTTPException, ssl.SSLError) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.1)
    return None, f"not answering after {timeout:.0f} s ({last})"


@dataclass
class WrkResult:
    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def requests(self) -> int:
        return int(self.data.get("requests", 0))

    @property
    def rps(self) -> float:
        seconds = self.data.get("duration_us", 0) / 1e6
        return self.requests / seconds if seconds else 0.0

    @property
    def socket_errors(self) -> int:
        d = self.data
        return int(d.get("connect_errors", 0) + d.get("read_errors", 0) + d.get("write_errors", 0))

    @property
    def errors(self) -> int:
        """Non-2xx/3xx answers + socket errors + timeouts."""
        d = self.data
        return self.socket_errors + int(d.get("status_errors", 0)) + int(d.get("timeouts", 0))


def start_wrk(
    processes: Processes,
    url: str,
    *,
    script: str,
    connections: int,
    seconds: int,
    body_bytes: int = 0,
    close: bool = False,
    timeout: str = "2s",
    cpu: Optional[int] = 1,
) -> Started:
    env = dict(os.environ)
    env["WRK_BODY_BYTES"] = str(body_bytes)
    env["WRK_CONNECTION_CLOSE"] = "1" if close else "0"
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={timeout}",
        "-s",
        script,
        url,
    ]
    return processes.start("wrk", argv, cpu=cpu, env=env, capture=True)


def finish_wrk(processes: Processes, started: Started, *, seconds: int) -> WrkResult:
    try:
        out, err = started.popen.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        processes.stop(started)
        return WrkResult(ok=False, error="wrk did not finish in time")
    processes.stop(started)
    text = out.decode("utf-8", "replace")
    for line in text.splitlines():
        if line.startswith("WRK_JSON "):
            return WrkResult(ok=True, data=json.loads(line[len("WRK_JSON ") :]))
    tail = (err.decode("utf-8", "replace") + text).strip().splitlines()[-5:]
    return WrkResult(ok=False, error="wrk failed: " + " | ".join(tail))


def run_wrk(processes: Processes, url: str, *, seconds: int, **options: Any) -> WrkResult:
    return finish_wrk(processes, start_wrk(processes, url, seconds=seconds, **options), seconds=seconds)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
