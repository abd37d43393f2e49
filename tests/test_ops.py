"""
Operating the gateway: metrics, hot reload under load, plugin file
watching, graceful shutdown and systemd notifications.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
import wasmtime
from twisted.internet import defer, reactor, task, threads

from tests import wasm_guests as guests
from tests.conftest import gateway_yaml, read_until_closed

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


async def _get(http, url, method="GET", **kwargs):
    response = await http.request(method, url, **kwargs)
    return response, await response.content()


async def _sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_metrics_normalise_paths_and_count(upstream, start_gateway, http):
    gw = start_gateway(gateway_yaml(upstream.url))
    for path in ("/users/123", "/users/456", "/users/6f1c2f9e-3c0b-4e0e-9d43-0b6f0c1d2e3f/orders"):
        await _get(http, gw.url + path)
    _, body = await _get(http, gw.admin_url + "/metrics")
    text = body.decode()
    assert 'http_requests_total{method="GET",path="/users/{id}",protocol="HTTP/1.1",route="all",status="200"} 2.0' in text
    assert 'path="/users/{id}/orders"' in text
    assert "/users/123" not in text and "/users/456" not in text
    assert 'http_request_duration_seconds_count{method="GET",path="/users/{id}",route="all"} 2.0' in text
    assert f'wasmgate_upstream_healthy{{target="{upstream.url}",upstream="backend"}} 1.0' in text
    assert "wasmgate_config_generation 1.0" in text
    response, body = await _get(http, gw.admin_url + "/readyz")
    assert (response.code, body) == (200, b"ready\n")


class _Load:
    """Clients sending requests back to back until stopped; counts failures."""

    def __init__(self, http, url: str, clients: int = 4) -> None:
        self.http, self.url = http, url
        self.sent = 0
        self.failures: list[str] = []
        self.running = True
        self.done = defer.gatherResults([defer.ensureDeferred(self._loop()) for _ in range(clients)])

    async def _loop(self) -> None:
        while self.running:
            try:
                response, _ = await _get(self.http, self.url)
                if response.code != 200:
                    self.failures.append(str(response.code))
            except Exception as e:  # any failure counts
                self.failures.append(repr(e))
            self.sent += 1

    async def stop(self) -> None:
        self.running = False
        await self.done


def _wasm(tmp_path: Path, name: str, wat: str) -> Path:
    path = tmp_path / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


@pytest_twisted.ensureDeferred
async def test_reload_under_load(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(gateway_yaml(upstream.url))
    load = _Load(http, gw.url + "/echo")
    await _sleep(0.2)
    rewrite = _wasm(tmp_path, "rewrite", guests.HEADER_REWRITE)
    new = Path(gw.path).read_text().replace(
        "routes:\n",
        f"plugins:\n  - {{name: rewrite, path: {rewrite}}}\n"
        "routes:\n  - {name: new, match: {path_prefix: /new}, filters: [rewrite], upstream: backend}\n",
    )
    Path(gw.path).write_text(new)
    started = time.monotonic()
    number = await gw.service.reload()
    latency = time.monotonic() - started
    print(f"reload latency: {latency * 1000:.1f} ms")
    assert number == 2
    response, body = await _get(http, gw.url + "/new/x")
    assert response.code == 200
    assert json.loads(body)["headers"]["x-added"] == ["yes"]
    # A broken config on reload: the old one keeps serving.
    Path(gw.path).write_text(new.replace("upstream: backend", "upstream: nowhere"))
    try:
        await gw.service.reload()
    except Exception as e:
        assert "routes[0].upstream: no upstream named 'nowhere'" in str(e)
    else:
        raise AssertionError("a broken config was accepted")
    response, _ = await _get(http, gw.url + "/new/x")
    assert response.code == 200
    await _sleep(0.2)
    await load.stop()
    assert load.sent > 20
    assert load.failures == []
    _, metrics = await _get(http, gw.admin_url + "/metrics")
    text = metrics.decode()
    assert 'wasmgate_reloads_total{result="ok"} 1.0' in text
    assert 'wasmgate_reloads_total{result="error"} 1.0' in text
    assert "wasmgate_config_generation 2.0" in text


@pytest_twisted.ensureDeferred
async def test_reloads_run_one_at_a_time_and_every_failure_is_counted(tmp_path, upstream, start_gateway, http):
    """
    Two reloads asked for at once run one after the other; a reload that
    fails with something other than a schema error (a CA bundle that is not
    PEM) is refused, logged with the key, counted, and changes nothing.
    """
    gw = start_gateway(gateway_yaml(upstream.url))
    first, second = gw.service.reload(), gw.service.reload()
    assert (await first, await second) == (2, 3)
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate\n")
    config = Path(gw.path)
    config.write_text(
        config.read_text().replace('targets: ["http', f'ca_file: {bundle}\n    targets: ["https', 1)
    )
    try:
        await gw.service.reload()
    except Exception as e:
        assert "upstreams.backend.ca_file" in str(e) and str(config) in str(e), e
    else:
        raise AssertionError("a CA bundle without certificates was accepted")
    response, _ = await _get(http, gw.url + "/echo")
    assert response.code == 200
    _, metrics = await _get(http, gw.admin_url + "/metrics")
    assert 'wasmgate_reloads_total{result="error"} 1.0' in metrics.decode()
    assert "wasmgate_config_generation 3.0" in metrics.decode()


@pytest_twisted.ensureDeferred
async def test_reload_through_the_admin_port(upstream, start_gateway, http):
    gw = start_gateway(gateway_yaml(upstream.url))
    response, body = await _get(http, gw.admin_url + "/reload", method="POST")
    assert (response.code, body) == (200, b"generation 2\n")


@pytest_twisted.ensureDeferred
async def test_plugin_file_replaced_is_picked_up(tmp_path, upstream, start_gateway, http):
    plugin = _wasm(tmp_path, "live", guests.PASS_THROUGH)
    text = gateway_yaml(upstream.url, routes="""
  - {name: all, match: {path_prefix: /}, filters: [live], upstream: backend}
