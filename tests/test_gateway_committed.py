"""
An http-wasm guest that sets the status and writes a body in
C{handle_request}, then continues (next=1), has committed the response, as
on the reference host: the client gets that status and body followed by
the upstream's body, with the gateway's response headers and not the
upstream's; over HTTP/1.1 and HTTP/2, with and without response filters.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
import wasmtime
from twisted.internet import threads

from tests import httpwasm_guests as hw
from tests import raw_http
from tests import wasm_guests as guests
from tests.h2_client import H2Client

UPSTREAM = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nContent-Type: application/json\r\nX-Up: 1\r\n\r\nupstream"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n4\r\nup-1\r\n4\r\nup-2\r\n0\r\n\r\n"
NO_CONTENT = b"HTTP/1.1 204 No Content\r\nX-Up: 1\r\n\r\n"


def commit(status: int, body: str) -> str:
    """A guest that commits C{status} and C{body} (and a header x-early) in handle_request, then goes on."""
    s = hw.Strings()
    return hw.module(
        s,
        f"""
  (func (export "handle_request") (result i64)
    (call $set_status_code (i32.const {status}))
    (call $add_header_value (i32.const 1) {s("x-early")} {s("e")})
    (call $write_body (i32.const 1) {s(body)})
    (i64.const 1))
""",
    )


def _wasm(tmp_path: Path, name: str, wat: str) -> str:
    path = tmp_path / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return str(path)


def _config(tmp_path: Path, upstream_url: str) -> str:
    return f"""
server:
  listen: "tcp:0:interface=127.0.0.1"
  h2c: true
admin: {{listen: "tcp:0:interface=127.0.0.1"}}
plugins:
  - {{name: commit, path: {_wasm(tmp_path, "commit", commit(203, "pre:"))}}}
  - {{name: commit201, path: {_wasm(tmp_path, "commit201", commit(201, "pre:"))}}}
  - {{name: commit204, path: {_wasm(tmp_path, "commit204", commit(204, "pre:"))}}}
  - {{name: commit103, path: {_wasm(tmp_path, "commit103", commit(103, "pre:"))}}}
  - {{name: interim, path: {_wasm(tmp_path, "interim", commit(103, ""))}}}
  - {{name: json_response, path: {_wasm(tmp_path, "json_response", guests.RESPONSE_HEADER)}}}
  - {{name: hw_body, path: {_wasm(tmp_path, "hw_body", hw.RESPONSE_BODY)}}}
routes:
  - {{name: commit, match: {{path_prefix: /commit/}}, filters: [commit], upstream: backend}}
  - {{name: headers, match: {{path_prefix: /headers/}}, filters: [json_response, commit], upstream: backend}}
  - {{name: body, match: {{path_prefix: /body/}}, filters: [hw_body, commit201], upstream: backend}}
  - {{name: empty, match: {{path_prefix: /empty/}}, filters: [commit204], upstream: backend}}
  - {{name: early, match: {{path_prefix: /early/}}, filters: [commit103], upstream: backend}}
  - {{name: interim, match: {{path_prefix: /interim/}}, filters: [interim], upstream: backend}}
  - {{name: twice, match: {{path_prefix: /twice/}}, filters: [commit, commit201], upstream: backend}}
upstreams:
  backend: {{targets: ["{upstream_url}"]}}
