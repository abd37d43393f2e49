"""
Wasm filters in the chain of a real gateway: decisions, failure policies,
deadlines and caps, with real upstream and real HTTP clients.
"""
from __future__ import annotations

import json
import resource
import threading
import time
from pathlib import Path

import pytest_twisted
import wasmtime
from twisted.internet import defer, reactor, task

from tests import wasm_guests as guests

ROOT = Path(__file__).resolve().parent.parent


def _wasm(tmp_path: Path, name: str, wat: str) -> str:
    path = tmp_path / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return str(path)


def _config(upstream_url: str, plugins: str, routes: str) -> str:
    return f"""
server:
  listen: "tcp:0:interface=127.0.0.1"
admin: {{listen: "tcp:0:interface=127.0.0.1"}}
filters: {{threads: 4}}
plugins:
{plugins}
routes:
{routes}
upstreams:
  backend: {{targets: ["{upstream_url}"]}}
"""


async def _get(http, url, method="GET", **kwargs):
    response = await http.request(method, url, **kwargs)
    body = await response.content()
    return response, body


@pytest_twisted.ensureDeferred
async def test_rewrite_block_and_response_filters(tmp_path, upstream, start_gateway, http):
    plugins = f"""
  - {{name: rewrite, path: {_wasm(tmp_path, "rewrite", guests.HEADER_REWRITE)}}}
  - {{name: block, path: {_wasm(tmp_path, "block", guests.BLOCK_403)}}}
  - {{name: respond, path: {_wasm(tmp_path, "respond", guests.RESPONSE_HEADER)}}}
"""
    routes = """
  - {name: rewrite, match: {path_prefix: /rewrite}, filters: [rewrite], upstream: backend}
  - {name: block, match: {path_prefix: /block}, filters: [rewrite, block], upstream: backend}
  - {name: respond, match: {path_prefix: /respond}, filters: [respond], upstream: backend}
"""
    gw = start_gateway(_config(upstream.url, plugins, routes))
    response, body = await _get(http, gw.url + "/rewrite/x", headers={"X-Remove-Me": "1"})
    assert response.code == 200
    echo = json.loads(body)
    assert echo["uri"] == "/rewritten"
    assert echo["headers"]["x-added"] == ["yes"]
    assert echo["headers"]["x-multi"] == ["a", "b"]
    assert "x-remove-me" not in echo["headers"]
    assert response.headers.getRawHeaders("x-from-filter") == ["1"]

    response, body = await _get(http, gw.url + "/block")
    assert (response.code, body) == (403, b"blocked by wasm\n")
    assert upstream.app.connections == 1  # the blocked request never went upstream

    response, body = await _get(http, gw.url + "/respond/echo")
    assert response.code == 200
    assert response.headers.getRawHeaders("x-response-filtered") == ["yes"]
    assert response.headers.getRawHeaders("server") is None
    assert json.loads(body)["uri"] == "/respond/echo"


def _misbehaving(tmp_path, upstream, policy="closed", memory_mb=2):
    plugins = f"""
  - name: bad
    path: {_wasm(tmp_path, "bad", guests.MISBEHAVING)}
    timeout_ms: 50
    memory_limit_mb: {memory_mb}
    failure_policy: {policy}
  - {{name: fine, path: {_wasm(tmp_path, "fine", guests.PASS_THROUGH)}}}
"""
    routes = """
  - {name: bad, match: {path_prefix: /bad}, filters: [bad], upstream: backend}
  - {name: fine, match: {path_prefix: /fine}, filters: [fine], upstream: backend}
"""
    # The misbehaving guest picks its misdeed from the request's method;
    # the gateway only takes methods llhttp knows (501 otherwise), so on
    # /bad-NAME a filter in front sets the method to NAME first.
    for name in _MISDEEDS:
        plugins += f"  - {{name: as_{name}, path: {_wasm(tmp_path, 'as_' + name, guests.respond({'method': name}))}}}\n"
        routes += f"  - {{name: bad-{name}, match: {{path_prefix: /bad-{name}}}, filters: [as_{name}, bad], upstream: backend}}\n"
    return _config(upstream.url, plugins, routes)