""").replace("routes:\n", f"plugins:\n  - {{name: live, path: {plugin}, reload_interval: 200ms}}\nroutes:\n")
    gw = start_gateway(text)
    load = _Load(http, gw.url + "/echo")
    response, _ = await _get(http, gw.url + "/echo")
    assert response.code == 200
    staged = tmp_path / "staged.wasm"
    staged.write_bytes(wasmtime.wat2wasm(guests.BLOCK_403))
    os.replace(staged, plugin)  # as deploy tools do: atomic rename
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        response, _ = await _get(http, gw.url + "/echo")
        if response.code == 403:
            break
        await _sleep(0.05)
    await load.stop()
    assert response.code == 403
    assert set(load.failures) <= {"403"}  # the new behaviour, never an error
    assert gw.service.generation.number == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_twistd(tmp_path: Path, upstream_url: str, env: dict | None = None):
    port = _free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(f"""
server:
  listen: "tcp:{port}:interface=127.0.0.1"
  shutdown_timeout: 10s
admin: {{listen: "tcp:0:interface=127.0.0.1"}}
routes:
  - {{match: {{path_prefix: /}}, upstream: backend}}
upstreams:
  backend: {{targets: ["{upstream_url}"]}}
""")
    process = subprocess.Popen(
        [TWISTD, "--pidfile=", "-n", "wasmgate", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=tmp_path,
    )
    return process, port, config


async def _wait_listening(port: int, process) -> None:
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert process.poll() is None, process.stdout.read().decode()
        assert time.monotonic() < deadline
        await _sleep(0.1)


def _blocking_get(port: int, path: str) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


@pytest_twisted.ensureDeferred
async def test_sigterm_drains_in_flight_requests(tmp_path, upstream):
    process, port, _ = _start_twistd(tmp_path, upstream.url)
    try:
        await _wait_listening(port, process)
        slow = threads.deferToThread(_blocking_get, port, "/slow?delay=1.5")
        await _sleep(0.5)
        process.send_signal(signal.SIGTERM)
        await _sleep(0.1)
        process.send_signal(signal.SIGTERM)  # a second one changes nothing
        await _sleep(0.2)
        # No new connections meanwhile.
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
        status, body = await slow
        assert (status, body) == (200, b"slow")
        code = await threads.deferToThread(process.wait, 20)
        output = process.stdout.read().decode()
        assert code == 0, output
        assert "draining 1 request(s)" in output
        assert "SIGTERM: already shutting down" in output and "Traceback" not in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest_twisted.ensureDeferred
async def test_not_ready_while_draining(upstream, start_gateway, http):
    """While shutdown drains requests in flight, /readyz says so (503)."""
    gw = start_gateway(gateway_yaml(upstream.url))
    slow = http.get(gw.url + "/slow?delay=0.5")
    await _sleep(0.1)
    stopping = gw.service.stopService()
    response, body = await _get(http, gw.admin_url + "/readyz")
    assert response.code == 503 and b"shutting down" in body
    response = await slow
    assert (response.code, await response.content()) == (200, b"slow")
    await stopping


@pytest_twisted.ensureDeferred
async def test_sd_notify_ready_reloading_stopping(tmp_path, upstream):
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(20)
    process, port, _ = _start_twistd(tmp_path, upstream.url, env={"NOTIFY_SOCKET": address})
    try:
        first = (await threads.deferToThread(listener.recv, 4096)).decode()
        assert first.startswith("READY=1")
        # Ready means ready: the port accepts connections now.
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) == 0
        process.send_signal(signal.SIGHUP)
        reloading = (await threads.deferToThread(listener.recv, 4096)).decode().split("\n")
        assert reloading[0] == "RELOADING=1"
        # For Type=notify-reload: the time of this reload, on CLOCK_MONOTONIC.
        assert reloading[1].startswith("MONOTONIC_USEC=")
        assert abs(int(reloading[1].split("=")[1]) - time.monotonic_ns() // 1000) < 30_000_000
        assert (await threads.deferToThread(listener.recv, 4096)).decode().startswith("READY=1")
        process.send_signal(signal.SIGTERM)
        assert (await threads.deferToThread(listener.recv, 4096)).decode() == "STOPPING=1"
        assert await threads.deferToThread(process.wait, 20) == 0
    finally:
        listener.close()
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest_twisted.ensureDeferred
async def test_access_log_to_its_own_file_and_reopened_on_reload(tmp_path, upstream, start_gateway, http):
    path = tmp_path / "access.jsonl"
    text = gateway_yaml(upstream.url).replace('["10.0.0.0/8"]', '["127.0.0.1/32"]')
    gw = start_gateway(text + f"access_log: {path}\n")
    await _get(
        http,
        gw.url + "/users/42?token=secret",
        headers={"Authorization": "Bearer x", "X-Forwarded-For": "203.0.113.9"},
    )
    gw.service.access_file.flush()
    [line] = path.read_text().splitlines()
    entry = json.loads(line)
    assert (entry["method"], entry["path"], entry["status"], entry["route"]) == ("GET", "/users/42", 200, "all")
    assert entry["upstream"] == upstream.url
    assert entry["path_template"] == "/users/{id}"
    assert entry["client_ip"] == "203.0.113.9"  # behind a trusted proxy
    assert "secret" not in line and "Bearer" not in line  # no query, no request headers
    # logrotate moved the file; the reload (SIGHUP) opens a new one.
    os.replace(path, tmp_path / "access.jsonl.1")
    await gw.service.reload()
    await _get(http, gw.url + "/again")
    gw.service.access_file.flush()
    assert json.loads(path.read_text())["path"] == "/again"


@pytest_twisted.ensureDeferred
async def test_reload_applies_limits_threads_and_access_log(tmp_path, upstream, start_gateway, http):
    """
    A reload applies the body limit, the filter thread count and where the
    access log goes; settings that need a restart are named in a warning;
    an access-log file that cannot be opened refuses the reload.
    """
    from twisted.logger import formatEvent, globalLogPublisher

    gw = start_gateway(gateway_yaml(upstream.url, server="  max_body_bytes: 100000"))
    response, _ = await _get(http, gw.url + "/echo", method="POST", data=b"x" * 5000)
    assert response.code == 200
    path = tmp_path / "access.jsonl"
    config = Path(gw.path)
    text = config.read_text().replace("max_body_bytes: 100000", "max_body_bytes: 1000")
    text = text.replace('listen: "tcp:0:interface=127.0.0.1"\nroutes', 'listen: "tcp:0:interface=::1"\nroutes')
    config.write_text(text + f"access_log: {path}\nfilters: {{threads: 7, epoch_tick: 2ms}}\n")
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        await gw.service.reload()
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [formatEvent(e) for e in events if e["log_level"].name == "warn"]
    assert "filters.epoch_tick changed: takes effect only after a restart" in warnings
    assert "admin.listen changed: takes effect only after a restart" in warnings
    assert gw.service.filter_pool.max == 7
    response, _ = await _get(http, gw.url + "/echo", method="POST", data=b"x" * 5000)
    assert response.code == 413
    gw.service.access_file.flush()
    assert json.loads(path.read_text())["status"] == 413

    # Back to the twisted.logger sink: the file is closed, lines go there.
    config.write_text(config.read_text().replace(f"access_log: {path}", "access_log: log"))
    await gw.service.reload()
    assert gw.service.access_file is None
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        await _get(http, gw.url + "/after")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [e for e in events if e.get("log_namespace") == "wasmgate.access"]
    assert len(path.read_text().splitlines()) == 1

    # A file that cannot be opened: the reload is refused, nothing changes.
    config.write_text(
        config.read_text().replace("access_log: log", f"access_log: {tmp_path}")  # a directory
        .replace("max_body_bytes: 1000", "max_body_bytes: 100000")
    )
    try:
        await gw.service.reload()
    except Exception as e:
        assert "access_log: cannot open" in str(e) and str(config) in str(e)
    else:
        raise AssertionError("an access log that cannot be opened was accepted")
    response, _ = await _get(http, gw.url + "/echo", method="POST", data=b"x" * 5000)
    assert response.code == 413


@pytest_twisted.ensureDeferred
async def test_access_log_off(tmp_path, upstream, start_gateway, http):
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        gw = start_gateway(gateway_yaml(upstream.url) + "access_log: off\n")
        await _get(http, gw.url + "/x")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [e for e in events if e.get("log_namespace") == "wasmgate.access"]


@pytest.mark.parametrize("workers", [1, 2])
@pytest_twisted.ensureDeferred
async def test_systemd_socket_activation(tmp_path, upstream, workers):
    """
    The listening socket comes from systemd (LISTEN_FDS), not from us; with
    workers the supervisor hands it to each, and READY=1 comes once all are.
    """
    address = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(address)
    notify.settimeout(30)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    admin_port = _free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(f"""
