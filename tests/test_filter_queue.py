"""
Filter work is bounded, end to end: a flood on a route with a slow filter
neither starves the other routes nor queues without limit, and the work of
clients that left is not done.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest_twisted
import wasmtime
from twisted.internet import defer, reactor, task, threads

from tests import wasm_guests as g


def _wasm(tmp_path: Path, name: str, wat: str) -> Path:
    path = tmp_path / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


def _config(tmp_path: Path, upstream_url: str, *, threads: int, max_queue: int = 1024) -> str:
    """/slow: a filter that spins for its whole 300 ms deadline; /fast: a pass-through one."""
    return f"""
server:
  listen: "tcp:0:interface=127.0.0.1"
  timeouts: {{write: 20s}}
admin: {{listen: "tcp:0:interface=127.0.0.1"}}
filters: {{threads: {threads}, max_queue: {max_queue}}}
plugins:
  - {{name: as_loop, path: {_wasm(tmp_path, "as_loop", g.respond({"method": "LOOP"}))}}}
  - {{name: spin, path: {_wasm(tmp_path, "spin", g.MISBEHAVING)}, timeout_ms: 300}}
  - {{name: fine, path: {_wasm(tmp_path, "fine", g.PASS_THROUGH)}}}
routes:
  - {{name: slow, match: {{path_prefix: /slow}}, filters: [as_loop, spin], upstream: backend}}
  - {{name: fast, match: {{path_prefix: /fast}}, filters: [fine], upstream: backend}}
upstreams:
  backend: {{targets: ["{upstream_url}"]}}
"""


async def _status(http, url: str) -> tuple[int, float]:
    started = time.monotonic()
    response = await http.get(url)
    await response.content()
    return response.code, time.monotonic() - started


@pytest_twisted.ensureDeferred
async def test_a_flood_on_a_slow_route_does_not_starve_the_others(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(_config(tmp_path, upstream.url, threads=4))
    flood = [defer.ensureDeferred(_status(http, gw.url + "/slow/x")) for _ in range(30)]
    await task.deferLater(reactor, 0.2, lambda: None)
    code, took = await _status(http, gw.url + "/fast/echo")
    assert code == 200
    # First come, first served would have it wait for 30 x 300 ms / 4 threads.
    assert took < 1.0, took
    results = await defer.gatherResults(flood)
    assert {code for code, _ in results} == {502}  # the spinning filter timed out each time


@pytest_twisted.ensureDeferred
async def test_the_filter_queue_is_bounded(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(_config(tmp_path, upstream.url, threads=1, max_queue=2))
    async def get() -> tuple[int, bytes]:
        response = await http.get(gw.url + "/slow/x")
        await response.content()
        return response.code, (response.headers.getRawHeaders(b"retry-after") or [b""])[0]

    answers = [await d for d in [defer.ensureDeferred(get()) for _ in range(6)]]
    codes = [code for code, _ in answers]
    assert codes.count(503) >= 2 and set(codes) <= {502, 503}, codes
    assert {retry for code, retry in answers if code == 503} == {b"1"}  # come back in a second
    response = await http.get(gw.url + "/slow/x")  # all done: room again
    assert response.code == 502
    await response.content()
    response = await http.get(gw.admin_url + "/metrics")
    text = (await response.content()).decode()
    assert f"wasmgate_filter_queue_rejected_total {float(codes.count(503))}" in text


def _leave(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /slow/x HTTP/1.1\r\nHost: x\r\n\r\n")


@pytest_twisted.ensureDeferred
async def test_queued_work_of_clients_that_left_is_not_done(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(_config(tmp_path, upstream.url, threads=1))
    port = int(gw.url.rsplit(":", 1)[1])
    for _ in range(8):
        await threads.deferToThread(_leave, port)  # each leaves at once
    await task.deferLater(reactor, 1.0, lambda: None)
    response = await http.get(gw.admin_url + "/metrics")
    text = (await response.content()).decode()
    dropped = float(text.split("\nwasmgate_filter_jobs_dropped_total ")[1].split()[0])
    assert dropped >= 5, text
