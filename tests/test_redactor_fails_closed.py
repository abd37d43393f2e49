"""
The bundled PII redactor in a real gateway, checked by what the upstream
actually received: encoded PII (form fields, JSON escapes) is masked, and a
body the redactor cannot read (compressed, of a type it does not read) is
refused -- 415 before anything goes upstream, 502 before an upstream body
reaches the client -- unless the route says `unredactable: pass`.
"""
from __future__ import annotations

import gzip
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer, threads

from tests.conftest import gateway_yaml, read_until_closed

ROOT = Path(__file__).resolve().parent.parent
REDACTOR = ROOT / "plugins" / "pii_redactor.wasm"
WASMGATE = str(Path(sys.executable).parent / "wasmgate")

PLUGIN = f"""
plugins:
  - name: pii_redactor
    path: {REDACTOR}
    include_body: true
    config: {{emails: true, card_numbers: true}}
"""
ROUTES = """
  - name: passing
    match: {path_prefix: /pass}
    filters: [pii_redactor]
    filter_config: {pii_redactor: {unredactable: pass}}
    upstream: backend
  - name: redacted
    match: {path_prefix: /}
    filters: [pii_redactor]
    upstream: backend
"""


# Typed: on these routes an untyped upstream body would be refused too.
OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


def start(start_gateway: Any, upstream_url: str) -> Any:
    return start_gateway(gateway_yaml(upstream_url, extra=PLUGIN, routes=ROUTES))


async def fetch(http: Any, url: str, method: str = "GET", **kwargs: Any) -> tuple[Any, bytes]:
    response = await http.request(method, url, **kwargs)
    return response, await response.content()