server:
  listen: "systemd:domain=INET:index=0"
  workers: {workers}
admin: {{listen: "tcp:{admin_port}:interface=127.0.0.1"}}
routes:
  - {{match: {{path_prefix: /}}, upstream: backend}}
upstreams:
  backend: {{targets: ["{upstream.url}"]}}
""")
    fd = listener.fileno()

    def as_fd_3() -> None:  # sd_listen_fds(3): the first passed socket is fd 3
        os.dup2(fd, 3)

    process = subprocess.Popen(
        [
            "/bin/sh", "-c",
            f'NOTIFY_SOCKET={address} LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http '
            f'exec "{TWISTD}" --pidfile= -n wasmgate -c "{config}"',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        pass_fds=(fd, 3),
        preexec_fn=as_fd_3,
        cwd=tmp_path,
    )
    listener.close()
    try:
        ready = (await threads.deferToThread(notify.recv, 4096)).decode()
        assert ready.startswith("READY=1"), ready
        if workers > 1:
            assert f"{workers} workers" in ready, ready
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = await threads.deferToThread(_blocking_get, port, "/echo")
                break
            except OSError:
                assert process.poll() is None, process.stdout.read().decode()
                assert time.monotonic() < deadline
                await _sleep(0.1)
        assert status == 200 and json.loads(body)["uri"] == "/echo"
        if workers > 1:
            # Each worker took the passed socket (one that could not would not be ready).
            status, body = await threads.deferToThread(_blocking_get, admin_port, "/metrics")
            text = body.decode()
            assert f'wasmgate_workers{{state="ready"}} {float(workers)}' in text, text
            assert text.count("wasmgate_worker_info{") == workers
    finally:
        notify.close()
        process.terminate()
        await threads.deferToThread(process.wait, 20)


@pytest_twisted.ensureDeferred
async def test_reloading_a_changed_plugin_keeps_memory_bounded(tmp_path, upstream, start_gateway, http):
    """
    A plugin changed and reloaded again and again: once each old generation
    is closed, the wasm runtime remembers only the live filter and the
    engine's module cache only its module.
    """
    plugin = tmp_path / "live.wasm"

    def write(version: int) -> None:
        plugin.write_bytes(wasmtime.wat2wasm(guests.respond({"headers": {"x-version": str(version)}})))

    write(0)
    text = gateway_yaml(upstream.url, routes="""
  - {name: all, match: {path_prefix: /}, filters: [live], upstream: backend}
