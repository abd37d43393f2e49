# -*- test-case-name: tests.test_checks_order -*-
"""
L{filter_order_warnings}: a filter keyed on a header that an earlier filter
on the same route redacts, on configs parsed as the gateway parses them.
(C{tests.test_cli} runs C{wasmgate check} on such a config.)
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from wasmgate.checks import filter_order_warnings
from wasmgate.config import parse_config

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


def warnings_for(tmp_path: Path, plugins: str, routes: str) -> list[str]:
    """The warnings for a config of these plugins and routes (relative to C{tmp_path})."""
    for name in ("pii_redactor", "rate_limiter"):
        if not (tmp_path / f"{name}.wasm").exists():
            shutil.copy(PLUGINS / f"{name}.wasm", tmp_path / f"{name}.wasm")
    text = (
        f"plugins:\n{plugins}"
        f"routes:\n{routes}"
        "upstreams: {u: {targets: ['http://127.0.0.1:1']}}\n"
    )
    return filter_order_warnings(parse_config(text, source=str(tmp_path / "gateway.yaml")))


REDACTOR = "  - {name: pii_redactor, path: pii_redactor.wasm}\n"
LIMITER_ON_KEY = (
    "  - {name: rate_limiter, path: rate_limiter.wasm,"
    " config: {limit: 10, window: 1m, key: 'header:X-API-Key'}}\n"
)


def test_redactor_before_a_limiter_keyed_on_a_default_redacted_header(tmp_path):
    [warning] = warnings_for(
        tmp_path,
        REDACTOR + LIMITER_ON_KEY,
        "  - {name: api, match: {path_prefix: /}, upstream: u, filters: [pii_redactor, rate_limiter]}\n",
    )
    assert warning == (
        "routes[0].filters: warning: on route api, pii_redactor replaces header x-api-key"
        " with REDACTED before rate_limiter sees it, but rate_limiter is keyed on that header"
        " (plugins[1].config.key: header:X-API-Key), so every client gets the same key;"
        " list rate_limiter before pii_redactor"
    )


def test_limiter_first_is_fine(tmp_path):
    assert warnings_for(
        tmp_path,
        REDACTOR + LIMITER_ON_KEY,
        "  - {match: {path_prefix: /}, upstream: u, filters: [rate_limiter, pii_redactor]}\n",
    ) == []


def test_only_the_headers_the_redactor_is_configured_for(tmp_path):
    redacts_cookies = "  - {name: pii_redactor, path: pii_redactor.wasm, config: {headers: [cookie]}}\n"
    route = "  - {match: {path_prefix: /}, upstream: u, filters: [pii_redactor, rate_limiter]}\n"
    assert warnings_for(tmp_path, redacts_cookies + LIMITER_ON_KEY, route) == []
    redacts_token = (
        "  - {name: pii_redactor, path: pii_redactor.wasm, config: {headers: [' X-Token ']}}\n"
    )
    limiter_on_token = (
        "  - {name: rate_limiter, path: rate_limiter.wasm,"
        " config: {limit: 10, window: 1m, key: 'header:x-token'}}\n"
    )
    [warning] = warnings_for(tmp_path, redacts_token + limiter_on_token, route)
    assert "replaces header x-token with REDACTED" in warning


def test_a_limiter_keyed_on_the_client_address_is_fine(tmp_path):
    limiter = "  - {name: rate_limiter, path: rate_limiter.wasm, config: {limit: 10, window: 1m}}\n"
    assert warnings_for(
        tmp_path,
        REDACTOR + limiter,
        "  - {match: {path_prefix: /}, upstream: u, filters: [pii_redactor, rate_limiter]}\n",
    ) == []


def test_route_overrides_count(tmp_path):
    """A route's C{filter_config} can key the limiter on a header, or stop redacting it."""
    limiter = "  - {name: rate_limiter, path: rate_limiter.wasm, config: {limit: 10, window: 1m}}\n"
    routes = (
        "  - name: keyed\n"
        "    match: {path_prefix: /keyed}\n"
        "    upstream: u\n"
        "    filters: [pii_redactor, rate_limiter]\n"
        "    filter_config: {rate_limiter: {key: 'header:authorization'}}\n"
        "  - name: unredacted\n"
        "    match: {path_prefix: /unredacted}\n"
        "    upstream: u\n"
        "    filters: [pii_redactor, rate_limiter]\n"
        "    filter_config:\n"
        "      rate_limiter: {key: 'header:authorization'}\n"
        "      pii_redactor: {headers: [cookie]}\n"
        "  - {name: plain, match: {path_prefix: /}, upstream: u, filters: [pii_redactor, rate_limiter]}\n"
    )
    [warning] = warnings_for(tmp_path, REDACTOR + limiter, routes)
    assert warning.startswith("routes[0].filters: warning: on route keyed, pii_redactor replaces header authorization")
    assert "(routes[0].filter_config.rate_limiter.key: header:authorization)" in warning


