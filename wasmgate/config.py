# -*- test-case-name: tests.test_config -*-
"""
gateway.yaml, loaded and validated into frozen dataclasses.

Every mistake is reported at once, each naming the file, the key path
(C{routes[2].upstream}) and what is wrong, so an operator fixes a config in
one round instead of one error per restart.

This module reads the document and puts the sections together; the
dataclasses are in L{wasmgate._configtypes}, each section's reader in a
C{wasmgate._config*} module of its own. Every public name stays importable
from here.
"""
from __future__ import annotations

import os
from dataclasses import replace

import yaml

from wasmgate import _schema as s
from wasmgate._configchecks import cross_checks
from wasmgate._configpaths import default_cache_dir
from wasmgate._configplugins import read_plugins
from wasmgate._configroutes import read_routes
from wasmgate._configsections import (
    access_log_target,
    read_admin,
    read_filters,
    read_state,
    read_tracing,
)
from wasmgate._configserver import read_server
from wasmgate._configtypes import (
    AdminConfig,
    CertificateConfig,
    ConfigError,
    FiltersConfig,
    GatewayConfig,
    HealthCheckConfig,
    Network,
    PluginConfig,
    RouteConfig,
    ServerConfig,
    StateConfig,
    Timeouts,
    TLSConfig,
    TracingConfig,
    UpstreamConfig,
)
from wasmgate._configupstreams import read_upstreams

__all__ = [
    "AdminConfig",
    "CertificateConfig",
    "ConfigError",
    "FiltersConfig",
    "GatewayConfig",
    "HealthCheckConfig",
    "Network",
    "PluginConfig",
    "RouteConfig",
    "ServerConfig",
    "StateConfig",
    "Timeouts",
    "TLSConfig",
    "TracingConfig",
    "UpstreamConfig",
    "default_cache_dir",
    "load_config",
    "parse_config",
]

_TOP = ("server", "admin", "access_log", "state", "filters", "plugins", "routes", "upstreams", "tracing")


def load_config(path: str) -> GatewayConfig:
    """
    Read and validate C{path}.

    @raise ConfigError: listing every problem found.
    """
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, [f"cannot read the config file: {e.strerror}"])
    return parse_config(text, source=path)


def parse_config(text: bytes | str, *, source: str) -> GatewayConfig:
    """
    Validate a YAML document; relative file paths in it are taken from the
    directory of C{source}.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(source, [f"{where}YAML syntax error: {problem}"])
    base = os.path.dirname(os.path.abspath(source))
    reader = s.Reader()
    if document is None:
        document = {}
    top = reader.mapping(document, "", _TOP)
    server = read_server(reader, top.get("server"), base)
    admin = read_admin(reader, top.get("admin"))
    state = read_state(reader, top.get("state"))
    filters = read_filters(reader, top.get("filters"), base)
    plugins = read_plugins(reader, top.get("plugins"), base)
    upstreams = read_upstreams(reader, top.get("upstreams"), base)
    routes = read_routes(reader, top.get("routes"), plugins, upstreams)
    access_log = reader.get(top, "", "access_log", access_log_target(base), "log")
    tracing = read_tracing(reader, top.get("tracing"))
    cross_checks(reader, server, plugins, state)
    if reader.problems:
        raise ConfigError(source, reader.problems)
    if filters.cache_dir is None and any("://" in p.path for p in plugins):
        # Plugins fetched from a URL must survive a restart without the
        # network: they get a cache even when none was configured.
        filters = replace(filters, cache_dir=default_cache_dir())
    return GatewayConfig(
        source=os.path.abspath(source),
        server=server,
        admin=admin,
        state=state,
        filters=filters,
        plugins=tuple(plugins),
        routes=tuple(routes),
        upstreams=upstreams,
        access_log=access_log,
        tracing=tracing,
    )
