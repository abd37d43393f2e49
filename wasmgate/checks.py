# -*- test-case-name: tests.test_cli -*-
"""
The checks C{wasmgate check} runs beyond the schema: certificates load and
match their keys, plugins compile and speak an ABI the gateway knows, and
filters on a route do not undo each other.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

from wasmgate.config import GatewayConfig, PluginConfig, RouteConfig


@dataclass
class CheckReport:
    """
    C{problems} keep the gateway from starting; C{warnings} (a certificate
    that has expired, say) do not, but someone should act on them.  Each
    starts with the config key it is about.
    """

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def deep_check(config: GatewayConfig) -> CheckReport:
    """What loading everything the config points at finds."""
    report = CheckReport()
    if config.server.tls is not None:
        from wasmgate.tls import certificate_specs, check_certificates

        tls = check_certificates(certificate_specs(config.server.tls))
        report.problems.extend(f"server.tls: {p}" for p in tls.problems)
        report.warnings.extend(
            f"server.tls.certificates[{w.index}].cert: warning: {w.problem}; "
            f"it is served anyway, but clients that check dates will refuse it"
            for w in tls.warnings
        )
    for name, upstream in config.upstreams.items():
        if upstream.ca_file and not upstream.insecure_skip_verify:
            from wasmgate._tlsfiles import load_ca_certificates

            try:
                load_ca_certificates(upstream.ca_file)
            except ValueError as e:
                report.problems.append(f"upstreams.{name}.ca_file: {e}")
    if config.plugins:
        from wasmgate.wasm.runtime import check_plugins

        report.problems.extend(check_plugins(config))
    report.warnings.extend(filter_order_warnings(config))
    return report


REDACTOR_MODULE = "pii_redactor"
"""The bundled redactor, known by its plugin name or its module's file name."""

REDACTED_BY_DEFAULT = ("authorization", "cookie", "x-api-key")
"""The request headers C{pii_redactor} redacts when its config names none."""


def filter_order_warnings(config: GatewayConfig) -> list[str]:
    """
    Filters that key on a request header (C{key: header:NAME}, as the rate
    limiter does) placed after a filter that redacts that header on the same
    route: they see C{REDACTED} in every request, so all clients share one
    key (one rate-limit bucket). Each plugin's config is taken with the
    route's C{filter_config} override merged over it, as the plugins do.

    Redaction is known from the bundled C{pii_redactor} (a plugin with that
    name or module file name): its C{headers:} list, by default
    authorization, cookie and x-api-key. C{wasmgate check} prints these and
    the gateway logs them at start; neither refuses the config.
    """
    warnings = []
    for i, route in enumerate(config.routes):
        redacted: dict[str, str] = {}  # header -> the first filter on the route that redacts it
        for name in route.filters:
            try:
                plugin = config.plugin(name)
            except KeyError:  # the schema check reports it
                continue
            settings = _route_settings(plugin, route)
            header = _key_header(settings)
            if header is not None and header in redacted:
                where = (
                    f"routes[{i}].filter_config.{name}.key"
                    if "key" in route.filter_config.get(name, {})
                    else f"plugins[{config.plugins.index(plugin)}].config.key"
                )
                redactor = redacted[header]
                warnings.append(
                    f"routes[{i}].filters: warning: on route {route.name}, {redactor} replaces"
                    f" header {header} with REDACTED before {name} sees it, but {name} is keyed"
                    f" on that header ({where}: {settings['key']}), so every client gets the same"
                    f" key; list {name} before {redactor}"
                )
            for redacted_header in _redacted_headers(plugin, settings):
                redacted.setdefault(redacted_header, name)
    return warnings


def _route_settings(plugin: PluginConfig, route: RouteConfig) -> Mapping[str, Any]:
    """The plugin's config with the route's override set over it (a shallow merge)."""
    override = route.filter_config.get(plugin.name)
    if not override:
        return plugin.config
    return {**plugin.config, **override}


def _key_header(settings: Mapping[str, Any]) -> Optional[str]:
    """The header a C{key: header:NAME} setting keys on, as the rate limiter reads it."""
    key = settings.get("key")
    if isinstance(key, str) and key.startswith("header:") and key[7:].strip():
        return key[7:].strip().lower()
    return None


def _redacted_headers(plugin: PluginConfig, settings: Mapping[str, Any]) -> tuple[str, ...]:
    """The request headers the plugin replaces with C{REDACTED} (none if it is no redactor)."""
    if REDACTOR_MODULE not in (plugin.name, _module_name(plugin.path)):
        return ()
    if "headers" not in settings:
        return REDACTED_BY_DEFAULT
    names = settings["headers"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return ()  # the plugin refuses such a config: a problem, reported as one
    return tuple(n.strip().lower() for n in names)


def _module_name(path: str) -> str:
    """C{pii_redactor} for C{/x/pii_redactor.wasm} or C{s3://b/pii_redactor.wasm?...}."""
    if "://" in path:
        path = urlsplit(path).path
    name = posixpath.basename(path)
    return name[: -len(".wasm")] if name.endswith(".wasm") else name
