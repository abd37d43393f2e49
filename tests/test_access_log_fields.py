# -*- test-case-name: tests.test_access_log_fields -*-
"""
What docs/operations.md promises of the access log and the metrics, checked
on a live gateway over real TLS: every documented field of a filtered
request's line, one C{unmatched} series for every path no route took,
failed TLS handshakes counted by reason, and no C{_created} series.
"""
from __future__ import annotations

import json
import shutil
import socket
import ssl
from pathlib import Path

import pytest_twisted
from twisted.internet import threads

from tests.certs import issue, make_ca, write_pair
from tests.conftest import read_until_closed

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


def _config(tmp_path: Path, upstream_url: str) -> str:
    ca = make_ca()
    write_pair(issue(ca, ["localhost"]), tmp_path / "gw.pem", tmp_path / "gw.key")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    for name in ("rate_limiter", "pii_redactor"):
        shutil.copy(PLUGINS / f"{name}.wasm", tmp_path / f"{name}.wasm")
    return f"""
server:
  listen: "tcp:0:interface=127.0.0.1"
  tls:
    certificates:
      - {{hosts: [localhost], cert: gw.pem, key: gw.key}}
admin: {{listen: "tcp:0:interface=127.0.0.1"}}
access_log: {tmp_path / "access.jsonl"}
plugins:
  - {{name: rate_limiter, path: rate_limiter.wasm, config: {{limit: 100, window: 1m, key: client_ip}}}}
  - {{name: pii_redactor, path: pii_redactor.wasm}}
routes:
  - {{name: api, match: {{host: localhost, path_prefix: /}}, filters: [rate_limiter, pii_redactor], upstream: backend}}
upstreams:
  backend: {{targets: ["{upstream_url}"]}}
"""


def _tls_request(port: int, cafile: str, host: bytes, path: bytes) -> bytes:
    context = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(
                b"GET %s?token=secret HTTP/1.1\r\nHost: %s\r\nUser-Agent: probe/1.0\r\n"
                b"Authorization: Bearer hidden\r\nConnection: close\r\n\r\n" % (path, host)
            )
            return read_until_closed(sock, ignore_errors=True)


def _untrusting_handshake(port: int) -> str:
    """A client that does not trust the gateway's CA: the handshake fails."""
    context = ssl.create_default_context()  # the system CAs, not the test CA
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            context.wrap_socket(raw, server_hostname="localhost")
        except ssl.SSLError as e:
            return str(e)
    raise AssertionError("the handshake succeeded")


@pytest_twisted.ensureDeferred
async def test_access_log_fields_and_metric_series_as_documented(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(_config(tmp_path, upstream.url))
    port = int(gw.url.rsplit(":", 1)[1])
    cafile = str(tmp_path / "ca.pem")
    host = b"localhost:%d" % port
    answer = await threads.deferToThread(_tls_request, port, cafile, host, b"/users/42")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    for path in (b"/a", b"/b/c"):  # no route for this host
        answer = await threads.deferToThread(_tls_request, port, cafile, b"elsewhere.example", path)
        assert answer.startswith(b"HTTP/1.1 404 "), answer[:200]
    assert "certificate verify failed" in await threads.deferToThread(_untrusting_handshake, port)

    gw.service.access_file.flush()
    lines = [json.loads(line) for line in (tmp_path / "access.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    entry = lines[0]
    assert entry["host"] == host.decode()
    assert entry["sni"] == "localhost"
    assert (entry["method"], entry["path"], entry["path_template"]) == ("GET", "/users/42", "/users/{id}")
    assert (entry["route"], entry["status"], entry["upstream"]) == ("api", 200, upstream.url)
    assert entry["filters"][:2] == ["rate_limiter:request:continue", "pii_redactor:request:continue"]
    assert entry["upstream_ms"] > 0 and entry["duration_ms"] >= entry["upstream_ms"]
    assert entry["filter_ms"]["request"] > 0
    assert entry["user_agent"] == "probe/1.0"
    assert len(entry["request_id"]) == 32 and len(entry["trace_id"]) == 32
    assert "protocol" not in entry  # (HTTP/1.1 is the default)
    raw = json.dumps(entry)
    assert "secret" not in raw and "hidden" not in raw  # no query string, no other request header
    unmatched = lines[1]
    assert (unmatched["route"], unmatched["status"], unmatched["host"]) == ("", 404, "elsewhere.example")

    response = await http.get(gw.admin_url + "/metrics")
    text = (await response.content()).decode()
    series = [line for line in text.splitlines() if line.startswith("http_requests_total{")]
    assert [s for s in series if 'status="404"' in s] == [
        'http_requests_total{method="GET",path="unmatched",protocol="HTTP/1.1",route="-",status="404"} 2.0'
    ]
    assert "/b/c" not in text and 'path="/a"' not in text
    assert 'wasmgate_tls_handshakes_total{reason="",result="ok"} 3.0' in text
    assert 'wasmgate_tls_handshakes_total{reason="unknown_ca",result="failed"} 1.0' in text
    assert "_created" not in text