_MISDEEDS = ("LOOP", "MEMBOMB", "TRAP", "JSON", "OOB", "VALUE", "HEADER")


@pytest_twisted.ensureDeferred
async def test_infinite_loop_times_out_others_keep_flowing(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(_misbehaving(tmp_path, upstream))
    started = time.monotonic()
    looping = _get(http, gw.url + "/bad-LOOP/x")
    # Meanwhile, other requests are served.
    for _ in range(3):
        response, _ = await _get(http, gw.url + "/fine/echo")
        assert response.code == 200
    response, body = await looping
    elapsed = time.monotonic() - started
    assert response.code == 502
    assert elapsed < 1.0, elapsed
    assert b"Traceback" not in body
    # The next call to that filter runs on a fresh instance and works.
    response, _ = await _get(http, gw.url + "/bad/echo")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_memory_bomb_is_capped(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(_misbehaving(tmp_path, upstream, memory_mb=4))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(20):
        response, _ = await _get(http, gw.url + "/bad-MEMBOMB/x")
        assert response.code == 502
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 64, grown_mb
    response, _ = await _get(http, gw.url + "/bad/echo")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_trap_and_bad_outputs(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(_misbehaving(tmp_path, upstream))
    expected = {"TRAP": 502, "JSON": 500, "OOB": 500, "VALUE": 500, "HEADER": 500}
    for method, code in expected.items():
        response, body = await _get(http, gw.url + f"/bad-{method}/x")
        assert response.code == code, method
        assert len(body) < 100 and b"Traceback" not in body
    assert upstream.app.connections == 0
    scrape = (await _get(http, gw.admin_url + "/metrics"))[1].decode()
    assert 'wasmgate_plugin_errors_total{kind="trap",plugin="bad"} 1.0' in scrape
    assert 'wasmgate_plugin_errors_total{kind="bad_output",plugin="bad"} 4.0' in scrape
    # Every call is timed, failed ones too (from the chain's decisions).
    assert 'wasmgate_plugin_duration_seconds_count{plugin="bad"} 5.0' in scrape


@pytest_twisted.ensureDeferred
async def test_open_policy_skips_the_failing_filter(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(_misbehaving(tmp_path, upstream, policy="open"))
    for method in ("TRAP", "LOOP"):
        response, body = await _get(http, gw.url + f"/bad-{method}/echo")
        assert response.code == 200, method
        assert json.loads(body)["method"] == method


@pytest_twisted.ensureDeferred
async def test_many_failures_leak_nothing(tmp_path, upstream, start_gateway, http):
    gw = start_gateway(_misbehaving(tmp_path, upstream))
    response, _ = await _get(http, gw.url + "/fine/echo")
    threads_before = threading.active_count()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(1000):
        response, _ = await _get(http, gw.url + "/bad-TRAP/x")
        assert response.code == 502
    response, _ = await _get(http, gw.url + "/fine/echo")
    assert response.code == 200
    assert threading.active_count() <= threads_before + 4
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024 < 64


# -- the bundled filters, through the gateway --

PLUGINS = ROOT / "plugins"


@pytest_twisted.ensureDeferred
async def test_rate_limiter_sliding_window(tmp_path, upstream, start_gateway, http):
    plugins = f"""
  - name: rate_limiter
    path: {PLUGINS / "rate_limiter.wasm"}
    config: {{limit: 5, window: 2s, key: client_ip}}
"""
    routes = "  - {match: {path_prefix: /}, filters: [rate_limiter], upstream: backend}\n"
    text = _config(upstream.url, plugins, routes).replace(
        'server:\n', 'server:\n  trusted_proxies: ["127.0.0.1/32"]\n'
    )
    gw = start_gateway(text)
    remaining = []
    for _ in range(5):
        response, _ = await _get(http, gw.url + "/echo", headers={"X-Forwarded-For": "1.1.1.1"})
        assert response.code == 200
        [value] = response.headers.getRawHeaders("ratelimit")
        remaining.append(int(value.split("r=")[1].split(";")[0]))
    assert remaining == [4, 3, 2, 1, 0]
    response, body = await _get(http, gw.url + "/echo", headers={"X-Forwarded-For": "1.1.1.1"})
    assert response.code == 429
    retry_after = int(response.headers.getRawHeaders("retry-after")[0])
    assert 1 <= retry_after <= 4
    assert response.headers.getRawHeaders("ratelimit-policy")
    # Another client is limited on its own.
    response, _ = await _get(http, gw.url + "/echo", headers={"X-Forwarded-For": "2.2.2.2"})
    assert response.code == 200
    # After the window slides, requests pass again.
    await task.deferLater(reactor, retry_after + 0.1, lambda: None)
    response, _ = await _get(http, gw.url + "/echo", headers={"X-Forwarded-For": "1.1.1.1"})
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_redactor_headers_and_body(tmp_path, upstream, start_gateway, http):
    plugins = f"""
  - name: pii_redactor
    path: {PLUGINS / "pii_redactor.wasm"}
    include_body: true
    config: {{headers: [authorization, cookie, x-api-key], emails: true, card_numbers: true}}
"""
    routes = "  - {match: {path_prefix: /}, filters: [pii_redactor], upstream: backend}\n"
    gw = start_gateway(_config(upstream.url, plugins, routes))
    payload = {
        "contact": "jane.doe@example.com",
        "card": "4111 1111 1111 1111",
        "order": "1234567812345678",
    }
    response, body = await _get(
        http,
        gw.url + "/echo",
        method="POST",
        headers={
            "Authorization": "Bearer s3cret",
            "Cookie": "session=abc",
            "X-Api-Key": "k",
            "X-Other": "visible",
            "Content-Type": "application/json",
        },
        data=json.dumps(payload).encode(),
    )
    assert response.code == 200
    echo = json.loads(body)
    for name in ("authorization", "cookie", "x-api-key"):
        assert echo["headers"][name] == ["REDACTED"], name
    assert echo["headers"]["x-other"] == ["visible"]
    sent = json.loads(echo["body"])
    assert "jane.doe@example.com" not in echo["body"]
    assert "4111" not in sent["card"]
    assert sent["order"] == "1234567812345678"  # fails Luhn: not a card
    assert echo["headers"]["content-length"] == [str(len(echo["body"]))]


@pytest_twisted.ensureDeferred
async def test_redactor_response_phase_only_where_configured(tmp_path, upstream, start_gateway, http):
    """
    The redactor says (wasmgate_wants_response) that its base config has no
    response work: that route skips the response phase; a route whose
    override asks for set-cookie redaction gets it.
    """
    plugins = f"""
  - name: pii_redactor
    path: {PLUGINS / "pii_redactor.wasm"}
    config: {{headers: [authorization]}}
"""
    routes = """
  - name: plain
    match: {path_prefix: /plain}
    filters: [pii_redactor]
    upstream: backend
  - name: cookies
    match: {path_prefix: /cookies}
    filters: [pii_redactor]
    filter_config: {pii_redactor: {redact_response_headers: [set-cookie]}}
    upstream: backend
"""
    gw = start_gateway(_config(upstream.url, plugins, routes))
    chains = {route.config.name: route.chain for _, route in gw.service.generation.router._by_host[None]}
    assert chains["plain"].response_filters == ()
    assert len(chains["cookies"].response_filters) == 1
    response, _ = await _get(http, gw.url + "/cookies")
    assert response.headers.getRawHeaders("set-cookie") == ["REDACTED"]
    response, _ = await _get(http, gw.url + "/plain/x", headers={"Authorization": "x"})
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_client_leaving_during_a_filter_is_not_an_error(tmp_path, upstream, start_gateway, http):
    from twisted.logger import LogLevel, globalLogPublisher

    gw = start_gateway(_misbehaving(tmp_path, upstream).replace("timeout_ms: 50", "timeout_ms: 300"))
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        d = defer.ensureDeferred(_get(http, gw.url + "/bad-LOOP/x"))
        await task.deferLater(reactor, 0.05, lambda: None)
        d.cancel()
        try:
            await d
        except Exception:
            pass
        await task.deferLater(reactor, 0.4, lambda: None)  # the filter call ends meanwhile
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [e for e in events if e.get("log_level") == LogLevel.critical], events
    response, _ = await _get(http, gw.url + "/fine/echo")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_output_the_wire_cannot_carry_is_a_500(tmp_path, upstream, start_gateway, http):
    """
    A header value beyond Latin-1 or a path that is not ASCII cannot be put
    on the wire: the filter's output is bad (500), and the request is
    answered rather than left hanging.
    """
    euro = _wasm(tmp_path, "euro", guests.respond({"headers": {"x-price": "5 \u20ac"}}))
    accent = _wasm(tmp_path, "accent", guests.respond({"path": "/caf\u00e9"}))
    plugins = f"""
  - {{name: euro, path: {euro}}}
  - {{name: accent, path: {accent}}}
"""
    routes = """
  - {name: euro, match: {path_prefix: /euro}, filters: [euro], upstream: backend}
  - {name: accent, match: {path_prefix: /accent}, filters: [accent], upstream: backend}
"""
    gw = start_gateway(_config(upstream.url, plugins, routes))
    for path in ("/euro", "/accent"):
        response, body = await _get(http, gw.url + path)
        assert response.code == 500 and b"Traceback" not in body, (path, body)
    assert upstream.app.connections == 0
    scrape = (await _get(http, gw.admin_url + "/metrics"))[1].decode()
    assert 'wasmgate_plugin_errors_total{kind="bad_output",plugin="euro"} 1.0' in scrape
    assert 'wasmgate_plugin_errors_total{kind="bad_output",plugin="accent"} 1.0' in scrape


@pytest_twisted.ensureDeferred
async def test_routes_redacting_response_bodies_ask_for_them_uncompressed(tmp_path, upstream, start_gateway, http):
    """
    A route whose filters read response bodies does not pass Accept-Encoding
    upstream (a gzipped body would go past the redactor); other routes do.
    """
    plugins = f"""
  - name: pii_redactor
    path: {PLUGINS / "pii_redactor.wasm"}
    include_body: true
    config: {{emails: true}}
"""
    routes = """
  - {name: redacted, match: {path_prefix: /redacted}, filters: [pii_redactor], upstream: backend}
  - {name: plain, match: {path_prefix: /plain}, upstream: backend}
"""
    gw = start_gateway(_config(upstream.url, plugins, routes))
    _, body = await _get(http, gw.url + "/redacted/echo", headers={"Accept-Encoding": "gzip"})
    assert "accept-encoding" not in json.loads(body)["headers"]
    _, body = await _get(http, gw.url + "/plain/echo", headers={"Accept-Encoding": "gzip"})
    assert "gzip" in json.loads(body)["headers"]["accept-encoding"]


@pytest_twisted.ensureDeferred
async def test_stalled_body_for_response_filters_is_a_504(tmp_path, upstream, start_gateway, http):
    """
    While the gateway buffers a response body for response filters, an
    upstream that stops sending gets the route's timeout, then a 504.
    """
    plugins = f"""
  - name: pii_redactor
    path: {PLUGINS / "pii_redactor.wasm"}
    include_body: true
    config: {{emails: true}}
"""
    routes = """
  - {name: r, match: {path_prefix: /}, filters: [pii_redactor], upstream: backend, timeout: 300ms}
"""
    gw = start_gateway(_config(upstream.url, plugins, routes))
    started = time.monotonic()
    response, body = await _get(http, gw.url + "/stream?size=200000&hold=1")
    assert (response.code, body) == (504, b"upstream timed out\n")
    assert 0.25 < time.monotonic() - started < 5
