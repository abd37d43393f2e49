"""
Content-Length through filters: guests see the client's (HTTP/1.1 and
HTTP/2), and nothing a filter says about a body's length reaches the wire:
the upstream gets exactly one Content-Length that matches the bytes it
got (or the client's chunked framing), the client likewise.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
import wasmtime
from twisted.internet import threads

from tests import httpwasm_guests as hw
from tests import raw_http
from tests import wasm_guests as guests
from tests.h2_client import H2Client

ROOT = Path(__file__).resolve().parent.parent
TWENTY = b"0123456789abcdefghij"

LYING = guests.respond({"headers": {"content-length": "5", "transfer-encoding": "chunked"}})
"""A JSON filter that says the body is 5 bytes, and chunked."""
LYING_BODY = guests.respond(
    {"headers": {"Content-Length": "5", "transfer-encoding": "chunked"}, "body": guests.b64(TWENTY)}
)
"""One that replaces the body with 20 bytes and says it is 5."""
LYING_ANSWER = guests.respond(
    {"block": True, "status_code": 200, "headers": {"content-length": "5"}, "body": guests.b64(TWENTY)}
)

_s = hw.Strings()
SEES_LENGTH = hw.module(
    _s,
    f"""
  (func (export "handle_request") (result i64)
    (local $n i64)
    (local.set $n (call $get_header_values (i32.const 0) {_s("content-length")} (i32.const 8192) (i32.const 64)))
    (call $set_header_value (i32.const 1) {_s("x-seen-length")} (i32.const 8192)
      (select (i32.sub (i32.wrap_i64 (local.get $n)) (i32.const 1)) (i32.const 0)
              (i64.ne (local.get $n) (i64.const 0))))
    (i64.const 1))
""",
)
"""An http-wasm guest that reports the request's Content-Length (x-seen-length) and goes on."""


def _wasm(tmp_path: Path, name: str, wat: str) -> str:
    path = tmp_path / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return str(path)


def _config(tmp_path: Path, upstream_url: str) -> str:
    redactor = ROOT / "plugins" / "pii_redactor.wasm"
    return f"""
server:
  listen: "tcp:0:interface=127.0.0.1"
  h2c: true
admin: {{listen: "tcp:0:interface=127.0.0.1"}}
plugins:
  - {{name: cl, path: {_wasm(tmp_path, "cl", hw.CONTENT_LENGTH)}}}
  - {{name: lying, path: {_wasm(tmp_path, "lying", LYING)}}}
  - {{name: lying_body, path: {_wasm(tmp_path, "lying_body", LYING_BODY)}, include_body: true}}
  - {{name: lying_answer, path: {_wasm(tmp_path, "lying_answer", LYING_ANSWER)}}}
  - {{name: redactor, path: {redactor}, include_body: true, config: {{emails: true}}}}
  - {{name: sees_length, path: {_wasm(tmp_path, "sees_length", SEES_LENGTH)}}}
routes:
  - {{name: cl, match: {{path_prefix: /cl}}, filters: [cl], upstream: backend}}
  - {{name: lying, match: {{path_prefix: /lying/}}, filters: [lying], upstream: backend}}
  - {{name: lying_body, match: {{path_prefix: /lying-body/}}, filters: [lying_body], upstream: backend}}
  - {{name: lying_answer, match: {{path_prefix: /lying-answer/}}, filters: [lying_answer], upstream: backend}}
  - {{name: redact, match: {{path_prefix: /redact/}}, filters: [redactor, sees_length], upstream: backend}}
upstreams:
  backend: {{targets: ["{upstream_url}"]}}
"""


def _port(gw: Any) -> int:
    return int(gw.url.rsplit(":", 1)[1])


def _post(port: int, path: str, body: bytes, headers: bytes = b"") -> tuple[int, raw_http.Headers, bytes]:
    raw = raw_http.exchange(
        port,
        b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n%s\r\n%s"
        % (path.encode(), len(body), headers, body),
    )
    return raw_http.response(raw)


def _upstream_got(recorder: Any) -> tuple[raw_http.Headers, bytes]:
    """The one request the recording upstream got: its headers and its body, checked to be framed right."""
    assert recorder.requests == 1, recorder.received
    _, headers, rest = raw_http.split(recorder.received)
    lengths = raw_http.values(headers, b"content-length")
    if raw_http.values(headers, b"transfer-encoding"):
        assert raw_http.values(headers, b"transfer-encoding") == [b"chunked"] and lengths == []
        return headers, raw_http.dechunk(rest)
    assert len(lengths) == 1, headers
    assert int(lengths[0]) == len(rest), (lengths, rest)
    return headers, rest


def _forget(recorder: Any) -> None:
    """Start afresh: what came so far is forgotten (kept-alive connections stay)."""
    for connection in recorder.connections:
        connection.received.clear()
        connection.requests = 0


@pytest_twisted.ensureDeferred
async def test_guest_sees_the_clients_content_length(tmp_path, recording, start_gateway):
    recorder, url = recording()
    gw = start_gateway(_config(tmp_path, url))
    status, headers, _ = await threads.deferToThread(_post, _port(gw), "/cl", b"hello")
    assert status == 200
    assert raw_http.values(headers, b"x-seen-length") == [b"5"]
    # The guest wrote a new body: the upstream gets its length, once.
    sent, body = _upstream_got(recorder)
    assert body == b"new body!"
    assert raw_http.values(sent, b"content-length") == [b"9"]