""").replace("routes:\n", f"plugins:\n  - {{name: live, path: {plugin}}}\nroutes:\n")
    gw = start_gateway(text)
    runtime = gw.service._wasm
    for version in range(1, 9):
        write(version)
        await gw.service.reload()
        response, body = await _get(http, gw.url + "/echo")
        assert response.code == 200
        assert json.loads(body)["headers"]["x-version"] == [str(version)]
        live = list(gw.service.generation.filters.values())
        deadline = time.monotonic() + 3
        while set(runtime.live_filters()) != set(live) and time.monotonic() < deadline:
            await _sleep(0.02)  # the old generation closes once drained
        assert set(runtime.live_filters()) == set(live)
        assert runtime.engine.cached_digests() == {runtime.digest_of(f) for f in live}


def _read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length, read off a kept-alive socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest_twisted.ensureDeferred
async def test_shutdown_drains_kept_alive_connections(upstream, start_gateway):
    """
    On stop, a kept-alive connection waiting for its next request is closed;
    a request in flight, also one that started before a reload, finishes,
    its response says Connection: close, and then its connection closes.
    """
    gw = start_gateway(gateway_yaml(upstream.url))
    port = int(gw.url.rsplit(":", 1)[1])
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)
    busy = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        idle.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await threads.deferToThread(_read_response, idle)).startswith(b"HTTP/1.1 200")
        busy.sendall(b"GET /slow?delay=0.6 HTTP/1.1\r\nHost: x\r\n\r\n")
        await _sleep(0.1)
        await gw.service.reload()  # the slow request runs on a retired generation now
        stopping = gw.service.stopService()
        assert await threads.deferToThread(idle.recv, 1024) == b""  # closed at once
        answer = await threads.deferToThread(read_until_closed, busy)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"4\r\nslow\r\n0\r\n\r\n")
        assert b"\r\nConnection: close\r\n" in answer
        await stopping
        assert upstream.app.cancelled == 0
    finally:
        idle.close()
        busy.close()


@pytest_twisted.ensureDeferred
async def test_filter_threads_are_batch_scheduled(tmp_path, upstream, start_gateway, http):
    """
    Filter threads run as SCHED_BATCH on Linux, so waking one with a job
    does not preempt the reactor thread (see wasmgate.filterpool).
    """
    if not hasattr(os, "SCHED_BATCH"):
        pytest.skip("no SCHED_BATCH here")
    plugin = _wasm(tmp_path, "pass", guests.PASS_THROUGH)
    text = gateway_yaml(upstream.url).replace(
        "routes:\n", f"plugins:\n  - {{name: pass, path: {plugin}}}\nroutes:\n", 1
    ).replace("upstream: backend", "upstream: backend\n    filters: [pass]", 1)
    gw = start_gateway(text)
    response, _ = await _get(http, gw.url + "/echo")
    assert response.code == 200
    threads_ = list(gw.service.filter_pool.threads)
    assert threads_
    assert {os.sched_getscheduler(t.native_id) for t in threads_} == {os.SCHED_BATCH}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the reactor's thread is not
