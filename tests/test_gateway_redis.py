"""
Fleet-wide rate limits: gateways sharing counters in a real redis-server.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads

from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


@pytest.fixture
def redis(tmp_path: Path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def _config(redis_url: str, upstream_url: str, port: int | str = 0, limit: int = 5) -> str:
    return f"""
server:
  listen: "tcp:{port}:interface=127.0.0.1"
  trusted_proxies: ["127.0.0.1/32"]
admin: {{listen: "tcp:0:interface=127.0.0.1"}}
state: {{backend: redis, url: "{redis_url}", timeout: 20ms}}
plugins:
  - name: rate_limiter
    path: {ROOT / "plugins" / "rate_limiter.wasm"}
    config: {{limit: {limit}, window: 30s, key: client_ip}}
routes:
  - {{match: {{path_prefix: /}}, filters: [rate_limiter], upstream: backend}}
upstreams:
  backend: {{targets: ["{upstream_url}"]}}
"""


def _status(port: int, client: str = "9.9.9.9") -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/echo", headers={"X-Forwarded-For": client}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def _wait_up(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0].decode()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("gateway did not start")


@pytest_twisted.ensureDeferred
async def test_two_gateway_processes_share_one_limit(tmp_path, redis, upstream):
    processes = []
    ports = []
    try:
        for name in ("a", "b"):
            port = free_port()
            path = tmp_path / f"{name}.yaml"
            # Different client address per test run keeps counters apart.
            path.write_text(_config(redis.url, upstream.url, port))
            processes.append(subprocess.Popen(
                [TWISTD, "--pidfile=", "-n", "wasmgate", "-c", str(path)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
            ))
            ports.append(port)
        for port, process in zip(ports, processes):
            await threads.deferToThread(_wait_up, port, process)
        # Two requests were spent on the probes above (one per gateway,
        # from a different client): this client has all five.
        codes = []
        for i in range(6):
            codes.append(await threads.deferToThread(_status, ports[i % 2], "5.5.5.5"))
        assert codes == [200] * 5 + [429]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            await threads.deferToThread(process.wait, 20)


@pytest_twisted.ensureDeferred
async def test_redis_down_fails_closed_and_recovers(tmp_path, redis, upstream, start_gateway):
    gw = start_gateway(_config(redis.url, upstream.url, limit=1000))
    await gw.service.when_ready
    port = int(gw.url.rsplit(":", 1)[1])
    assert await threads.deferToThread(_status, port) == 200
    redis.kill()
    assert await threads.deferToThread(_status, port) == 502
    redis.restart()
    deadline = time.monotonic() + 10
    while True:
        code = await threads.deferToThread(_status, port)
        if code == 200 or time.monotonic() > deadline:
            break
        await task.deferLater(reactor, 0.1, lambda: None)
    assert code == 200
    _, metrics = None, await threads.deferToThread(
        lambda: urllib.request.urlopen(gw.admin_url + "/metrics", timeout=5).read().decode()
    )
    assert 'wasmgate_plugin_errors_total{kind="state",plugin="rate_limiter"}' in metrics


def test_unreachable_redis_refuses_to_start(tmp_path):
    path = tmp_path / "gateway.yaml"
    dead = f"redis://127.0.0.1:{free_port()}/0"
    path.write_text(_config(dead, "http://127.0.0.1:1"))
    result = subprocess.run(
        [TWISTD, "--pidfile=", "-n", "wasmgate", "-c", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode == 1
    # twistd -n sends stderr to its log on stdout, as journald sees it.
    assert f"cannot start: redis at {dead} unreachable" in result.stdout
