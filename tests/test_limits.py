"""
Resource limits on the client side, end to end: the connection cap (idle
kept-alive connections make room first), the file descriptor limit, and a
slowloris that trickles its request line.
"""
from __future__ import annotations

import resource
import select
import socket
import time

import pytest_twisted
from twisted.internet import reactor, task, threads

from tests.conftest import gateway_yaml, read_until_closed


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _get(sock: socket.socket, path: bytes = b"/echo") -> bytes:
    sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += sock.recv(65536)
    return head


async def _scrape(http, gw) -> str:
    response = await http.get(gw.admin_url + "/metrics")
    return (await response.content()).decode()


@pytest_twisted.ensureDeferred
async def test_connection_cap_closes_idle_ones_first_then_refuses(upstream, start_gateway, http):
    gw = start_gateway(gateway_yaml(upstream.url, server="  max_connections: 2"))
    port = _port(gw.url)
    first = socket.create_connection(("127.0.0.1", port), timeout=5)
    second = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        await threads.deferToThread(_get, first)
        await threads.deferToThread(_get, second)
        # Both are idle, kept alive: a third client gets in, the idlest goes.
        third = socket.create_connection(("127.0.0.1", port), timeout=5)
        head = await threads.deferToThread(_get, third)
        assert head.startswith(b"HTTP/1.1 200")
        assert await threads.deferToThread(first.recv, 1024) == b""  # closed to make room
        # Now two requests in flight hold both places: a new client is closed at once.
        second.sendall(b"GET /slow?delay=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        third.sendall(b"GET /slow?delay=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        await task.deferLater(reactor, 0.2, lambda: None)
        fourth = socket.create_connection(("127.0.0.1", port), timeout=5)
        fourth.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await threads.deferToThread(read_until_closed, fourth, ignore_errors=True) == b""
        fourth.close()
        third.close()
    finally:
        first.close()
        second.close()
    text = await _scrape(http, gw)
    assert "wasmgate_connections_refused_total 1.0" in text
    assert "wasmgate_connections_idle_closed_total 1.0" in text


def test_the_fd_limit_is_raised_and_the_default_cap_is_under_it() -> None:
    from wasmgate.service import default_max_connections

    cap = default_max_connections()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == hard or hard == resource.RLIM_INFINITY
    assert 64 <= cap < soft


def _trickle(port: int, gap: float) -> tuple[bytes, float]:
    """Send a request a byte at a time until the gateway answers; the answer and when."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        for byte in b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 100 + b"\r\n\r\n":
            if select.select([sock], [], [], gap)[0]:
                break
            sock.sendall(bytes([byte]))
        took = time.monotonic() - started
        return read_until_closed(sock, ignore_errors=True), took


@pytest_twisted.ensureDeferred
async def test_slowloris_gets_408_at_the_read_deadline(upstream, start_gateway):
    """One byte every 0.2 s never resets a 0.6 s read deadline."""
    gw = start_gateway(gateway_yaml(upstream.url, server="  timeouts: {read: 600ms, idle: 5s}"))
    answer, took = await threads.deferToThread(_trickle, _port(gw.url), 0.2)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert 0.5 < took < 1.5, took
    assert upstream.app.connections == 0
