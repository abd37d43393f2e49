# -*- test-case-name: tests.test_exchange_lifetime -*-
"""
A finished exchange is freed by reference counting, not left to the garbage
collector: the gateway tunes the collector to run rarely, so every cycle
left behind by a request is memory held under load (tens of MiB at 500
connections before the forward let go of its exchange).

The same holds for a closed connection, plain or TLS, when the client
leaves without a word (no close_notify): before, each one's protocol,
parser and timers, and over TLS its OpenSSL state, waited for the
collector (about 32 KiB a TLS connection, doubling the memory of a second
burst of 500).
"""
from __future__ import annotations

import gc
import shutil
import socket
import ssl
from pathlib import Path

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import reactor, task, threads

from tests.certs import issue, make_ca, write_pair
from tests.conftest import gateway_yaml
from wasmgate import proxy
from wasmgate.http.message import RequestBody
from wasmgate.http.server import HTTP11ServerProtocol
from wasmgate.http.upstream import UpstreamConnection
from wasmgate.wasm import chain

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"

FILTERS = """
plugins:
  - name: rate_limiter
    path: rate_limiter.wasm
    config: {limit: 1000000, window: 60s, key: client_ip}
  - name: pii_redactor
    path: pii_redactor.wasm
"""

ROUTES = """
  - {name: filtered, match: {path_prefix: /f}, upstream: backend,
     filters: [rate_limiter, pii_redactor]}
  - {name: plain, match: {path_prefix: /}, upstream: backend}
"""


def _alive(cls: type) -> int:
    """How many instances of C{cls} the collector tracks, reachable or not."""
    return sum(1 for o in gc.get_objects() if type(o) is cls)


@pytest_twisted.ensureDeferred
async def test_finished_exchanges_need_no_garbage_collection(
    upstream, start_gateway, http, tmp_path
):
    for name in ("rate_limiter", "pii_redactor"):
        shutil.copy(PLUGINS / f"{name}.wasm", tmp_path / f"{name}.wasm")
    gw = start_gateway(gateway_yaml(upstream.url, extra=FILTERS, routes=ROUTES))
    # Warm up: pools, instances and the client's connection exist before.
    for path in ("/f/echo", "/echo"):
        await (await http.get(gw.url + path, headers={"Authorization": "x"})).content()
    gc.collect()
    gc.disable()
    try:
        before = (_alive(proxy.Exchange), _alive(chain.RequestRun), _alive(RequestBody))
        for _ in range(20):
            for path in ("/f/echo", "/echo"):
                response = await http.get(gw.url + path, headers={"Authorization": "x"})
                await response.content()
                assert response.code == 200
                # A body, streamed upstream on the plain route, read by
                # the redactor on the filtered one.
                response = await http.post(gw.url + path, data=b"x" * 1024)
                await response.content()
                assert response.code == 200
        after = (_alive(proxy.Exchange), _alive(chain.RequestRun), _alive(RequestBody))
    finally:
        gc.enable()
    # Eighty requests later, at most the one in flight per path is left.
    assert after[0] - before[0] <= 2, after
    assert after[1] - before[1] <= 2, after
    assert after[2] - before[2] <= 2, after


TLS = """
  tls:
    certificates:
      - {hosts: [localhost], cert: site.pem, key: site.key}
"""


def _get_and_leave(port: int, secure: bool, count: int) -> None:
    """C{count} connections, a request each, closed without a word."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if secure:
            sock = context.wrap_socket(sock, server_hostname="localhost")
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n")
        seen = b""
        while b"\r\n\r\n" not in seen:
            seen += sock.recv(65536)
        assert seen.startswith(b"HTTP/1.1 200 "), seen
        # (an ssl socket's close sends no close_notify without unwrap())
        sock.close()


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "tls"])
@pytest_twisted.ensureDeferred
async def test_closed_connections_need_no_garbage_collection(
    upstream, start_gateway, tmp_path, secure
):
    server = ""
    if secure:
        write_pair(issue(make_ca(), ["localhost"], serial=7), tmp_path / "site.pem", tmp_path / "site.key")
        server = TLS
    gw = start_gateway(gateway_yaml(upstream.url, server=server))
    port = int(gw.url.rsplit(":", 1)[1])
    await threads.deferToThread(_get_and_leave, port, secure, 1)  # warm up
    await task.deferLater(reactor, 0.1, lambda: None)
    gc.collect()
    gc.disable()
    try:
        before = (_alive(HTTP11ServerProtocol), _alive(SSL.Connection))
        await threads.deferToThread(_get_and_leave, port, secure, 20)
        for _ in range(50):  # until the gateway has seen them go
            await task.deferLater(reactor, 0.05, lambda: None)
            after = (_alive(HTTP11ServerProtocol), _alive(SSL.Connection))
            if after[0] - before[0] <= 1 and after[1] - before[1] <= 1:
                break
    finally:
        gc.enable()
    assert after[0] - before[0] <= 1, (before, after)
    assert after[1] - before[1] <= 1, (before, after)


@pytest_twisted.ensureDeferred
async def test_closed_upstream_connections_need_no_garbage_collection(recording, start_gateway, http):
    # An upstream that closes after each answer: a connection per request.
    recorder, url = recording(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    gw = start_gateway(gateway_yaml(url))
    await (await http.get(gw.url + "/")).content()
    gc.collect()
    gc.disable()
    try:
        before = _alive(UpstreamConnection)
        for _ in range(20):
            response = await http.get(gw.url + "/")
            assert await response.content() == b"ok"
        await task.deferLater(reactor, 0.1, lambda: None)
        after = _alive(UpstreamConnection)
    finally:
        gc.enable()
    assert len(recorder.connections) == 21
    assert after - before <= 1, (before, after)
