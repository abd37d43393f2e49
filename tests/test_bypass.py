"""
A route's filters cannot be walked around: for hostile spellings of a
request target, the route taken, what the route's filter saw and the bytes
the upstream received all agree (or the request is refused with 400).
Raw request bytes in, a recording upstream and a filter that logs its
input on the other side.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Optional

import pytest
import pytest_twisted
import wasmtime
from twisted.internet import reactor, task, threads
from twisted.logger import globalLogPublisher

from tests import wasm_guests as g
from tests.conftest import read_until_closed


def _config(tmp_path: Path, upstream_url: str, path_params: str = "route") -> str:
    echo = tmp_path / "echo.wasm"
    echo.write_bytes(wasmtime.wat2wasm(g.ECHO_LOG))
    return f"""
server:
  listen: "tcp:0:interface=127.0.0.1"
  path_params: {path_params}
admin: {{listen: "tcp:0:interface=127.0.0.1"}}
plugins:
  - {{name: echo, path: {echo}}}
routes:
  - {{name: secure, match: {{host: secure.example.com, path_prefix: /pii}}, filters: [echo], upstream: backend}}
  - {{name: admin, match: {{path_prefix: /admin}}, filters: [echo], upstream: backend}}
  - {{name: public, match: {{path_prefix: /}}, upstream: backend}}
upstreams:
  backend: {{targets: ["{upstream_url}"]}}
"""


# (target, Host header, status, route, path and host the filter and the upstream see)
HOSTILE = [
    ("/pii#x", "secure.example.com", 400, None, None, None),
    ("http://public.example.com/pii", "secure.example.com", 200, "public", "/pii", "public.example.com"),
    ("http://secure.example.com/pii", "public.example.com", 200, "secure", "/pii", "secure.example.com"),
    ("/admin;x", "x", 200, "admin", "/admin;x", "x"),
    ("/admin;jsessionid=1/x", "x", 200, "admin", "/admin;jsessionid=1/x", "x"),
    ("/pii", "secure.example.com.", 200, "secure", "/pii", "secure.example.com."),
    ("/pii", "SECURE.Example.COM", 200, "secure", "/pii", "SECURE.Example.COM"),
    ("/pii", "secure.example.com:80", 200, "secure", "/pii", "secure.example.com:80"),
    ("/x/%2e%2e/admin", "x", 200, "admin", "/admin", "x"),
    ("/%2E%2e/admin", "x", 400, None, None, None),
    ("/%61dmin/%2e/x", "x", 200, "admin", "/admin/x", "x"),
    ("/admin%3bx", "x", 400, None, None, None),
    ("/admin%2Fx", "x", 400, None, None, None),
    ("//admin", "x", 200, "admin", "/admin", "x"),
]


def _send(port: int, target: str, host: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (target.encode(), host.encode()))
        return read_until_closed(sock, ignore_errors=True)


def _request_line_and_host(received: bytes) -> tuple[str, Optional[str]]:
    head = received.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    host = next((line.split(":", 1)[1].strip() for line in head[1:] if line.lower().startswith("host:")), None)
    return head[0], host


@pytest.mark.parametrize("target, host, status, route, path, seen_host", HOSTILE, ids=[f"{t} @ {h}" for t, h, *_ in HOSTILE])
@pytest_twisted.ensureDeferred
async def test_route_filters_and_upstream_agree(tmp_path, recording, start_gateway, target, host, status, route, path, seen_host):
    recorder, url = recording()
    gw = start_gateway(_config(tmp_path, url))
    records: list[Any] = []
    gw.service.observers.append(lambda record, seconds: records.append(record))
    seen: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "wasmgate.plugin.echo" and event.get("message", "").startswith("{"):
            payload = json.loads(event["message"])
            if "method" in payload:  # (not the config it logs when it starts)
                seen.append(payload)

    globalLogPublisher.addObserver(observe)
    try:
        answer = await threads.deferToThread(_send, int(gw.url.rsplit(":", 1)[1]), target, host)
        await task.deferLater(reactor, 0.05, lambda: None)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    if status == 400:
        assert recorder.received == b"" and seen == []
        return
    assert [r.route for r in records] == [route]
    line, upstream_host = _request_line_and_host(recorder.received)
    assert line == f"GET {path} HTTP/1.1"
    assert upstream_host == seen_host
    if route == "public":
        assert seen == []  # no filter on that route: and none was walked around
    else:
        (payload,) = seen
        assert payload["route"] == route and payload["path"] == path
        assert payload["headers"]["host"] == seen_host


@pytest_twisted.ensureDeferred
async def test_path_params_can_be_refused(tmp_path, recording, start_gateway):
    recorder, url = recording()
    gw = start_gateway(_config(tmp_path, url, path_params="reject"))
    answer = await threads.deferToThread(_send, int(gw.url.rsplit(":", 1)[1]), "/admin;x", "x")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"path parameters" in answer
    assert recorder.received == b""
