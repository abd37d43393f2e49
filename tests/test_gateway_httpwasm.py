"""
http-wasm guests (as written for Traefik and friends) in a real gateway,
alone and in a chain with a JSON-ABI filter.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest_twisted
from twisted.internet import threads
import wasmtime

from tests import httpwasm_guests as hw
from tests.conftest import read_until_closed
from tests import wasm_guests as guests


def _wasm(tmp_path: Path, name: str, wat: str) -> str:
    path = tmp_path / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return str(path)


def _config(tmp_path: Path, upstream_url: str) -> str:
    return f"""
server:
  listen: "tcp:0:interface=127.0.0.1"
admin: {{listen: "tcp:0:interface=127.0.0.1"}}
plugins:
  - {{name: json_rewrite, path: {_wasm(tmp_path, "json", guests.HEADER_REWRITE)}}}
  - {{name: hw_rewrite, path: {_wasm(tmp_path, "hw", hw.REWRITE)}}}
  - {{name: hw_answer, path: {_wasm(tmp_path, "answer", hw.ANSWER)}}}
  - {{name: hw_body, path: {_wasm(tmp_path, "body", hw.RESPONSE_BODY)}}}
  - {{name: hw_late, path: {_wasm(tmp_path, "late", hw.PER_REQUEST)}}}
  - {{name: hw_late_body, path: {_wasm(tmp_path, "late", hw.PER_REQUEST)}, include_body: true}}
routes:
  - {{name: mixed, match: {{path_prefix: /mixed}}, filters: [json_rewrite, hw_rewrite], upstream: backend}}
  - {{name: answer, match: {{path_prefix: /answer}}, filters: [hw_answer], upstream: backend}}
  - {{name: body, match: {{path_prefix: /body}}, filters: [hw_body], upstream: backend}}
  - {{name: late, match: {{path_prefix: /late/}}, filters: [hw_late], upstream: backend}}
  - {{name: late_body, match: {{path_prefix: /late-body/}}, filters: [hw_late_body], upstream: backend}}
upstreams:
  backend: {{targets: ["{upstream_url}"]}}
"""


@pytest_twisted.ensureDeferred
async def test_mixed_chain_through_the_gateway(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(_config(tmp_path, upstream.url))
    response = await http.get(gw.url + "/mixed/x", headers={"X-Remove-Me": "1", "X-Replace": "old"})
    body = await response.content()
    assert response.code == 200
    echo = json.loads(body)
    # The JSON filter rewrote the path first; the http-wasm guest saw that
    # and then changed method, URI and headers.
    assert echo["headers"]["x-orig-uri"] == ["/rewritten"]
    assert echo["method"] == "PATCH"
    assert echo["uri"] == "/rewritten/p%20q?a=1&b=2"
    assert echo["headers"]["x-added"] == ["yes", "one", "two"]  # JSON filter first
    assert echo["headers"]["x-replace"] == ["new"]
    assert "x-remove-me" not in echo["headers"]
    assert echo["headers"]["x-proto"] == ["HTTP/1.1"]
    source_ip, source_port = echo["headers"]["x-source"][0].rsplit(":", 1)
    assert source_ip == "127.0.0.1" and int(source_port) > 0  # the client's own port
    # An HTTP/1.0 client is seen as one.
    answer = await threads.deferToThread(
        _http10_get, int(gw.url.rsplit(":", 1)[1]), "/mixed/x"
    )
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["headers"]["x-proto"] == ["HTTP/1.0"]
    # Response side: headers from both phases of the guest and the JSON filter.
    assert response.headers.getRawHeaders("x-early") == ["e1", "e2"]
    assert response.headers.getRawHeaders("x-late") == ["l1", "l2"]
    assert response.headers.getRawHeaders("x-from-filter") == ["1"]
    assert response.headers.getRawHeaders("server") is None


@pytest_twisted.ensureDeferred
async def test_guest_answers_itself(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(_config(tmp_path, upstream.url))
    response = await http.get(gw.url + "/answer")
    assert response.code == 418
    assert await response.content() == b"hello world"
    assert response.headers.getRawHeaders("x-a") == ["1", "2"]
    assert upstream.app.connections == 0


@pytest_twisted.ensureDeferred
async def test_guest_rewrites_the_buffered_response(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(_config(tmp_path, upstream.url))
    response = await http.get(gw.url + "/body/x")
    assert response.code == 201  # the guest added one to the upstream's 200
    body = await response.content()
    assert body.startswith(b"<") and body.endswith(b">")
    assert json.loads(body[1:-1])["uri"] == "/body/x"  # the upstream's body, wrapped
    assert response.length == len(body)  # Content-Length (Twisted keeps it out of .headers)
    # Many requests in a row reuse pinned instances without leaking them.
    for _ in range(50):
        response = await http.get(gw.url + "/body/x")
        await response.content()
    hw_body = gw.service.generation.filters["hw_body"]
    assert hw_body.pinned_count() == 0


@pytest_twisted.ensureDeferred
async def test_buffering_asked_for_in_handle_request(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(_config(tmp_path, upstream.url))
    # Nothing on the route buffers bodies: the guest is told so (it used to
    # be told yes, read the response body, trap: a 502) and leaves it alone.
    response = await http.get(gw.url + "/late/x", headers={"x-enable": "1"})
    body = await response.content()
    assert response.code == 200
    assert hw.hex_field(response.headers.getRawHeaders("x-features")[0]) == 0
    assert json.loads(body)["uri"] == "/late/x"
    # With include_body: true both buffering features are granted.
    response = await http.get(gw.url + "/late-body/x", headers={"x-enable": "1"})
    body = await response.content()
    assert response.code == 200
    assert hw.hex_field(response.headers.getRawHeaders("x-features")[0]) == 3
    assert body.startswith(b"<") and body.endswith(b">")
    assert json.loads(body[1:-1])["uri"] == "/late-body/x"


@pytest_twisted.ensureDeferred
async def test_request_body_read_without_buffer_request(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(_config(tmp_path, upstream.url))
    # Read without buffer_request: consumed, the upstream gets the rest.
    response = await http.post(gw.url + "/late-body/x", data=b"hello world", headers={"x-read": "1"})
    echo = json.loads(await response.content())
    assert response.code == 200
    assert response.headers.getRawHeaders("x-read-bytes") == ["hell"]
    assert echo["body"] == "o world"
    # With buffer_request the upstream gets the whole body.
    response = await http.post(
        gw.url + "/late-body/x", data=b"hello world", headers={"x-read": "1", "x-enable": "1"}
    )
    body = await response.content()
    assert json.loads(body[1:-1])["body"] == "hello world"


def _http10_get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.0\r\nHost: x\r\n\r\n")
        return read_until_closed(sock)
