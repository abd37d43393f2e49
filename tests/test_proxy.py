"""
The reverse proxy end to end: a real gateway in front of a real upstream.
"""
from __future__ import annotations

import json
import time
import socket

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor, threads, task
from twisted.internet.protocol import Factory, Protocol
from twisted.web import server

from tests.conftest import gateway_yaml, read_until_closed
from tests.upstream_app import UpstreamApp


async def _json(response):
    return json.loads(await response.text())


@pytest_twisted.ensureDeferred
async def test_methods_query_and_headers_pass_both_ways(upstream, start_gateway, http):
    gw = start_gateway(gateway_yaml(upstream.url))
    for method in ("GET", "POST", "PUT", "DELETE"):
        body = b"payload-" + method.encode() if method in ("POST", "PUT") else None
        response = await http.request(
            method, gw.url + "/echo/x?a=1&b=two", data=body, headers={"X-Custom": "v1"}
        )
        assert response.code == 200
        assert response.headers.getRawHeaders("x-upstream") == ["yes"]
        echo = await _json(response)
        assert echo["method"] == method
        assert echo["uri"] == "/echo/x?a=1&b=two"
        assert echo["headers"]["x-custom"] == ["v1"]
        assert echo["body"] == (body.decode() if body else "")
        # Host passes through unchanged.
        assert echo["headers"]["host"] == [gw.url.split("//")[1]]


@pytest_twisted.ensureDeferred
async def test_multi_valued_headers_stay_multiple(upstream, start_gateway, http):
    gw = start_gateway(gateway_yaml(upstream.url))
    response = await http.get(gw.url + "/cookies")
    assert response.headers.getRawHeaders("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    await response.content()
    response = await http.get(gw.url + "/echo", headers={"X-Many": ["1", "2"]})
    echo = await _json(response)
    assert echo["headers"]["x-many"] == ["1", "2"]


@pytest_twisted.ensureDeferred
async def test_chunked_upstream_response(upstream, start_gateway, http):
    gw = start_gateway(gateway_yaml(upstream.url))
    response = await http.get(gw.url + "/chunked")
    assert response.code == 200
    assert await response.content() == b"".join(b"chunk-%d;" % i for i in range(5))


@pytest_twisted.ensureDeferred
async def test_large_response_is_streamed(upstream, start_gateway, http):
    """The client gets the first bytes while the upstream still holds the rest."""
    gw = start_gateway(gateway_yaml(upstream.url))
    size = 8 * 1024 * 1024
    response = await http.get(gw.url + f"/stream?size={size}&hold=1")
    assert response.code == 200
    assert response.length == size
    first = defer.Deferred()
    received = []

    def collect(data: bytes) -> None:
        received.append(len(data))
        if not first.called:
            first.callback(None)

    done = treq.collect(response, collect)
    await first
    # The upstream has not been told to send the rest yet: we are streaming.
    assert upstream.app.release is not None and not upstream.app.stream_finished
    upstream.app.release()
    await done
    assert sum(received) == size


@pytest_twisted.ensureDeferred
async def test_keep_alive_reuses_connections_both_sides(upstream, start_gateway, http):
    gw = start_gateway(gateway_yaml(upstream.url))
    for _ in range(10):
        response = await http.get(gw.url + "/echo")
        await response.content()
    # One upstream connection for ten sequential requests.
    assert upstream.app.connections == 1
    # ...and one client connection (the client pool kept it).
    assert len(http._agent._pool._connections) == 1


@pytest_twisted.ensureDeferred
async def test_hop_by_hop_headers_are_stripped(upstream, start_gateway, http):
    gw = start_gateway(gateway_yaml(upstream.url))
    response = await http.get(gw.url + "/hop")
    await response.content()
    names = {k.decode().lower() for k, _ in response.headers.getAllRawHeaders()}
    assert "x-private-hop" not in names
    assert "keep-alive" not in names
    assert "proxy-authenticate" not in names
    assert response.headers.getRawHeaders("x-end-to-end") == ["kept"]
    # Request side: hop-by-hop and what Connection names never reach the upstream.
    response = await http.get(
        gw.url + "/echo",
        headers={
            "Connection": "keep-alive, X-Hop-Me",
            "X-Hop-Me": "secret",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic eA==",
            "X-Stays": "yes",
        },
    )
    sent = (await _json(response))["headers"]
    for name in ("x-hop-me", "keep-alive", "te", "proxy-authorization"):
        assert name not in sent, name
    assert sent["x-stays"] == ["yes"]


@pytest_twisted.ensureDeferred
async def test_x_forwarded_for_untrusted_peer_is_replaced(upstream, start_gateway, http):
    gw = start_gateway(gateway_yaml(upstream.url))  # trusts 10.0.0.0/8 only
    response = await http.get(
        gw.url + "/echo",
        headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil"},
    )
    sent = (await _json(response))["headers"]
    assert sent["x-forwarded-for"] == ["127.0.0.1"]
    assert sent["x-forwarded-proto"] == ["http"]
    assert sent["x-forwarded-host"] == [gw.url.split("//")[1]]


@pytest_twisted.ensureDeferred
async def test_x_forwarded_for_trusted_peer_is_appended(upstream, start_gateway, http):
    text = gateway_yaml(upstream.url).replace('["10.0.0.0/8"]', '["127.0.0.1/32"]')
    gw = start_gateway(text)
    response = await http.get(gw.url + "/echo", headers={"X-Forwarded-For": "1.2.3.4"})
    sent = (await _json(response))["headers"]
    assert sent["x-forwarded-for"] == ["1.2.3.4, 127.0.0.1"]
    assert sent["x-forwarded-proto"] == ["http"]
    # A TLS-terminating load balancer in front: its scheme and host pass on.
    response = await http.get(
        gw.url + "/echo",
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "shop.example.com"},
    )
    sent = (await _json(response))["headers"]
    assert sent["x-forwarded-proto"] == ["https"]
    assert sent["x-forwarded-host"] == ["shop.example.com"]


