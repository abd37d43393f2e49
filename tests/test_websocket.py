"""
WebSocket through the gateway, with a real client and a real server (the
C{websockets} package): the handshake goes through the route's filters,
then the two connections are spliced both ways until either side closes or
the tunnel idles out; over TLS too; a reload leaves open tunnels alone.
"""
from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
import wasmtime
from twisted.internet import reactor, task, threads
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

from tests import wasm_guests as g
from tests.certs import issue, make_ca, write_pair
from tests.conftest import gateway_yaml, read_until_closed


class WebSocketUpstream:
    """An echo server; C{/close} closes after the first message; it notes what it saw."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.closed: list[Any] = []
        self.server = serve(self._handle, "127.0.0.1", 0)
        self.port = self.server.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handle(self, ws: ServerConnection) -> None:
        self.paths.append(ws.request.path)
        try:
            for message in ws:
                ws.send(message)
                if ws.request.path == "/close":
                    ws.close(code=4000, reason="server done")
        except ConnectionClosed:
            pass
        self.closed.append(ws.close_code)

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def ws_upstream() -> Iterator[WebSocketUpstream]:
    upstream = WebSocketUpstream()
    yield upstream
    upstream.stop()


def _ws_url(gw: Any, path: str = "/chat", scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{gw.url.rsplit(':', 1)[1]}{path}"


def _echo(url: str, messages: list[Any], **kw: Any) -> list[Any]:
    with connect(url, open_timeout=5, close_timeout=2, **kw) as ws:
        out = []
        for message in messages:
            ws.send(message)
            out.append(ws.recv(timeout=5))
        return out


def _routes(tmp_path: Path, extra_route: str = "") -> tuple[str, str]:
    deny = tmp_path / "deny.wasm"
    deny.write_bytes(wasmtime.wat2wasm(g.respond({"block": True, "status_code": 401, "body": g.b64(b"who are you?\n")})))
    plugins = f"plugins:\n  - {{name: deny, path: {deny}}}\n"
    routes = (
        "  - {name: ws, match: {path_prefix: /}, upstream: backend}\n"
        "  - {name: private, match: {path_prefix: /private}, filters: [deny], upstream: backend}\n"
        "  - {name: nows, match: {path_prefix: /nows}, upstream: backend, websocket: false}\n"
        + extra_route
    )
    return plugins, routes


@pytest_twisted.ensureDeferred
async def test_echo_through_the_gateway_and_close_from_the_client(tmp_path, ws_upstream, start_gateway, http):
    plugins, routes = _routes(tmp_path)
    gw = start_gateway(gateway_yaml(ws_upstream.url, routes=routes, extra=plugins) + "access_log: " + str(tmp_path / "a.jsonl") + "\n")
    noise = os.urandom(200_000)  # (incompressible: permessage-deflate is on)
    got = await threads.deferToThread(_echo, _ws_url(gw), ["hello", b"\x00\x01binary", noise])
    assert got == ["hello", b"\x00\x01binary", noise]
    for _ in range(50):
        if ws_upstream.closed:
            break
        await task.deferLater(reactor, 0.05, lambda: None)
    assert ws_upstream.paths == ["/chat"] and ws_upstream.closed == [1000]  # the client's close went through
    await task.deferLater(reactor, 0.1, lambda: None)
    gw.service.access_file.flush()
    (line,) = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert line["status"] == 101 and line["route"] == "ws"
    assert line["bytes_in"] > 200_000 and line["bytes"] > 200_000, line
    # The client's Close frame went through; the server then closes TCP first (RFC 6455 7.1.1).
    assert line["tunnel_closed"] == "upstream closed"
    response = await http.get(gw.admin_url + "/metrics")
    text = (await response.content()).decode()
    assert "wasmgate_tunnels_open 0.0" in text
    assert 'wasmgate_tunnel_bytes_total{direction="in"}' in text


@pytest_twisted.ensureDeferred
async def test_close_from_the_server(ws_upstream, start_gateway):
    gw = start_gateway(gateway_yaml(ws_upstream.url))

    def talk() -> Any:
        with connect(_ws_url(gw, "/close"), open_timeout=5) as ws:
            ws.send("one")
            assert ws.recv(timeout=5) == "one"
            with pytest.raises(ConnectionClosed) as e:
                ws.recv(timeout=5)
            return e.value.rcvd.code if e.value.rcvd else None

    assert await threads.deferToThread(talk) == 4000


@pytest_twisted.ensureDeferred
async def test_a_filter_refuses_the_handshake_and_a_route_can_forbid_websocket(tmp_path, ws_upstream, start_gateway):
    plugins, routes = _routes(tmp_path)
    gw = start_gateway(gateway_yaml(ws_upstream.url, routes=routes, extra=plugins))
    with pytest.raises(InvalidStatus) as e:
        await threads.deferToThread(_echo, _ws_url(gw, "/private/room"), ["hi"])
    assert e.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as e:
        await threads.deferToThread(_echo, _ws_url(gw, "/nows"), ["hi"])
    assert e.value.response.status_code == 403
    assert ws_upstream.paths == []  # neither reached the upstream


@pytest_twisted.ensureDeferred
async def test_an_idle_tunnel_is_closed(ws_upstream, start_gateway):
    gw = start_gateway(gateway_yaml(ws_upstream.url, server="  timeouts: {tunnel_idle: 400ms}"))

    def idle() -> float:
        with connect(_ws_url(gw), open_timeout=5) as ws:
            ws.send("ping")
            ws.recv(timeout=5)
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            return time.monotonic() - started

    took = await threads.deferToThread(idle)
    assert 0.3 < took < 2.0, took


@pytest_twisted.ensureDeferred
async def test_a_tunnel_survives_a_reload(ws_upstream, start_gateway):
    gw = start_gateway(gateway_yaml(ws_upstream.url))
    opened = threading.Event()
    go_on = threading.Event()

    def long_talk() -> list[str]:
        with connect(_ws_url(gw), open_timeout=5) as ws:
            ws.send("before")
            out = [ws.recv(timeout=5)]
            opened.set()
            go_on.wait(10)
            ws.send("after")
            out.append(ws.recv(timeout=5))
            return out

    talking = threads.deferToThread(long_talk)
    await threads.deferToThread(opened.wait, 10)
    number = await gw.service.reload()
    assert number == 2
    go_on.set()
    assert await talking == ["before", "after"]


def _raw_upgrade(port: int, upgrade: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: %s\r\n"
            b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nConnection: close\r\n\r\n" % (upgrade,)
        )
        return read_until_closed(sock, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_upgrade_to_h2c_is_served_as_http_11(upstream, start_gateway):
    gw = start_gateway(gateway_yaml(upstream.url))
    answer = await threads.deferToThread(_raw_upgrade, int(gw.url.rsplit(":", 1)[1]), b"h2c")
    assert answer.startswith(b"HTTP/1.1 200 ")
    sent = json.loads(answer.split(b"\r\n\r\n", 1)[1])["headers"]
    assert "upgrade" not in sent and "http2-settings" not in sent and "connection" not in sent


@pytest_twisted.ensureDeferred
async def test_wss_over_tls(tmp_path, ws_upstream, start_gateway):
    ca = make_ca()
    write_pair(issue(ca, ["ws.example.com"]), tmp_path / "ws.pem", tmp_path / "ws.key")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    gw = start_gateway(gateway_yaml(ws_upstream.url, server="""
  tls:
    certificates:
      - {hosts: [ws.example.com], cert: ws.pem, key: ws.key}
"""))
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    url = _ws_url(gw, scheme="wss")
    got = await threads.deferToThread(_echo, url, ["secure"], ssl=context, server_hostname="ws.example.com")
    assert got == ["secure"]
