"""
HTTP/1.1 conformance of the gateway on the wire: raw request bytes from a
client socket, and the exact bytes a recording upstream received, for
framing attacks (smuggling, folding, bare LF, bad chunks), limits,
pipelining and 100-continue; and the upstream side's own framing (HEAD,
interim responses, bodies that end with the connection), backpressure both
ways, and cancellation.
"""
from __future__ import annotations

import re
import socket
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads
from twisted.internet.protocol import Factory, Protocol

from tests.conftest import gateway_yaml, read_until_closed


def _exchange(port: int, data: bytes, *, then: bytes = b"", pause: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        if then:
            time.sleep(pause)
            try:
                sock.sendall(then)
            except OSError:
                pass
        return read_until_closed(sock, ignore_errors=True)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


FWD = (
    b"x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: x\r\n"
    b"x-request-id: ID\r\ntraceparent: TRACE\r\n"
)


def _stable(received: bytes) -> bytes:
    """What the upstream received, with the request ID and trace context (random) as placeholders."""
    received = re.sub(rb"x-request-id: [0-9a-f]{32}", b"x-request-id: ID", received)
    return re.sub(rb"traceparent: 00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]", b"traceparent: TRACE", received)

CASES = [
    # (what, request bytes, status, exact bytes the upstream received)
    ("plain GET", b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200,
     b"GET /a HTTP/1.1\r\nhost: x\r\n" + FWD + b"\r\n"),
    ("body with Content-Length", b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc", 200,
     b"POST /a HTTP/1.1\r\nhost: x\r\n" + FWD + b"content-length: 3\r\n\r\nabc"),
    ("chunked body, trailer dropped",
     b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
     b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n", 200,
     b"POST /a HTTP/1.1\r\nhost: x\r\n" + FWD + b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("Content-Length and Transfer-Encoding",
     b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
     400, b""),
    ("duplicate Content-Length", b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400, b""),
    ("chunked, identity", b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400, b""),
    ("unknown coding", b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, b""),
    ("obs-fold", b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400, b""),
    ("bare LF", b"GET /a HTTP/1.1\nHost: x\n\n", 400, b""),
    ("NUL in a value", b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400, b""),
    ("CR in a value", b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400, b""),
    ("space before the colon", b"GET /a HTTP/1.1\r\nHost : x\r\n\r\n", 400, b""),
    ("HTTP/0.9", b"GET /a\r\n\r\n", 400, b""),
    ("HTTP/1.1 without Host", b"GET /a HTTP/1.1\r\n\r\n", 400, b""),
    ("two Hosts", b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400, b""),
    ("request line too long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, b""),
    ("headers too large", b"GET /a HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n", 431, b""),
    ("fragment", b"GET /a#x HTTP/1.1\r\nHost: x\r\n\r\n", 400, b""),
    ("unknown method", b"BREW /a HTTP/1.1\r\nHost: x\r\n\r\n", 501, b""),
    ("absolute form names the host",
     b"GET http://other.example/a?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200,
     b"GET /a?q=1 HTTP/1.1\r\nhost: other.example\r\n"
     b"x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: other.example\r\n"
     b"x-request-id: ID\r\ntraceparent: TRACE\r\n\r\n"),
]


@pytest.mark.parametrize("what, request_bytes, status, upstream_bytes", CASES, ids=[c[0] for c in CASES])
@pytest_twisted.ensureDeferred
async def test_framing_table(recording, start_gateway, what, request_bytes, status, upstream_bytes):
    recorder, url = recording()
    gw = start_gateway(gateway_yaml(url))
    answer = await threads.deferToThread(_exchange, _port(gw.url), request_bytes)
    assert answer.startswith(b"HTTP/1.1 %d " % status), (what, answer[:200])
    if status >= 400:
        assert b"\r\nConnection: close\r\n" in answer.split(b"\r\n\r\n")[0] + b"\r\n", what
    await task.deferLater(reactor, 0.05, lambda: None)
    assert _stable(recorder.received) == upstream_bytes, what


@pytest_twisted.ensureDeferred
async def test_a_bad_chunk_mid_body_never_reaches_the_upstream_whole(recording, start_gateway):
    """
    A streamed body whose framing breaks half-way: the client gets 400 and
    the upstream request is reset, never completed.
    """
    recorder, url = recording()
    gw = start_gateway(gateway_yaml(url))
    head = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    answer = await threads.deferToThread(
        _exchange, _port(gw.url), head, then=b"zz\r\nnot a chunk size\r\n", pause=0.3
    )
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert recorder.requests == 0
    sent = b"POST /a HTTP/1.1\r\nhost: x\r\n" + FWD + b"transfer-encoding: chunked\r\n\r\n"
    assert _stable(recorder.received) in (b"", sent, sent + b"3\r\nabc\r\n")


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_go_upstream_and_back_in_order(recording, start_gateway):
    recorder, url = recording()
    gw = start_gateway(gateway_yaml(url))
    answer = await threads.deferToThread(
        _exchange,
        _port(gw.url),
        b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
        b"GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert _stable(recorder.received) == (
        b"GET /first HTTP/1.1\r\nhost: x\r\n" + FWD + b"\r\n"
        b"POST /second HTTP/1.1\r\nhost: x\r\n" + FWD + b"content-length: 2\r\n\r\nhi"
        b"GET /third HTTP/1.1\r\nhost: x\r\n" + FWD + b"\r\n"
    )
    assert len(recorder.connections) == 1  # one kept-alive upstream connection


def _expect_continue(port: int) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = sock.recv(1024)
        sock.sendall(b"hello")
        return interim, read_until_closed(sock)


@pytest_twisted.ensureDeferred
async def test_expect_100_continue(recording, start_gateway):
    recorder, url = recording()
    gw = start_gateway(gateway_yaml(url))
    interim, final = await threads.deferToThread(_expect_continue, _port(gw.url))
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 200 ")
    # The gateway answered the expectation itself: the upstream gets a plain request.
    assert _stable(recorder.received) == b"PUT /up HTTP/1.1\r\nhost: x\r\n" + FWD + b"content-length: 5\r\n\r\nhello"


@pytest.mark.parametrize(
    "answer, request_bytes, expected",
    [
        # HEAD: the upstream's Content-Length, no body; the connection stays usable.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n", b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n",
         b"content-length: 12345"),
        # Interim responses are not passed on.
        (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
         b"GET /i HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n\r\nok"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_upstream_framing(recording, start_gateway, answer, request_bytes, expected):
    recorder, url = recording(answer)
    gw = start_gateway(gateway_yaml(url))
    got = await threads.deferToThread(
        _exchange, _port(gw.url), request_bytes + b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert got.startswith(b"HTTP/1.1 200 OK") and expected in got.lower()
    assert b"103" not in got
    assert got.count(b"HTTP/1.1 200 OK") == 2  # the next request was answered too
    assert len(recorder.connections) == 1  # on the same upstream connection


class _CloseDelimited(Protocol):
    """An HTTP/1.0-style upstream: no length, the body ends with the connection."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
            self.transport.write(b"part one, ")
            reactor.callLater(0.05, self._rest)

    def _rest(self) -> None:
        self.transport.write(b"part two")
        self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_upstream_body_that_ends_with_its_connection(start_gateway):
    port = reactor.listenTCP(0, Factory.forProtocol(_CloseDelimited), interface="127.0.0.1")
    try:
        gw = start_gateway(gateway_yaml(f"http://127.0.0.1:{port.getHost().port}"))
        got = await threads.deferToThread(
            _exchange, _port(gw.url), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        head, _, body = got.partition(b"\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in head
        assert body == b"a\r\npart one, \r\n8\r\npart two\r\n0\r\n\r\n"
    finally:
        await port.stopListening()


class _SlowReader(Protocol):
    """An upstream that reads nothing of what it is sent."""

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        _SlowReader.last = self


def _upload(port: int, size: int, seconds: float) -> int:
    """Send up to C{size} bytes of a body for C{seconds}; how many went out."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.sendall(b"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        sock.settimeout(0.2)
        sent = 0
        chunk = b"u" * 65536
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and sent < size:
            try:
                sent += sock.send(chunk)
            except socket.timeout:
                continue
        return sent


@pytest_twisted.ensureDeferred
async def test_a_slow_upstream_pauses_reading_the_client(start_gateway):
    """
    A body streams at the upstream's pace: when the upstream takes nothing,
    the gateway stops reading the client after a bounded amount (socket
    buffers and a small queue), instead of buffering the whole upload.
    """
    port = reactor.listenTCP(0, Factory.forProtocol(_SlowReader), interface="127.0.0.1")
    try:
        gw = start_gateway(gateway_yaml(f"http://127.0.0.1:{port.getHost().port}",
                                        server="  max_body_bytes: 500000000\n  shutdown_timeout: 100ms"))
        sent = await threads.deferToThread(_upload, _port(gw.url), 400 * 1024 * 1024, 1.5)
        assert sent < 32 * 1024 * 1024, sent
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_slow_client_pauses_the_upstream_until_it_reads(upstream, start_gateway, http):
    """
    A client that reads nothing for a while (within the write timeout)
    holds the upstream's stream back; once it reads, all of it arrives.
    """
    import treq

    gw = start_gateway(gateway_yaml(upstream.url, server="  timeouts: {write: 10s}"))
    size = 64 * 1024 * 1024
    response = await http.get(gw.url + f"/stream?size={size}")
    await task.deferLater(reactor, 1.0, lambda: None)  # nothing read meanwhile
    assert not upstream.app.stream_finished  # paused, not buffered in the gateway
    received = []
    await treq.collect(response, lambda data: received.append(len(data)))
    assert sum(received) == size and upstream.app.stream_finished


def _read_some_then_leave(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /slow?delay=5 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
    return b""


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_cancels_its_upstream_request(upstream, start_gateway):
    gw = start_gateway(gateway_yaml(upstream.url))
    await threads.deferToThread(_read_some_then_leave, _port(gw.url))
    for _ in range(50):
        if upstream.app.cancelled:
            break
        await task.deferLater(reactor, 0.05, lambda: None)
    assert upstream.app.cancelled == 1
    assert gw.service.generation.in_flight == 0


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(300)) + b"Content-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Huge: " + b"h" * 100_000 + b"\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["too many", "too large"],
)
@pytest_twisted.ensureDeferred
async def test_upstream_response_headers_are_capped(recording, start_gateway, answer):
    recorder, url = recording(answer)
    gw = start_gateway(gateway_yaml(url))
    got = await threads.deferToThread(
        _exchange, _port(gw.url), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert got.startswith(b"HTTP/1.1 502 ") and len(got) < 1000
