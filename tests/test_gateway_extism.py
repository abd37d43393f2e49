"""
The seed gateway's Extism plugins (built with @extism/as-pdk) in a real
gateway: the rate limiter answering 429 with retry-after, the redactor's
edited payload reaching the upstream, failure policies, metrics and a
reload that changes a plugin's config.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest_twisted
import wasmtime

from tests import extism_guests as x

PLUGINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "plugins", "extism")
RATE_LIMITER = os.path.abspath(os.path.join(PLUGINS, "rate_limiter.wasm"))
REDACTOR = os.path.abspath(os.path.join(PLUGINS, "header_redactor.wasm"))


def _config(tmp_path: Path, upstream_url: str, limit: int = 2) -> str:
    fails = tmp_path / "fails.wasm"
    fails.write_bytes(wasmtime.wat2wasm(x.FAILS))
    return f"""
server:
  listen: "tcp:0:interface=127.0.0.1"
admin: {{listen: "tcp:0:interface=127.0.0.1"}}
plugins:
  - {{name: redact, path: {REDACTOR}, config: {{headers: "authorization,x-api-key"}}}}
  - {{name: limit, path: {RATE_LIMITER}, config: {{limit: {limit}, window_seconds: 60, key_header: x-client}}}}
  - {{name: fails_closed, path: {fails}}}
  - {{name: fails_open, path: {fails}, failure_policy: open}}
routes:
  - {{name: seed, match: {{path_prefix: /seed}}, filters: [limit, redact], upstream: backend}}
  - {{name: closed, match: {{path_prefix: /closed}}, filters: [fails_closed], upstream: backend}}
  - {{name: open, match: {{path_prefix: /open}}, filters: [fails_open, redact], upstream: backend}}
upstreams:
  backend: {{targets: ["{upstream_url}"]}}
"""


async def _get(http, url, **headers):  # type: ignore[no-untyped-def]
    response = await http.get(url, headers={k.replace("_", "-"): v for k, v in headers.items()})
    return response, await response.content()


@pytest_twisted.ensureDeferred
async def test_seed_plugins_through_the_gateway(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(_config(tmp_path, upstream.url))
    for _ in range(2):
        response, body = await _get(
            http, gw.url + "/seed/items?x=1", Authorization="Bearer s3cret", X_Api_Key="k", X_Client="a", Accept="*/*"
        )
        assert response.code == 200
        echo = json.loads(body)
        assert echo["uri"] == "/seed/items?x=1"
        assert echo["headers"]["authorization"] == ["REDACTED"]
        assert echo["headers"]["x-api-key"] == ["REDACTED"]
        assert echo["headers"]["accept"] == ["*/*"]
        assert echo["headers"]["x-client"] == ["a"]
    reached = upstream.app.requests
    response, body = await _get(http, gw.url + "/seed/items", X_Client="a")
    assert response.code == 429
    assert response.headers.getRawHeaders("retry-after") == ["60"]
    assert body == b"rate limit exceeded\n"
    assert upstream.app.requests == reached  # answered without the upstream
    other, _ = await _get(http, gw.url + "/seed/items", X_Client="b")
    assert other.code == 200


@pytest_twisted.ensureDeferred
async def test_failure_policies_and_metrics(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(_config(tmp_path, upstream.url))
    closed, body = await _get(http, gw.url + "/closed/x")
    assert closed.code == 502 and b"it went wrong" not in body
    opened, body = await _get(http, gw.url + "/open/x", Authorization="Bearer s3cret")
    assert opened.code == 200
    assert json.loads(body)["headers"]["authorization"] == ["REDACTED"]  # the next filter still ran
    _, scrape = await _get(http, gw.admin_url + "/metrics")
    text = scrape.decode()
    assert 'wasmgate_plugin_errors_total{kind="error",plugin="fails_closed"} 1.0' in text
    assert 'wasmgate_plugin_errors_total{kind="error",plugin="fails_open"} 1.0' in text


@pytest_twisted.ensureDeferred
async def test_reload_changes_the_plugins_config(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(_config(tmp_path, upstream.url, limit=5))
    for _ in range(2):
        response, _ = await _get(http, gw.url + "/seed/x", X_Client="c")
        assert response.code == 200
    Path(gw.path).write_text(_config(tmp_path, upstream.url, limit=1))
    await gw.service.reload()
    first, _ = await _get(http, gw.url + "/seed/x", X_Client="d")
    second, _ = await _get(http, gw.url + "/seed/x", X_Client="d")
    assert (first.code, second.code) == (200, 429)