def sent_body(received: bytes, body: bytes) -> bool:
    """Whether the upstream got exactly C{body}, framed by its length."""
    return received.endswith(b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


@pytest_twisted.ensureDeferred
async def test_form_fields_are_masked_decoded(recording, start_gateway, http):
    """
    A form body's percent-encoded e-mail and '+'-spaced card reach the
    upstream masked; the untouched pair keeps its bytes.
    """
    recorder, url = recording(OK)
    gw = start(start_gateway, url)
    body = b"email=alice%40example.com&card=4111+1111+1111+1111&note=caf%C3%A9+%26+tea"
    response, _ = await fetch(
        http, gw.url + "/signup", "POST", data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.code == 200
    received = recorder.received
    assert sent_body(
        received, b"email=[REDACTED_EMAIL]&card=[REDACTED_CARD]&note=caf%C3%A9+%26+tea"
    ), received
    assert b"alice" not in received and b"4111" not in received


@pytest_twisted.ensureDeferred
async def test_json_escapes_do_not_hide_pii(recording, start_gateway, http):
    r"""`\u0040` and `\u0020` inside JSON strings are decoded before scanning."""
    recorder, url = recording(OK)
    gw = start(start_gateway, url)
    body = b'{"to": "alice\\u0040example.com", "card": "4111\\u00201111\\u00201111\\u00201111", "n": 1}'
    response, _ = await fetch(
        http, gw.url + "/orders", "POST", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.code == 200
    received = recorder.received
    assert sent_body(received, b'{"to": "[REDACTED_EMAIL]", "card": "[REDACTED_CARD]", "n": 1}'), received


# (headers, body, the 415's text, what `unredactable: pass` sends upstream)
UNREADABLE_REQUESTS = [
    ({"Content-Type": "text/plain", "Content-Encoding": "gzip"}, gzip.compress(b"alice@example.com"),
     b"request body refused: a Content-Encoding is not accepted on this route; send it uncompressed\n", None),
    ({"Content-Type": "application/octet-stream"}, b"alice@example.com",
     b"request body refused: this Content-Type is not accepted on this route\n", None),
    ({}, b"alice@example.com", b"request body refused: a body needs a Content-Type on this route\n", None),
    # Not JSON: passed, it is still scanned as text.
    ({"Content-Type": "application/json"}, b"{'to': 'alice@example.com'}",
     b"request body refused: the body is not valid JSON\n", b"{'to': '[REDACTED_EMAIL]'}"),
]


@pytest_twisted.ensureDeferred
async def test_unreadable_request_bodies_never_reach_the_upstream(recording, start_gateway, http):
    """
    Compressed, untyped, unlisted or malformed bodies get a 415 and the
    upstream gets nothing at all; on the route that says `unredactable:
    pass` they arrive byte-for-byte.
    """
    recorder, url = recording(OK)
    gw = start(start_gateway, url)
    for headers, body, why, _ in UNREADABLE_REQUESTS:
        response, text = await fetch(http, gw.url + "/upload", "POST", data=body, headers=headers)
        assert (response.code, text) == (415, why), headers
        assert response.headers.getRawHeaders("content-type") == ["text/plain; charset=utf-8"]
    assert recorder.received == b"" and recorder.requests == 0
    for headers, body, _, passed in UNREADABLE_REQUESTS:
        response, _ = await fetch(http, gw.url + "/pass/upload", "POST", data=body, headers=headers)
        assert response.code == 200, headers
        assert sent_body(recorder.received, passed or body), (headers, recorder.received)


def upstream_answer(headers: dict[str, str], body: bytes) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return b"HTTP/1.1 200 OK\r\n%scontent-length: %d\r\n\r\n%s" % (head.encode(), len(body), body)


def raw_get(gw: Any, path: str, extra: bytes = b"") -> "defer.Deferred[tuple[bytes, bytes]]":
    """GET C{path} over a raw socket: the head and body the client got, byte for byte."""

    def get() -> tuple[bytes, bytes]:
        host, port = gw.url.rsplit("/", 1)[1].split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"GET %s HTTP/1.1\r\nHost: a\r\n%sConnection: close\r\n\r\n" % (path.encode(), extra))
            head, _, body = read_until_closed(s).partition(b"\r\n\r\n")
        return head.lower(), body

    return threads.deferToThread(get)


@pytest_twisted.ensureDeferred
async def test_compressed_upstream_response_is_a_502(recording, start_gateway):
    """
    The gateway asks for uncompressed responses on such routes; an upstream
    that compresses anyway gets its body replaced by a 502 that says so
    (not cacheable, no Content-Encoding); the passing route forwards it.
    """
    secret = gzip.compress(b'{"email": "alice@example.com"}')
    recorder, url = recording(
        upstream_answer({"Content-Type": "application/json", "Content-Encoding": "gzip",
                         "Cache-Control": "max-age=600"}, secret)
    )
    gw = start(start_gateway, url)
    head, body = await raw_get(gw, "/profile", b"Accept-Encoding: gzip\r\n")
    assert head.startswith(b"http/1.1 502 bad gateway\r\n"), head
    assert body == b"bad gateway: the upstream's response could not be checked on this route\n"
    assert b"content-encoding" not in head and b"\r\ncache-control: no-store\r\n" in head, head
    assert b"accept-encoding" not in recorder.received.lower()
    head, body = await raw_get(gw, "/pass/profile")
    assert head.startswith(b"http/1.1 200 ok\r\n") and b"\r\ncontent-encoding: gzip\r\n" in head, head
    assert body == secret


@pytest_twisted.ensureDeferred
async def test_upstream_response_of_an_unread_type_is_a_502(recording, start_gateway):
    _, url = recording(upstream_answer({"Content-Type": "application/pdf"}, b"%PDF alice@example.com"))
    gw = start(start_gateway, url)
    head, body = await raw_get(gw, "/statement")
    assert head.startswith(b"http/1.1 502 ") and b"alice" not in body, (head, body)
    head, body = await raw_get(gw, "/pass/statement")
    assert head.startswith(b"http/1.1 200 ") and body == b"%PDF alice@example.com", (head, body)


@pytest_twisted.ensureDeferred
async def test_bad_unredactable_override_fails_the_request(recording, start_gateway, http):
    """
    A route override with an unknown value fails closed (the plugin's
    failure policy: 502) and nothing goes upstream; a valid one works.
    """
    recorder, url = recording(OK)
    routes = """
  - name: typo
    match: {path_prefix: /typo}
    filters: [pii_redactor]
    filter_config: {pii_redactor: {unredactable: yes-please}}
    upstream: backend
  - name: passing
    match: {path_prefix: /}
    filters: [pii_redactor]
    filter_config: {pii_redactor: {unredactable: pass}}
    upstream: backend
"""
    gw = start_gateway(gateway_yaml(url, extra=PLUGIN, routes=routes))
    gzipped = {"Content-Type": "text/plain", "Content-Encoding": "gzip"}
    response, _ = await fetch(http, gw.url + "/typo", "POST", data=b"x", headers=gzipped)
    assert response.code == 502
    assert recorder.requests == 0
    response, _ = await fetch(http, gw.url + "/fine", "POST", data=b"x", headers=gzipped)
    assert response.code == 200 and sent_body(recorder.received, b"x")


def test_check_names_a_bad_unredactable_value(tmp_path):
    """`wasmgate check` refuses a plugin config with an unknown value, and says why."""
    path = tmp_path / "gateway.yaml"
    path.write_text(
        gateway_yaml("http://127.0.0.1:1", extra=PLUGIN.replace("card_numbers: true", "unredactable: sometimes"),
                     routes=ROUTES)
    )
    result = subprocess.run(
        [WASMGATE, "check", "-c", str(path)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "'unredactable' must be \"refuse\" or \"pass\"" in result.stdout + result.stderr


