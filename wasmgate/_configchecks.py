# -*- test-case-name: tests.test_config -*-
"""
Checks that span sections (TLS against listeners, filter deadlines against
the state and write timeouts): run once every section has been read.
"""
from __future__ import annotations

from wasmgate import _schema as s
from wasmgate._configtypes import PluginConfig, ServerConfig, StateConfig


def cross_checks(
    reader: s.Reader, server: ServerConfig, plugins: list[PluginConfig], state: StateConfig
) -> None:
    if server.tls is not None:
        for i, description in enumerate(server.listen):
            if not description.startswith(("tcp:", "tcp6:", "systemd:")):
                reader.problem(
                    f"server.listen[{i}]",
                    f"{description!r}: with a server.tls section, listen on tcp:PORT"
                    " (the section adds TLS); an ssl: endpoint brings its own certificate",
                )
    write_ms = server.timeouts.write * 1000
    for i, plugin in enumerate(plugins):
        if state.backend == "redis" and state.timeout * 1000 >= plugin.timeout_ms:
            reader.problem(
                f"plugins[{i}].timeout_ms",
                f"{plugin.timeout_ms} ms is not above state.timeout ({state.timeout * 1000:g} ms):"
                " a filter waits for Redis inside its own deadline",
            )
        if plugin.timeout_ms >= write_ms:
            reader.problem(
                f"plugins[{i}].timeout_ms",
                f"{plugin.timeout_ms} ms is not below server.timeouts.write"
                f" ({write_ms:g} ms): a stuck filter would outlive the client",
            )
