"""
The smaller promises about what a client gets: reason phrases, no invented
headers, no banner unless asked for, 502 (not 500) when an upstream dies
while its body is buffered, and one access-log line for every request,
aborted ones included.
"""
from __future__ import annotations

import json
import socket
import time

import pytest_twisted
import wasmtime
from twisted.internet import reactor, task, threads
from twisted.internet.protocol import Factory, Protocol

from tests import wasm_guests as g
from tests.conftest import gateway_yaml, read_until_closed


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _raw(port: int, data: bytes, *, linger: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        if linger:
            time.sleep(linger)
            return b""
        return read_until_closed(sock, ignore_errors=True)


def _head(answer: bytes) -> dict[bytes, bytes]:
    head = answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return {n.strip().lower(): v.strip() for n, _, v in (line.partition(b":") for line in head)}


@pytest_twisted.ensureDeferred
async def test_304_gets_no_invented_length_and_no_banner(recording, start_gateway):
    recorder, url = recording(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n")
    gw = start_gateway(gateway_yaml(url))
    answer = await threads.deferToThread(
        _raw, _port(gw.url), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 304 Not Modified\r\n")
    head = _head(answer)
    assert b"content-length" not in head and b"transfer-encoding" not in head
    assert b"server" not in head and head[b"etag"] == b'"x"'
    # The gateway's own answers carry no banner either.
    answer = await threads.deferToThread(_raw, _port(gw.url), b"GET /x%zz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"server" not in _head(answer)


@pytest_twisted.ensureDeferred
async def test_a_banner_when_configured(upstream, start_gateway):
    gw = start_gateway(gateway_yaml(upstream.url, server="  banner: wasmgate"))
    answer = await threads.deferToThread(_raw, _port(gw.url), b"GET /x%zz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _head(answer)[b"server"] == b"wasmgate"


@pytest_twisted.ensureDeferred
async def test_429_says_too_many_requests(tmp_path, upstream, start_gateway):
    limiter = tmp_path / "limited.wasm"
    limiter.write_bytes(wasmtime.wat2wasm(g.RATE_LIMITED_429))
    routes = "  - {name: all, match: {path_prefix: /}, filters: [limited], upstream: backend}\n"
    gw = start_gateway(gateway_yaml(upstream.url, routes=routes, extra=f"plugins:\n  - {{name: limited, path: {limiter}}}\n"))
    answer = await threads.deferToThread(
        _raw, _port(gw.url), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")


class _DiesMidBody(Protocol):
    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\nonly this")
            reactor.callLater(0.05, self.transport.abortConnection)


@pytest_twisted.ensureDeferred
async def test_upstream_dying_mid_body_on_a_buffered_route_is_502(tmp_path, start_gateway):
    port = reactor.listenTCP(0, Factory.forProtocol(_DiesMidBody), interface="127.0.0.1")
    try:
        reader = tmp_path / "reader.wasm"
        reader.write_bytes(wasmtime.wat2wasm(g.RESPONSE_HEADER))
        extra = f"plugins:\n  - {{name: reader, path: {reader}, include_body: true}}\n"
        routes = "  - {name: all, match: {path_prefix: /}, filters: [reader], upstream: backend}\n"
        gw = start_gateway(gateway_yaml(f"http://127.0.0.1:{port.getHost().port}", routes=routes, extra=extra))
        answer = await threads.deferToThread(
            _raw, _port(gw.url), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 502 ") and b"Traceback" not in answer
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_every_request_gets_an_access_log_line(tmp_path, upstream, start_gateway):
    """Refused at the wire, timed out, abandoned by the client: each is a line, as nginx does."""
    path = tmp_path / "access.jsonl"
    gw = start_gateway(
        gateway_yaml(upstream.url, server="  timeouts: {read: 300ms}") + f"access_log: {path}\n"
    )
    port = _port(gw.url)
    await threads.deferToThread(_raw, port, b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n")  # 400
    await threads.deferToThread(_raw, port, b"GET /echo HTTP/1.1\r\nHost: x\r\n")  # 408
    await threads.deferToThread(_raw, port, b"GET /slow?delay=3 HTTP/1.1\r\nHost: x\r\n\r\n", linger=0.3)  # 499
    await threads.deferToThread(_raw, port, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await task.deferLater(reactor, 0.2, lambda: None)
    gw.service.access_file.flush()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    statuses = sorted(line["status"] for line in lines)
    assert statuses == [200, 400, 408, 499], lines
    gone = next(line for line in lines if line["status"] == 499)
    assert gone["route"] == "all" and gone["path"] == "/slow" and "client closed" in gone["error"]