"""


def _port(gw: Any) -> int:
    return int(gw.url.rsplit(":", 1)[1])


def _get(port: int, path: str, method: str = "GET") -> tuple[int, raw_http.Headers, bytes]:
    raw = raw_http.exchange(port, b"%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (method.encode(), path.encode()))
    return raw_http.response(raw)


def _h2_get(port: int, path: str) -> dict[str, Any]:
    client = H2Client(port)
    try:
        return client.get(path)
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_committed_status_and_body_then_the_upstream_body(tmp_path, recording, start_gateway):
    recorder, url = recording(UPSTREAM)
    gw = start_gateway(_config(tmp_path, url))
    status, headers, body = await threads.deferToThread(_get, _port(gw), "/commit/x")
    assert status == 203
    assert body == b"pre:upstream"
    assert raw_http.values(headers, b"content-length") == [b"12"]  # committed + upstream's
    assert raw_http.values(headers, b"x-early") == [b"e"]
    assert len(raw_http.values(headers, b"x-request-id")) == 1
    # The upstream's status and headers are dropped, as on the reference host.
    assert raw_http.values(headers, b"x-up") == []
    assert raw_http.values(headers, b"content-type") == []
    assert recorder.requests == 1  # it is the next handler: it got the request


@pytest_twisted.ensureDeferred
async def test_committed_response_with_a_chunked_upstream(tmp_path, recording, start_gateway):
    recorder, url = recording(CHUNKED)
    gw = start_gateway(_config(tmp_path, url))
    raw = await threads.deferToThread(
        raw_http.exchange, _port(gw), b"GET /commit/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    first, headers, _ = raw_http.split(raw)
    assert first.startswith(b"HTTP/1.1 203 ")
    assert raw_http.values(headers, b"transfer-encoding") == [b"chunked"]  # length unknown
    assert raw_http.values(headers, b"content-length") == []
    status, _, body = raw_http.response(raw)
    assert body == b"pre:up-1up-2"
    # HTTP/1.0: no chunks, the body ends with the connection.
    raw = await threads.deferToThread(raw_http.exchange, _port(gw), b"GET /commit/x HTTP/1.0\r\nHost: x\r\n\r\n")
    first, headers, rest = raw_http.split(raw)
    assert first.startswith(b"HTTP/1.1 203 ") and rest == b"pre:up-1up-2"
    assert raw_http.values(headers, b"transfer-encoding") == raw_http.values(headers, b"content-length") == []


@pytest_twisted.ensureDeferred
async def test_committed_response_over_http2(tmp_path, recording, start_gateway):
    recorder, url = recording(UPSTREAM)
    gw = start_gateway(_config(tmp_path, url))
    response = await threads.deferToThread(_h2_get, _port(gw), "/commit/x")
    assert response["status"] == 203 and response["ended"]
    assert bytes(response["body"]) == b"pre:upstream"
    fields = dict(response["headers"])
    assert fields[b"content-length"] == b"12"
    assert fields[b"x-early"] == b"e"
    assert b"x-up" not in fields


@pytest_twisted.ensureDeferred
async def test_committed_response_over_http2_with_a_chunked_upstream(tmp_path, recording, start_gateway):
    recorder, url = recording(CHUNKED)
    gw = start_gateway(_config(tmp_path, url))
    response = await threads.deferToThread(_h2_get, _port(gw), "/commit/x")
    assert response["status"] == 203 and response["ended"]
    assert bytes(response["body"]) == b"pre:up-1up-2"
    assert b"content-length" not in dict(response["headers"])


@pytest_twisted.ensureDeferred
async def test_head_request_and_bodyless_statuses(tmp_path, recording, start_gateway):
    recorder, url = recording(UPSTREAM)
    gw = start_gateway(_config(tmp_path, url))
    # HEAD: the length a GET would have, no body.
    raw = await threads.deferToThread(
        raw_http.exchange, _port(gw), b"HEAD /commit/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    first, headers, rest = raw_http.split(raw)
    assert first.startswith(b"HTTP/1.1 203 ") and rest == b""
    assert raw_http.values(headers, b"content-length") == [b"12"]
    # A committed 204 has no body: neither its own nor the upstream's.
    raw = await threads.deferToThread(
        raw_http.exchange, _port(gw), b"GET /empty/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    first, headers, rest = raw_http.split(raw)
    assert first.startswith(b"HTTP/1.1 204 ") and rest == b""
    assert raw_http.values(headers, b"x-early") == [b"e"]
    # The upstream's 204 has no body: the committed one is all.
    recorder, url = recording(NO_CONTENT)
    gw = start_gateway(_config(tmp_path, url), name="no-content.yaml")
    status, headers, body = await threads.deferToThread(_get, _port(gw), "/commit/x")
    assert (status, body) == (203, b"pre:")
    assert raw_http.values(headers, b"content-length") == [b"4"]


@pytest_twisted.ensureDeferred
async def test_response_filters_see_the_committed_response(tmp_path, recording, start_gateway):
    recorder, url = recording(UPSTREAM)
    gw = start_gateway(_config(tmp_path, url))
    # A response filter that reads no body: the head is the committed one.
    status, headers, body = await threads.deferToThread(_get, _port(gw), "/headers/x")
    assert (status, body) == (203, b"pre:upstream")
    assert raw_http.values(headers, b"x-response-filtered") == [b"yes"]
    assert raw_http.values(headers, b"content-length") == [b"12"]
    assert raw_http.values(headers, b"x-up") == []
    # One that reads the body (http-wasm, buffer_response): the committed
    # status, then the committed body and the upstream's; it adds one to
    # the status and wraps the body.
    status, headers, body = await threads.deferToThread(_get, _port(gw), "/body/x")
    assert status == 202
    assert hw.hex_field(raw_http.values(headers, b"x-upstream-status")[0].decode()) == 201
    assert body == b"<pre:upstream>"
    assert raw_http.values(headers, b"x-early") == [b"e"]
    # With a chunked upstream too.
    recorder, url = recording(CHUNKED)
    gw = start_gateway(_config(tmp_path, url), name="chunked.yaml")
    status, headers, body = await threads.deferToThread(_get, _port(gw), "/headers/x")
    assert (status, body) == (203, b"pre:up-1up-2")
    status, headers, body = await threads.deferToThread(_get, _port(gw), "/body/x")
    assert (status, body) == (202, b"<pre:up-1up-2>")
    assert raw_http.values(headers, b"content-length") == [b"14"]


@pytest_twisted.ensureDeferred
async def test_two_guests_commit(tmp_path, recording, start_gateway):
    """The second writes to a response already sent: its status is lost, its body follows."""
    recorder, url = recording(UPSTREAM)
    gw = start_gateway(_config(tmp_path, url))
    status, headers, body = await threads.deferToThread(_get, _port(gw), "/twice/x")
    assert (status, body) == (203, b"pre:pre:upstream")
    assert raw_http.values(headers, b"content-length") == [b"16"]


@pytest_twisted.ensureDeferred
async def test_an_informational_status_commits_nothing_by_itself(tmp_path, recording, start_gateway):
    """As with Go's net/http on the reference host: a 1xx is interim; a body written makes it 200."""
    recorder, url = recording(UPSTREAM)
    gw = start_gateway(_config(tmp_path, url))
    status, headers, body = await threads.deferToThread(_get, _port(gw), "/early/x")
    assert (status, body) == (200, b"pre:upstream")
    assert raw_http.values(headers, b"x-up") == []
    status, headers, body = await threads.deferToThread(_get, _port(gw), "/interim/x")
    assert (status, body) == (200, b"upstream")  # the upstream's response, headers and all
    assert raw_http.values(headers, b"x-up") == [b"1"]
    assert raw_http.values(headers, b"x-early") == [b"e"]