def _raw_exchange(port: int, request: bytes, *, then: bytes = b"") -> bytes:
    """Send raw bytes, then C{then} (ignoring errors), and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        try:
            if then:
                sock.sendall(then)
        except OSError:
            pass
        return read_until_closed(sock, ignore_errors=True)


def _dead_url() -> str:
    """An address where nothing listens (bound a moment, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest_twisted.ensureDeferred
async def test_body_over_limit_with_content_length_is_413(upstream, start_gateway):
    gw = start_gateway(gateway_yaml(upstream.url, server="  max_body_bytes: 1000"))
    answer = await threads.deferToThread(
        _raw_exchange,
        _port(gw.url),
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n",
        then=b"y" * 4096,
    )
    assert answer.startswith(b"HTTP/1.1 413 ")
    # Nothing reached the upstream.
    assert upstream.app.connections == 0


@pytest_twisted.ensureDeferred
async def test_chunked_body_over_limit_is_413(upstream, start_gateway):
    """
    A chunked body streams to the upstream as it comes; once it goes past
    the limit the upstream request is reset (it never gets a whole
    request) and the client gets a 413.
    """
    gw = start_gateway(gateway_yaml(upstream.url, server="  max_body_bytes: 1000"))
    chunk = b"400\r\n" + b"z" * 0x400 + b"\r\n"
    answer = await threads.deferToThread(
        _raw_exchange,
        _port(gw.url),
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2,
    )
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert upstream.app.requests == 0


@pytest.mark.parametrize("trailers", [
    b"X-Big: " + b"a" * 1_000_000,  # one line that never ends
    b"X-T: a\r\n" * 10_000,  # many small ones
    b"",  # a chunk line whose extension never ends (below)
], ids=["long-trailer", "many-trailers", "long-chunk-extension"])
@pytest_twisted.ensureDeferred
async def test_chunk_framing_and_trailers_are_bounded_like_a_head(upstream, start_gateway, trailers):
    """
    What a chunked body carries besides its data (chunk lines, trailers) is
    bounded by the head limits (give or take one read): past them the
    body is malformed, the
    client gets a 400 and the upstream request, already streaming, is reset
    (it never gets a whole request).
    """
    gw = start_gateway(gateway_yaml(upstream.url))
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    rest = b"0\r\n" + trailers if trailers else b"5;ext=" + b"e" * 1_000_000
    answer = await threads.deferToThread(_raw_exchange, _port(gw.url), head, then=rest)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert answer.endswith(b"malformed request body\n")
    assert upstream.app.requests == 0


@pytest_twisted.ensureDeferred
async def test_a_few_trailers_pass_and_are_not_forwarded(upstream, start_gateway):
    gw = start_gateway(gateway_yaml(upstream.url))
    answer = await threads.deferToThread(
        _raw_exchange, _port(gw.url),
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    echoed = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert echoed["body"] == "hello"
    assert "x-trailer" not in echoed["headers"]


@pytest_twisted.ensureDeferred
async def test_body_at_the_limit_passes(upstream, start_gateway, http):
    gw = start_gateway(gateway_yaml(upstream.url, server="  max_body_bytes: 1000"))
    response = await http.post(gw.url + "/echo", data=b"q" * 1000)
    assert response.code == 200
    assert (await _json(response))["body"] == "q" * 1000


@pytest_twisted.ensureDeferred
async def test_dead_upstream_is_502(start_gateway, http):
    gw = start_gateway(gateway_yaml(_dead_url()))
    response = await http.get(gw.url + "/echo")
    assert response.code == 502
    body = await response.text()
    assert "Traceback" not in body and len(body) < 200


@pytest_twisted.ensureDeferred
async def test_slow_upstream_is_504_and_upstream_request_cancelled(upstream, start_gateway, http):
    routes = """
  - name: slow
    match: {path_prefix: /}
    upstream: backend
    timeout: 300ms
"""
    gw = start_gateway(gateway_yaml(upstream.url, routes=routes))
    started = reactor.seconds()
    response = await http.get(gw.url + "/slow?delay=5")
    assert response.code == 504
    assert reactor.seconds() - started < 3
    await response.content()
    # The gateway dropped its upstream request.
    for _ in range(50):
        if upstream.app.cancelled:
            break
        await task.deferLater(reactor, 0.05, lambda: None)
    assert upstream.app.cancelled == 1


@pytest_twisted.ensureDeferred
async def test_client_gone_cancels_upstream_request(upstream, start_gateway, http):
    gw = start_gateway(gateway_yaml(upstream.url))
    d = http.get(gw.url + "/slow?delay=5")
    await task.deferLater(reactor, 0.3, lambda: None)
    d.cancel()
    with pytest.raises(Exception):
        await d
    for _ in range(50):
        if upstream.app.cancelled:
            break
        await task.deferLater(reactor, 0.05, lambda: None)
    assert upstream.app.cancelled == 1


@pytest_twisted.ensureDeferred
async def test_routes_by_host_and_longest_prefix(start_upstream, start_gateway, http):
    a, b, c = start_upstream("a"), start_upstream("b"), start_upstream("c")
    text = f"""
server:
  listen: "tcp:0:interface=127.0.0.1"
admin: {{listen: "tcp:0:interface=127.0.0.1"}}
routes:
  - {{match: {{path_prefix: /}}, upstream: a}}
  - {{match: {{path_prefix: /api}}, upstream: b}}
  - {{match: {{host: api.example.com, path_prefix: /}}, upstream: c}}
upstreams:
  a: {{targets: ["{a.url}"]}}
  b: {{targets: ["{b.url}"]}}
  c: {{targets: ["{c.url}"]}}
"""
    gw = start_gateway(text)
    async def who(path, host=None):
        headers = {"Host": host} if host else {}
        response = await http.get(gw.url + path, headers=headers)
        await response.content()
        return response

    await who("/apix")
    await who("/api/v1")
    await who("/api")
    await who("/anything", host="api.example.com:8080")
    assert (a.app.connections, b.app.connections, c.app.connections) == (1, 1, 1)


@pytest_twisted.ensureDeferred
async def test_round_robin_skips_a_dead_target(start_upstream, start_gateway, http):
    a, b = start_upstream("a"), start_upstream("b")
    gw = start_gateway(gateway_yaml([a.url, _dead_url(), b.url]))
    codes = []
    for _ in range(9):
        response = await http.get(gw.url + "/echo")
        await response.content()
        codes.append(response.code)
    # GETs retried on another target: none failed, both live targets used.
    assert codes == [200] * 9
    assert a.app.connections == 1 and b.app.connections == 1


@pytest_twisted.ensureDeferred
async def test_post_is_not_retried_on_another_target(start_upstream, start_gateway, http):
    a = start_upstream("a")
    gw = start_gateway(gateway_yaml([_dead_url(), a.url]))
    response = await http.post(gw.url + "/echo", data=b"once")
    await response.content()
    assert response.code == 502


@pytest_twisted.ensureDeferred
async def test_no_route_is_404(upstream, start_gateway, http):
    routes = """
  - {match: {path_prefix: /only}, upstream: backend}
"""
    gw = start_gateway(gateway_yaml(upstream.url, routes=routes))
    response = await http.get(gw.url + "/elsewhere")
    assert response.code == 404
    await response.content()


@pytest_twisted.ensureDeferred
async def test_head_keeps_the_upstream_content_length(upstream, start_gateway, http):
    gw = start_gateway(gateway_yaml(upstream.url))
    response = await http.head(gw.url + "/stream?size=12345")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-length") == ["12345"]
    assert await response.content() == b""
    # The connection is still good for the next request.
    response = await http.get(gw.url + "/echo")
    assert response.code == 200
    await response.content()


@pytest_twisted.ensureDeferred
async def test_no_content_and_not_modified(upstream, start_gateway, http):
    gw = start_gateway(gateway_yaml(upstream.url))
    for code in (204, 304):
        response = await http.get(gw.url + f"/status/{code}")
        assert response.code == code
        assert await response.content() == b""
    response = await http.get(gw.url + "/status/503")
    assert response.code == 503  # upstream errors pass through as they are
    assert await response.content() == b"status 503"


@pytest_twisted.ensureDeferred
async def test_only_connect_failures_eject_a_target(start_upstream, start_gateway, http):
    """
    A target answering 5xx is up (a client can make an application answer
    500 at will): it is not ejected. One that refuses connections is taken
    out after eject_after_failures in a row, which is logged and counted.
    """
    from twisted.logger import globalLogPublisher, formatEvent
    from tests.upstream_app import _Status

    a, b = start_upstream("a"), start_upstream("b")
    hits = {"a": 0, "b": 0}

    class Counted(_Status):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def render(self, request):
            hits[self.name] += 1
            return super().render(request)

    a.app.putChild(b"flaky", Counted("a"))
    b.app.putChild(b"flaky", Counted("b"))
    ejecting = "    eject_after_failures: 2\n    eject_for: 30s\n    targets:"
    gw = start_gateway(gateway_yaml([a.url, b.url]).replace("    targets:", ejecting))
    for _ in range(10):
        response = await http.get(gw.url + "/flaky/500")
        assert response.code == 500
        await response.content()
    assert hits == {"a": 5, "b": 5}  # both stay in rotation

    dead = _dead_url()
    logged: list[str] = []
    observer = lambda event: logged.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        # (One failure is enough here: a target that just failed is tried
        # last for a second, so a second failure in a row takes that long.)
        gw = start_gateway(
            gateway_yaml([dead, b.url]).replace("    targets:", ejecting.replace(": 2", ": 1")), name="dead.yaml"
        )
        for _ in range(6):
            response = await http.get(gw.url + "/echo")
            assert response.code == 200  # GETs retried on the live target
            await response.content()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert any("ejected for 30" in line and dead in line for line in logged), logged
    response = await http.get(gw.admin_url + "/metrics")
    scrape = (await response.content()).decode()
    assert f'wasmgate_upstream_ejections_total{{target="{dead}",upstream="backend"}} 1.0' in scrape
    assert f'wasmgate_upstream_healthy{{target="{dead}",upstream="backend"}} 0.0' in scrape


def _trickle(port: int) -> tuple[bytes, float]:
    """Send a request line and half the headers, then wait for the answer."""
    import time

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        answer = sock.recv(65536)
        return answer, time.monotonic() - started


@pytest_twisted.ensureDeferred
async def test_slow_client_gets_408(upstream, start_gateway):
    gw = start_gateway(gateway_yaml(upstream.url, server="  timeouts: {read: 300ms}"))
    answer, waited = await threads.deferToThread(_trickle, _port(gw.url))
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert 0.25 < waited < 3
    assert upstream.app.connections == 0


def _slow_upload(port: int, chunks: int, gap: float, then_stop: bool) -> bytes:
    """POST a chunked body a piece every C{gap} seconds (then maybe stall)."""
    import time

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        for _ in range(chunks):
            time.sleep(gap)
            sock.sendall(b"5\r\nhello\r\n")
        if not then_stop:
            sock.sendall(b"0\r\n\r\n")
        return read_until_closed(sock)


@pytest_twisted.ensureDeferred
async def test_read_timeout_is_a_gap_in_the_body_not_its_whole_length(upstream, start_gateway):
    """
    An upload that takes longer than the read timeout but keeps coming gets
    through; one that stops for longer than it gets a 408.
    """
    gw = start_gateway(gateway_yaml(upstream.url, server="  timeouts: {read: 400ms}"))
    answer = await threads.deferToThread(_slow_upload, _port(gw.url), 8, 0.1, False)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["body"] == "hello" * 8
    answer = await threads.deferToThread(_slow_upload, _port(gw.url), 2, 0.1, True)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]


def _never_read(port: int, size: int, wait: float) -> tuple[int, bool]:
    """GET a large body, read none of it for C{wait}, then drain what is left."""
    import time

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /stream?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        time.sleep(wait)
        received, closed = 0, False
        try:
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    closed = True
                    break
                received += len(data)
        except OSError:
            closed = True
        return received, closed


@pytest_twisted.ensureDeferred
async def test_client_that_stops_reading_is_dropped_after_the_write_timeout(upstream, start_gateway):
    gw = start_gateway(gateway_yaml(upstream.url, server="  timeouts: {write: 300ms}"))
    size = 64 * 1024 * 1024
    received, closed = await threads.deferToThread(_never_read, _port(gw.url), size, 1.5)
    assert closed and received < size
    assert not upstream.app.stream_finished  # the upstream was told to stop, not drained
    assert gw.service.generation.in_flight == 0


@pytest_twisted.ensureDeferred
async def test_path_spellings_cannot_walk_around_a_route(start_upstream, start_gateway):
    """
    Escaped letters, dot segments and doubled slashes are resolved before
    routing, and the upstream gets the path that was routed; paths that
    cannot be routed safely are refused with 400.
    """
    public, admin = start_upstream("public"), start_upstream("admin")
    text = f"""
server:
  listen: "tcp:0:interface=127.0.0.1"
admin: {{listen: "tcp:0:interface=127.0.0.1"}}
routes:
  - {{match: {{path_prefix: /}}, upstream: public}}
  - {{match: {{path_prefix: /admin}}, upstream: admin}}
upstreams:
  public: {{targets: ["{public.url}"]}}
  admin: {{targets: ["{admin.url}"]}}
"""
    gw = start_gateway(text)

    async def send(path: str) -> bytes:
        return await threads.deferToThread(
            _raw_exchange,
            _port(gw.url),
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )

    for spelling in ("/%61dmin/echo", "/public/../admin/echo", "//admin/echo", "/./admin/./echo?q=%2F"):
        answer = await send(spelling)
        assert answer.startswith(b"HTTP/1.1 200 "), (spelling, answer[:200])
        uri = json.loads(answer.split(b"\r\n\r\n", 1)[1])["uri"]
        assert uri.split("?")[0] == "/admin/echo", spelling
    assert public.app.connections == 0 and admin.app.connections == 1  # kept alive
    assert uri == "/admin/echo?q=%2F"  # the query is passed on as it came

    for refused in ("/..", "/admin/..%2F..%2Fx", "/a%2fadmin", "/bad%zzescape"):
        answer = await send(refused)
        assert answer.startswith(b"HTTP/1.1 400 "), (refused, answer[:200])
    assert public.app.connections == 0 and admin.app.connections == 1


class _ClosesKeptAliveConnections(Protocol):
    """
    Answers the first request on a connection, then closes the connection
    when the next one arrives without answering it: an upstream whose idle
    timeout fired just as the gateway reused the connection.
    """

    def connectionMade(self) -> None:
        self.buffer = b""
        self.answered = 0

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            if self.answered:
                self.transport.loseConnection()
                return
            self.answered += 1
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest_twisted.ensureDeferred
async def test_get_on_a_connection_the_upstream_closed_is_retried(start_gateway, http):
    factory = Factory.forProtocol(_ClosesKeptAliveConnections)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        gw = start_gateway(gateway_yaml(f"http://127.0.0.1:{port.getHost().port}"))
        for _ in range(3):
            response = await http.get(gw.url + "/x")
            assert (response.code, await response.content()) == (200, b"ok")
        # A POST is not retried: it may have been acted on.
        response = await http.post(gw.url + "/x", data=b"once")
        await response.content()
        assert response.code == 502
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_upstream_body_that_stalls_is_cut_after_the_route_timeout(upstream, start_gateway, http):
    """
    An upstream that sends headers and part of a body, then nothing, does
    not hold the client forever: after the route's timeout with nothing new
    the client's response is cut short (it can tell: the length was known).
    """
    routes = """
  - {name: all, match: {path_prefix: /}, upstream: backend, timeout: 300ms}
"""
    gw = start_gateway(gateway_yaml(upstream.url, routes=routes))
    started = time.monotonic()
    response = await http.get(gw.url + "/stream?size=1000000&hold=1")
    assert response.code == 200
    with pytest.raises(Exception) as e:
        await response.content()
    elapsed = time.monotonic() - started
    assert "ResponseFailed" in type(e.value).__name__ or "PotentialDataLoss" in repr(e.value), e.value
    assert 0.25 < elapsed < 5.0, elapsed
    assert not upstream.app.stream_finished


@pytest_twisted.ensureDeferred
async def test_least_requests_counts_a_response_until_its_body_is_done(start_upstream, start_gateway, http):
    """
    A target still streaming a body is busy: with least_requests the next
    requests go to the idle target, until the stream ends.
    """
    a, b = start_upstream("a"), start_upstream("b")
    text = gateway_yaml([a.url, b.url]).replace(
        f'targets: {json.dumps([a.url, b.url])}', f'targets: {json.dumps([a.url, b.url])}\n    lb: least_requests'
    )
    gw = start_gateway(text)
    streaming = await http.get(gw.url + "/stream?size=1000000&hold=1")
    assert streaming.code == 200
    busy, idle = (a, b) if a.app.release is not None else (b, a)
    for _ in range(4):
        response = await http.get(gw.url + "/echo")
        await response.content()
    assert idle.app.connections == 1 and busy.app.connections == 1  # no new one to the busy target
    busy.app.release()
    await streaming.content()


@pytest_twisted.ensureDeferred
async def test_max_connections_per_target_caps_requests_in_flight(start_upstream, start_gateway, http):
    """
    A target with max_connections_per_target requests in flight gets no
    more: they go to another target, and with every target full the
    gateway answers 503 at once instead of piling up connections.
    """
    a, b = start_upstream("a"), start_upstream("b")
    text = gateway_yaml([a.url, b.url]).replace(
        f"targets: {json.dumps([a.url, b.url])}",
        f"targets: {json.dumps([a.url, b.url])}\n    max_connections_per_target: 1",
    )
    gw = start_gateway(text)
    first = http.get(gw.url + "/slow?delay=0.5")
    second = http.get(gw.url + "/slow?delay=0.5")
    await task.deferLater(reactor, 0.2, lambda: None)
    assert (a.app.connections, b.app.connections) == (1, 1)  # one each
    response = await http.get(gw.url + "/echo")
    assert response.code == 503
    assert response.headers.getRawHeaders("retry-after") == ["1"]
    assert await response.content() == b"upstream busy\n"
    for pending in (first, second):
        response = await pending
        assert (response.code, await response.content()) == (200, b"slow")
    response = await http.get(gw.url + "/echo")  # free again
    assert response.code == 200
    await response.content()


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("/", "/"),
        ("/a/", "/a/"),
        ("/a/.", "/a/"),
        ("/a/b/..", "/a/"),
        ("/a/..", "/"),
        ("//", "/"),
        ("/a//b", "/a/b"),
        ("/%7euser/%41%2a", "/~user/A%2A"),
        ("/caf%c3%a9", "/caf%C3%A9"),
    ],
)
def test_normalize_path(raw: str, normal: str) -> None:
    from wasmgate.routing import normalize_path

    assert normalize_path(raw) == normal