def test_the_redactor_is_known_by_its_module_under_another_name(tmp_path):
    plugins = "  - {name: scrub, path: pii_redactor.wasm}\n" + LIMITER_ON_KEY.replace(
        "name: rate_limiter", "name: limit"
    )
    [warning] = warnings_for(
        tmp_path, plugins, "  - {name: api, match: {path_prefix: /}, upstream: u, filters: [scrub, limit]}\n"
    )
    assert "on route api, scrub replaces header x-api-key with REDACTED before limit sees it" in warning
    assert warning.endswith("list limit before scrub")


@pytest.mark.parametrize("url", ["https://plugins.example/v2/pii_redactor.wasm?v=3", "s3://bucket/pii_redactor.wasm"])
def test_the_redactor_is_known_by_its_url(tmp_path, url):
    [warning] = warnings_for(
        tmp_path,
        f"  - {{name: scrub, path: '{url}'}}\n" + LIMITER_ON_KEY,
        "  - {match: {path_prefix: /}, upstream: u, filters: [scrub, rate_limiter]}\n",
    )
    assert "scrub replaces header x-api-key" in warning


def test_another_plugin_with_a_headers_setting_is_not_a_redactor(tmp_path):
    """C{headers:} means what the plugin says: only the redactor's is known to redact."""
    shutil.copy(PLUGINS / "pii_redactor.wasm", tmp_path / "add_headers.wasm")
    plugins = "  - {name: adder, path: add_headers.wasm, config: {headers: [x-api-key]}}\n" + LIMITER_ON_KEY
    assert warnings_for(
        tmp_path, plugins, "  - {match: {path_prefix: /}, upstream: u, filters: [adder, rate_limiter]}\n"
    ) == []


def redacted_by_the_plugin(config: dict) -> set[str]:
    """The request headers the real pii_redactor.wasm replaces with REDACTED under C{config}."""
    from wasmgate.testing import run_filter
    from wasmgate.wasm.messages import Continue

    names = ["authorization", "cookie", "x-api-key", "x-token", "x-other", "set-cookie"]
    result = run_filter(PLUGINS / "pii_redactor.wasm", headers={n: "secret" for n in names}, config=config)
    assert isinstance(result, Continue)
    return {name for name, value in result.request.headers if value == "REDACTED"}


def test_the_check_knows_what_the_redactor_redacts():
    """The check's idea of the redactor is the plugin's behaviour, default and configured."""
    from wasmgate.checks import REDACTED_BY_DEFAULT

    assert redacted_by_the_plugin({}) == set(REDACTED_BY_DEFAULT)
    assert redacted_by_the_plugin({"headers": [" X-Token ", "Cookie"]}) == {"x-token", "cookie"}


def test_start_up_logs_the_warning(tmp_path, upstream, start_gateway):
    """The gateway says at start what `wasmgate check` says."""
    from twisted.logger import formatEvent, globalLogPublisher

    for name in ("pii_redactor", "rate_limiter"):
        shutil.copy(PLUGINS / f"{name}.wasm", tmp_path / f"{name}.wasm")
    text = f"""
server: {{listen: "tcp:0:interface=127.0.0.1"}}
admin: {{listen: "tcp:0:interface=127.0.0.1"}}
plugins:
{REDACTOR}{LIMITER_ON_KEY}routes:
  - {{name: api, match: {{path_prefix: /}}, filters: [pii_redactor, rate_limiter], upstream: u}}
upstreams: {{u: {{targets: ["{upstream.url}"]}}}}
"""
    logged: list[str] = []
    observer = lambda event: logged.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        start_gateway(text)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert any("routes[0].filters" in line and "x-api-key" in line.lower() for line in logged), logged
