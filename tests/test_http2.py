"""
HTTP/2 from clients, through a real gateway: real clients (httpx with h2,
curl --http2, and a frame-level h2 client for windows, resets and floods),
the same routing, filters and limits as HTTP/1.1, upstreams in HTTP/1.1.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_twisted
import wasmtime
from twisted.internet import reactor, task, threads

from tests import wasm_guests as g
from tests.certs import issue, make_ca, write_pair
from tests.conftest import gateway_yaml
from tests.h2_client import H2Client


def _tls(tmp_path: Path, extra_server: str = "") -> str:
    ca = make_ca()
    write_pair(issue(ca, ["localhost"]), tmp_path / "gw.pem", tmp_path / "gw.key")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    return f"""
  tls:
    certificates:
      - {{hosts: [localhost], cert: gw.pem, key: gw.key}}
{extra_server}"""


def _context(tmp_path: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))


def _port(gw: Any) -> int:
    return int(gw.url.rsplit(":", 1)[1])


def _with_limited_route(tmp_path: Path) -> tuple[str, str]:
    limited = tmp_path / "limited.wasm"
    limited.write_bytes(wasmtime.wat2wasm(g.RATE_LIMITED_429))
    plugins = f"plugins:\n  - {{name: limited, path: {limited}}}\n"
    routes = (
        "  - {name: all, match: {path_prefix: /}, upstream: backend}\n"
        "  - {name: limited, match: {path_prefix: /limited}, filters: [limited], upstream: backend}\n"
    )
    return plugins, routes


def _many_concurrent(port: int, cafile: str, n: int) -> list[tuple[str, int, dict]]:
    async def main() -> list[tuple[str, int, dict]]:
        async with httpx.AsyncClient(http2=True, verify=ssl.create_default_context(cafile=cafile)) as client:
            responses = await asyncio.gather(
                *(client.get(f"https://localhost:{port}/echo?i={i}") for i in range(n))
            )
            return [(r.http_version, r.status_code, r.json()) for r in responses]

    return asyncio.run(main())


@pytest_twisted.ensureDeferred
async def test_many_concurrent_streams_on_one_connection(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(gateway_yaml(upstream.url, server=_tls(tmp_path)))
    results = await threads.deferToThread(_many_concurrent, _port(gw), str(tmp_path / "ca.pem"), 50)
    assert {(version, status) for version, status, _ in results} == {("HTTP/2", 200)}
    assert sorted(echo["uri"] for _, _, echo in results) == sorted(f"/echo?i={i}" for i in range(50))
    echo = results[0][2]
    assert echo["headers"]["host"] == [f"localhost:{_port(gw)}"]  # :authority became Host
    assert echo["headers"]["x-forwarded-proto"] == ["https"]
    response = await http.get(gw.admin_url + "/metrics")
    text = (await response.content()).decode()
    assert 'protocol="HTTP/2"' in text


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl on this machine")
@pytest_twisted.ensureDeferred
async def test_curl_http2(tmp_path, upstream, start_gateway):
    gw = start_gateway(gateway_yaml(upstream.url, server=_tls(tmp_path)))
    done = await threads.deferToThread(
        subprocess.run,
        ["curl", "--http2", "-sS", "-i", "--cacert", str(tmp_path / "ca.pem"), f"https://localhost:{_port(gw)}/echo"],
        capture_output=True, timeout=20,
    )
    if b"HTTP/2" not in done.stdout and b"does not support HTTP2" in done.stderr:
        pytest.skip("this curl has no HTTP/2")
    assert done.stdout.startswith(b"HTTP/2 200"), done.stdout[:300] + done.stderr


@pytest_twisted.ensureDeferred
async def test_a_429_on_one_stream_does_not_touch_the_next(tmp_path, upstream, start_gateway):
    plugins, routes = _with_limited_route(tmp_path)
    gw = start_gateway(gateway_yaml(upstream.url, routes=routes, extra=plugins, server=_tls(tmp_path)))

    def talk() -> tuple[Any, Any]:
        client = H2Client(_port(gw), context=_context(tmp_path))
        try:
            for _ in range(3):
                client.get("/echo")  # streams 1, 3, 5
            limited = client.request("/limited/x")  # stream 7
            fine = client.request("/echo")  # stream 9
            client.until(lambda: client.responses[limited]["ended"] and client.responses[fine]["ended"])
            return (limited, client.responses[limited]), (fine, client.responses[fine])
        finally:
            client.close()

    (sid7, limited), (sid9, fine) = await threads.deferToThread(talk)
    assert (sid7, limited["status"], limited["body"]) == (7, 429, b"slow down\n")
    assert (sid9, fine["status"]) == (9, 200)


@pytest_twisted.ensureDeferred
async def test_a_slow_reader_holds_the_upstream_back(tmp_path, upstream, start_gateway):
    """The client grants no window: the gateway pauses the upstream instead of buffering."""
    gw = start_gateway(gateway_yaml(upstream.url, server=_tls(tmp_path, "  timeouts: {write: 20s}")))
    size = 24 * 1024 * 1024  # (more than socket buffers hold between upstream and gateway)
    client = await threads.deferToThread(H2Client, _port(gw), context=_context(tmp_path))
    try:
        stream_id = client.request(f"/stream?size={size}")
        for _ in range(20):  # read without acknowledging: the windows close
            await threads.deferToThread(client.read, ack=False)
            if len(client.responses[stream_id]["body"]) >= 65535:
                break
        await task.deferLater(reactor, 1.0, lambda: None)
        assert not upstream.app.stream_finished
        got = len(client.responses[stream_id]["body"])
        assert got <= 65535
        # Now read it all, with wide windows.
        client.conn.acknowledge_received_data(got, stream_id)
        client.conn.increment_flow_control_window(size)
        client.conn.increment_flow_control_window(size, stream_id)
        client.flush()
        await threads.deferToThread(client.until, lambda: client.responses[stream_id]["ended"], limit=100_000)
        assert len(client.responses[stream_id]["body"]) == size
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_rst_stream_cancels_the_upstream_request(tmp_path, upstream, start_gateway):
    gw = start_gateway(gateway_yaml(upstream.url, server=_tls(tmp_path)))
    client = await threads.deferToThread(H2Client, _port(gw), context=_context(tmp_path))
    try:
        stream_id = client.request("/slow?delay=5")
        await task.deferLater(reactor, 0.3, lambda: None)
        await threads.deferToThread(client.reset, stream_id)
        for _ in range(50):
            if upstream.app.cancelled:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        assert upstream.app.cancelled == 1
        # The connection goes on.
        response = await threads.deferToThread(client.get, "/echo")
        assert response["status"] == 200
    finally:
        client.close()


def _rapid_reset(port: int, context: ssl.SSLContext, n: int) -> tuple[Any, int]:
    client = H2Client(port, context=context)
    sent = 0
    try:
        for _ in range(n):
            stream_id = client.request("/slow?delay=2")
            client.reset(stream_id)
            sent += 1
    except OSError:
        pass
    client.until(lambda: client.terminated is not None, limit=1000)
    client.close()
    return client.terminated, sent


@pytest_twisted.ensureDeferred
async def test_rapid_reset_is_disconnected_without_hurting_others(tmp_path, upstream, start_gateway):
    gw = start_gateway(gateway_yaml(upstream.url, server=_tls(tmp_path)))
    context = _context(tmp_path)
    attack = threads.deferToThread(_rapid_reset, _port(gw), context, 2000)
    other = await threads.deferToThread(_many_concurrent, _port(gw), str(tmp_path / "ca.pem"), 5)
    assert {status for _, status, _ in other} == {200}
    terminated, sent = await attack
    assert terminated is not None and terminated.error_code == 0xB  # ENHANCE_YOUR_CALM
    assert sent < 2000 or terminated is not None


def _ping_flood(port: int, context: ssl.SSLContext) -> Any:
    client = H2Client(port, context=context)
    try:
        for i in range(1000):
            client.conn.ping(b"%08d" % i)
            client.flush()
    except OSError:
        pass
    client.until(lambda: client.terminated is not None, limit=1000)
    client.close()
    return client.terminated


@pytest_twisted.ensureDeferred
async def test_ping_flood_is_disconnected(tmp_path, upstream, start_gateway):
    gw = start_gateway(gateway_yaml(upstream.url, server=_tls(tmp_path)))
    terminated = await threads.deferToThread(_ping_flood, _port(gw), _context(tmp_path))
    assert terminated is not None and terminated.error_code == 0xB


@pytest_twisted.ensureDeferred
async def test_limits_per_stream(tmp_path, upstream, start_gateway):
    gw = start_gateway(gateway_yaml(upstream.url, server=_tls(tmp_path, "  max_body_bytes: 1000")))

    def talk() -> tuple[Any, Any, Any]:
        client = H2Client(_port(gw), context=_context(tmp_path))
        try:
            declared = client.get("/echo", method="POST", headers=[("content-length", "5000")], body=b"x" * 5000)
            streamed = client.get("/echo", method="POST", body=b"y" * 3000)
            fine = client.get("/echo", method="POST", body=b"z" * 1000)
            return declared, streamed, fine
        finally:
            client.close()

    declared, streamed, fine = await threads.deferToThread(talk)
    assert declared["status"] == 413
    assert streamed["status"] == 413 or streamed["reset"] is not None
    assert fine["status"] == 200 and json.loads(fine["body"])["body"] == "z" * 1000


def _h2c(port: int) -> dict[str, Any]:
    client = H2Client(port)
    try:
        return client.get("/echo")
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_h2c_prior_knowledge_only_when_asked(upstream, start_gateway):
    gw = start_gateway(gateway_yaml(upstream.url, server="  h2c: true"))
    response = await threads.deferToThread(_h2c, _port(gw))
    assert response["status"] == 200
    assert json.loads(response["body"])["headers"]["x-forwarded-proto"] == ["http"]
    plain = start_gateway(gateway_yaml(upstream.url), name="plain.yaml")
    answer = await threads.deferToThread(_raw_preface, _port(plain))
    assert answer.startswith(b"HTTP/1.1 400 ")


def _raw_preface(port: int) -> bytes:
    import socket

    from tests.conftest import read_until_closed

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        return read_until_closed(sock, ignore_errors=True)


def _alpn(port: int, cafile: str) -> str:
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["h2", "http/1.1"])
    import socket

    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost") as sock:
        return sock.selected_alpn_protocol()


@pytest_twisted.ensureDeferred
async def test_http2_can_be_turned_off(tmp_path, upstream, start_gateway):
    gw = start_gateway(gateway_yaml(upstream.url, server=_tls(tmp_path, "  http2: false")))
    assert await threads.deferToThread(_alpn, _port(gw), str(tmp_path / "ca.pem")) == "http/1.1"


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl on this machine")
@pytest_twisted.ensureDeferred
async def test_goaway_on_drain_lets_open_streams_finish(tmp_path, upstream, start_gateway):
    """
    On stop, an HTTP/2 client gets GOAWAY and its open stream still
    completes (curl: h2's own client cannot go on after a GOAWAY).
    """
    gw = start_gateway(gateway_yaml(upstream.url, server=_tls(tmp_path)))
    curl = threads.deferToThread(
        subprocess.run,
        ["curl", "--http2", "-sS", "-i", "--cacert", str(tmp_path / "ca.pem"),
         f"https://localhost:{_port(gw)}/slow?delay=0.6"],
        capture_output=True, timeout=20,
    )
    await task.deferLater(reactor, 0.3, lambda: None)
    started = time.monotonic()
    await gw.service.stopService()
    done = await curl
    if b"does not support HTTP2" in done.stderr:
        pytest.skip("this curl has no HTTP/2")
    assert done.stdout.startswith(b"HTTP/2 200") and done.stdout.endswith(b"slow"), done.stdout + done.stderr
    assert time.monotonic() - started < 3


def _mismatched_host(port: int) -> tuple[Any, dict[str, Any]]:
    client = H2Client(port)
    client.conn.config.validate_outbound_headers = False  # (a hostile client does not check)
    try:
        sid = client.request("/echo", authority="public.example.com", headers=[("host", "secure.example.com")])
        client.until(lambda: client.responses[sid]["ended"] or client.responses[sid]["reset"] is not None)
        return client.terminated, client.responses[sid]
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_host_that_differs_from_authority_is_malformed(upstream, start_gateway):
    """
    RFC 9113 8.3.1: a Host naming another entity than :authority makes the
    request malformed; it is never routed by one and forwarded with the
    other. (python-hyper's h2 refuses the whole connection.)
    """
    gw = start_gateway(gateway_yaml(upstream.url, server="  h2c: true"))
    terminated, response = await threads.deferToThread(_mismatched_host, _port(gw))
    assert response["status"] is None
    assert terminated is not None and terminated.error_code == 1  # PROTOCOL_ERROR
    assert upstream.app.requests == 0


def _grpc_call(port: int, content_type: str) -> dict[str, Any]:
    client = H2Client(port)
    try:
        return client.get(
            "/pkg.Service/Method", method="POST", body=b"\0\0\0\0\0",
            headers=[("content-type", content_type), ("te", "trailers")],
        )
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_grpc_is_refused_in_grpcs_own_terms(upstream, start_gateway):
    """
    gRPC needs HTTP/2 and trailers end to end, which the gateway does not
    proxy: a gRPC client gets UNIMPLEMENTED with a reason (a Trailers-Only
    response), the upstream nothing. gRPC-Web is plain HTTP and passes.
    """
    gw = start_gateway(gateway_yaml(upstream.url, server="  h2c: true"))
    response = await threads.deferToThread(_grpc_call, _port(gw), "application/grpc+proto")
    headers = dict(response["headers"])
    assert response["status"] == 200 and response["ended"] and response["body"] == b""
    assert headers[b"content-type"] == b"application/grpc" and headers[b"grpc-status"] == b"12"
    assert b"gRPC is not proxied" in headers[b"grpc-message"]
    assert headers[b"x-request-id"]
    assert upstream.app.requests == 0
    web = await threads.deferToThread(_grpc_call, _port(gw), "application/grpc-web+proto")
    assert web["status"] == 200 and b"grpc-status" not in dict(web["headers"])
    assert upstream.app.requests == 1


def _oversized(port: int) -> list[Any]:
    client = H2Client(port)
    try:
        long_path = client.get("/" + "a" * 9000)
        many = client.get("/echo", headers=[(f"x-h{i}", "v") for i in range(101)])
        fine = client.get("/echo", headers=[(f"x-h{i}", "v") for i in range(90)])
        return [long_path["status"], many["status"], fine["status"]]
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_request_line_and_header_count_limits_as_for_http11(upstream, start_gateway):
    """A :path over 8 KiB is a 414, over 100 header fields a 431, as over HTTP/1.1; the connection goes on."""
    gw = start_gateway(gateway_yaml(upstream.url, server="  h2c: true"))
    assert await threads.deferToThread(_oversized, _port(gw)) == [414, 431, 200]
    assert upstream.app.requests == 1