def _h2_post(port: int, path: str, body: bytes, length: bool) -> dict[str, Any]:
    client = H2Client(port)
    try:
        headers = [("content-length", str(len(body)))] if length else []
        stream = client.request(path, method="POST", headers=headers, body=body)
        client.until(lambda: client.responses[stream]["ended"])
        return client.responses[stream]
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_guest_sees_the_content_length_an_http2_client_sent(tmp_path, recording, start_gateway):
    recorder, url = recording()
    gw = start_gateway(_config(tmp_path, url))
    response = await threads.deferToThread(_h2_post, _port(gw), "/cl", b"hello", True)
    assert response["status"] == 200
    assert dict(response["headers"])[b"x-seen-length"] == b"5"
    sent, body = _upstream_got(recorder)
    assert body == b"new body!" and raw_http.values(sent, b"content-length") == [b"9"]
    # Without one the guest sees none.
    _forget(recorder)
    response = await threads.deferToThread(_h2_post, _port(gw), "/cl", b"hello", False)
    assert response["status"] == 200
    assert dict(response["headers"])[b"x-seen-length"] == b""
    sent, body = _upstream_got(recorder)
    assert body == b"new body!" and raw_http.values(sent, b"content-length") == [b"9"]


@pytest_twisted.ensureDeferred
async def test_a_filter_cannot_misstate_a_streamed_bodys_length(tmp_path, recording, start_gateway):
    recorder, url = recording()
    gw = start_gateway(_config(tmp_path, url))
    status, _, _ = await threads.deferToThread(_post, _port(gw), "/lying/x", TWENTY)
    assert status == 200
    sent, body = _upstream_got(recorder)
    assert body == TWENTY
    assert raw_http.values(sent, b"content-length") == [b"20"]
    assert raw_http.values(sent, b"transfer-encoding") == []
    # A chunked request goes on chunked, with no Content-Length.
    _forget(recorder)
    raw = await threads.deferToThread(
        raw_http.exchange,
        _port(gw),
        b"POST /lying/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"a\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n",
    )
    assert raw_http.response(raw)[0] == 200
    sent, body = _upstream_got(recorder)
    assert body == TWENTY
    assert raw_http.values(sent, b"transfer-encoding") == [b"chunked"]


@pytest_twisted.ensureDeferred
async def test_a_filter_cannot_misstate_a_new_bodys_length(tmp_path, recording, start_gateway):
    recorder, url = recording()
    gw = start_gateway(_config(tmp_path, url))
    status, _, _ = await threads.deferToThread(_post, _port(gw), "/lying-body/x", b"short")
    assert status == 200
    sent, body = _upstream_got(recorder)
    assert body == TWENTY
    assert raw_http.values(sent, b"content-length") == [b"20"]
    assert raw_http.values(sent, b"transfer-encoding") == []
    # Nor an answer's.
    status, headers, body = await threads.deferToThread(_post, _port(gw), "/lying-answer/x", b"")
    assert (status, body) == (200, TWENTY)
    assert raw_http.values(headers, b"content-length") == [b"20"]


@pytest_twisted.ensureDeferred
async def test_redacted_body_goes_upstream_with_its_own_length(tmp_path, recording, start_gateway):
    # (JSON: the redactor reads responses too, and refuses what it cannot read)
    recorder, url = recording(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
    gw = start_gateway(_config(tmp_path, url))
    payload = json.dumps({"contact": "jane.doe@example.com", "note": "hi"}).encode()
    status, headers, _ = await threads.deferToThread(
        _post, _port(gw), "/redact/x", payload, b"Content-Type: application/json\r\n"
    )
    assert status == 200
    sent, body = _upstream_got(recorder)
    assert b"jane.doe@example.com" not in body and b"[REDACTED_EMAIL]" in body
    assert len(body) != len(payload)
    # The redactor's output kept the client's Content-Length; the filter
    # after it on the route saw the redacted body's.
    assert raw_http.values(headers, b"x-seen-length") == [str(len(body)).encode()]


def test_framing_headers_from_filters_are_dropped_in_any_case():
    from wasmgate._headers import from_filters

    headers = [("Content-Length", "5"), ("content-length", "1"), ("TRANSFER-Encoding", "chunked"), ("X-A", "b")]
    assert from_filters(headers) == [(b"X-A", b"b")]


def _reading_config(tmp_path: Path, upstream_url: str) -> str:
    """A route whose response filter reads the body (so the gateway collects it first)."""
    return f"""
server: {{listen: "tcp:0:interface=127.0.0.1"}}
admin: {{listen: "tcp:0:interface=127.0.0.1"}}
plugins:
  - {{name: reads, path: {_wasm(tmp_path, "reads", guests.RESPONSE_HEADER)}, include_body: true}}
routes:
  - {{name: reads, match: {{path_prefix: /}}, filters: [reads], upstream: backend}}
upstreams:
  backend: {{targets: ["{upstream_url}"]}}
"""


@pytest_twisted.ensureDeferred
async def test_head_and_304_keep_the_upstreams_length_through_a_body_reading_filter(
    tmp_path, recording, start_gateway
):
    """
    A response filter that reads bodies gets an empty one for a HEAD or a
    304: the client still gets the upstream's Content-Length (the length of
    the representation), never a made-up 0, and no body.
    """
    for answer, request, expected in [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n", b"HEAD", [b"20"]),
        (b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n', b"GET", []),
        (b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 20\r\n\r\n', b"GET", [b"20"]),
    ]:
        _, url = recording(answer)
        gw = start_gateway(_reading_config(tmp_path, url))
        raw = await threads.deferToThread(
            raw_http.exchange, _port(gw), request + b" /r HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        first, headers, rest = raw_http.split(raw)
        assert raw_http.values(headers, b"x-response-filtered") == [b"yes"], raw
        assert raw_http.values(headers, b"content-length") == expected, raw
        assert raw_http.values(headers, b"transfer-encoding") == [], raw
        assert rest == b"", raw