def _timed_exchange(port: int, request: bytes) -> tuple[bytes, float]:
    """L{_raw_exchange} that also says how long the answer took."""
    started = time.monotonic()
    answer = _raw_exchange(port, request)
    return answer, time.monotonic() - started


def _split(answer: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Status line, headers (last value wins, lower-case names) and body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def _assert_plain_502(answer: bytes, waited: float) -> None:
    status, headers, body = _split(answer)
    assert status.startswith(b"HTTP/1.1 502 "), answer[:200]
    assert headers[b"content-type"].startswith(b"text/plain"), headers
    assert b"Traceback" not in body and b"Error" not in body, body
    assert 0 < len(body) < 200, body
    assert waited < 3, waited


@pytest_twisted.ensureDeferred
async def test_upstream_that_resets_the_connection_is_502(upstream, start_gateway, http):
    """
    An upstream that resets (RST) the connection instead of answering gives
    the client a prompt 502 with a short plain body, for a GET and a POST.
    """
    gw = start_gateway(gateway_yaml(upstream.url))
    for request in (
        b"GET /reset HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /reset HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody",
    ):
        answer, waited = await threads.deferToThread(_timed_exchange, _port(gw.url), request)
        _assert_plain_502(answer, waited)
    assert upstream.app.connections >= 2  # the requests did reach it
    # The gateway is none the worse for it.
    response = await http.get(gw.url + "/echo")
    assert response.code == 200
    await response.content()


class _ResetsMidHeaders(Protocol):
    """Starts an answer, then resets the connection before the headers end."""

    def connectionMade(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/ht")
            self.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_upstream_reset_in_the_middle_of_its_headers_is_502(start_gateway):
    port = reactor.listenTCP(0, Factory.forProtocol(_ResetsMidHeaders), interface="127.0.0.1")
    try:
        gw = start_gateway(gateway_yaml(f"http://127.0.0.1:{port.getHost().port}"))
        answer, waited = await threads.deferToThread(
            _timed_exchange,
            _port(gw.url),
            b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        _assert_plain_502(answer, waited)
    finally:
        await port.stopListening()


def _with_retry_methods(text: str, methods: str) -> str:
    return text.replace("    targets:", f"    retry_methods: {methods}\n    targets:", 1)


@pytest_twisted.ensureDeferred
async def test_post_in_retry_methods_is_retried_on_another_target(start_upstream, start_gateway, http):
    """
    With POST in the upstream's retry_methods, a POST whose first target
    refuses the connection goes to the next target once, its body intact;
    a method left out (PUT) is still not retried.
    """
    a = start_upstream("a")
    gw = start_gateway(_with_retry_methods(gateway_yaml([_dead_url(), a.url]), "[GET, POST]"))
    body = b"form=1&bytes=\x00\xff\r\n" + b"z" * 100_000
    for _ in range(4):  # round robin: the dead target comes first at least once
        response = await http.post(gw.url + "/echo", data=body)
        assert response.code == 200
        echo = await _json(response)
        assert echo["method"] == "POST"
        assert echo["body"].encode("latin-1") == body
    assert a.app.connections >= 1
    # A fresh gateway, the dead target first again: PUT is not retried.
    gw = start_gateway(
        _with_retry_methods(gateway_yaml([_dead_url(), a.url]), "[GET, POST]"), name="put.yaml"
    )
    response = await http.put(gw.url + "/echo", data=b"once")
    await response.content()
    assert response.code == 502


@pytest_twisted.ensureDeferred
async def test_form_post_passes_byte_for_byte_unparsed(start_gateway, http):
    """
    Form bodies are the upstream's business: the gateway passes them on as
    they came and never parses them (a malformed multipart body is not a 400
    from the gateway).
    """
    # An upstream that does not parse forms either (twisted.web's default
    # would answer the malformed multipart body with a 400 itself).
    site = server.Site(UpstreamApp(reactor), parsePOSTFormSubmission=False)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        await _form_posts(start_gateway, http, f"http://127.0.0.1:{port.getHost().port}")
    finally:
        await port.stopListening()


async def _form_posts(start_gateway, http, upstream_url: str) -> None:
    gw = start_gateway(gateway_yaml(upstream_url))
    parsed = []
    gw.service.observers.append(lambda record, duration: parsed.append(record.status))
    form = b"a=1&b=2"
    many = b"&".join(b"f%d=%%2B%d+x%%26" % (i, i) for i in range(20_000)) + b"&a=1&a=2&=&&b"
    for body in (form, many):
        response = await http.post(
            gw.url + "/echo",
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.code == 200
        echo = await _json(response)
        assert echo["body"].encode("latin-1") == body
        assert echo["headers"]["content-type"] == ["application/x-www-form-urlencoded"]
        assert echo["headers"]["content-length"] == [str(len(body))]
    broken = b"--nope\r\nnot really multipart"
    response = await http.post(
        gw.url + "/echo",
        data=broken,
        headers={"Content-Type": "multipart/form-data; boundary=elsewhere"},
    )
    assert response.code == 200
    assert (await _json(response))["body"].encode("latin-1") == broken
    assert parsed == [200, 200, 200]


@pytest_twisted.ensureDeferred
async def test_a_burst_of_requests_keeps_its_upstream_connections(upstream, start_gateway):
    """
    100 requests at once need 100 upstream connections; the next 100 reuse
    them instead of closing all but a few and connecting again (connection
    churn cost a third of the throughput at 500 connections).
    """
    gw = start_gateway(gateway_yaml(upstream.url))
    port = _port(gw.url)

    def burst() -> list[bytes]:
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(100)]
        try:
            for s in socks:
                s.sendall(b"GET /slow?delay=0.3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return [read_until_closed(s)[:12] for s in socks]
        finally:
            for s in socks:
                s.close()

    for _ in range(2):
        assert set(await threads.deferToThread(burst)) == {b"HTTP/1.1 200"}
    assert upstream.app.connections == 100


@pytest_twisted.ensureDeferred
async def test_both_sides_send_small_writes_at_once(upstream, start_gateway):
    """
    TCP_NODELAY on client and upstream connections, as nginx sets it: else
    a response written after a small unacknowledged segment (a TLS 1.3
    session ticket, a streamed response's head) waits ~40 ms for the
    peer's delayed ACK (sequential TLS connections: 22/s instead of 500).
    """
    gw = start_gateway(gateway_yaml(upstream.url))
    with socket.create_connection(("127.0.0.1", _port(gw.url)), timeout=5) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await threads.deferToThread(sock.recv, 12) == b"HTTP/1.1 200"
        clients = list(gw.service.http.connections)
        for _ in range(100):  # (back in the pool once its response has ended)
            upstreams = [c for conns in gw.service.generation.pool._idle.values() for c in conns]
            if upstreams:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        assert len(clients) == 1 and len(upstreams) == 1
        for protocol in clients + upstreams:
            handle = protocol.transport.getHandle()
            assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), protocol
