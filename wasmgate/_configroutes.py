# -*- test-case-name: tests.test_config,tests.test_checks_order -*-
"""
The C{routes:} section: what each route matches and the filters and
upstream it sends to, checked against the plugins and upstreams defined.
"""
from __future__ import annotations

from typing import Any, Mapping

from wasmgate import _schema as s
from wasmgate._configtypes import PluginConfig, RouteConfig, UpstreamConfig

_ROUTE_KEYS = ("name", "match", "filters", "upstream", "timeout", "filter_config", "websocket")


def read_routes(
    reader: s.Reader,
    raw: Any,
    plugins: list[PluginConfig],
    upstreams: Mapping[str, UpstreamConfig],
) -> list[RouteConfig]:
    if not isinstance(raw, list) or not raw:
        reader.problem("routes", "expected a non-empty list of routes")
        return []
    plugin_names = [p.name for p in plugins]
    routes: list[RouteConfig] = []
    for i, entry in enumerate(raw):
        where = f"routes[{i}]"
        data = reader.mapping(entry, where, _ROUTE_KEYS)
        match = reader.mapping(data.get("match"), f"{where}.match", ("host", "path_prefix"))
        prefix = reader.get(match, f"{where}.match", "path_prefix", s.string, "/")
        if prefix and not prefix.startswith("/"):
            reader.problem(f"{where}.match.path_prefix", f"must start with '/', got {prefix!r}")
        host = reader.get(match, f"{where}.match", "host", s.string, None)
        host = host.lower() if host else None
        filters = reader.get(data, where, "filters", s.string_list, ())
        for j, name in enumerate(filters):
            if name not in plugin_names:
                reader.problem(
                    f"{where}.filters[{j}]",
                    f"no plugin named {name!r}{s.did_you_mean(name, plugin_names)}",
                )
        upstream = reader.get(data, where, "upstream", s.string) or ""
        if upstream and upstream not in upstreams:
            known = list(upstreams)
            reader.problem(
                f"{where}.upstream",
                f"no upstream named {upstream!r}{s.did_you_mean(upstream, known)}",
            )
        overrides = reader.get(data, where, "filter_config", s.any_mapping, {})
        for name, value in overrides.items():
            if name not in filters:
                reader.problem(
                    f"{where}.filter_config.{name}",
                    "configures a filter this route does not use",
                )
            elif not isinstance(value, dict):
                reader.problem(f"{where}.filter_config.{name}", "expected a mapping")
        default_name = f"{host or '*'}{prefix}"
        routes.append(
            RouteConfig(
                name=reader.get(data, where, "name", s.string, default_name),
                path_prefix=prefix or "/",
                host=host,
                filters=filters,
                upstream=upstream,
                timeout=reader.get(data, where, "timeout", s.duration(minimum=0.001), None),
                filter_config=overrides,
                websocket=reader.get(data, where, "websocket", s.boolean, True),
            )
        )
    return routes
