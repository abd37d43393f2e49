# -*- test-case-name: tests.test_cli -*-
"""
The checks C{wasmgate check} runs beyond the schema: certificates load and
match their keys, plugins compile and speak an ABI the gateway knows.
"""
from __future__ import annotations

from wasmgate.config import GatewayConfig


def deep_check(config: GatewayConfig) -> list[str]:
    """Problems found by loading what the config points at (empty: fine)."""
    problems: list[str] = []
    if config.server.tls is not None:
        from wasmgate.tls import certificate_specs, validate_certificates

        problems.extend(
            f"server.tls: {p}" for p in validate_certificates(certificate_specs(config.server.tls))
        )
    if config.plugins:
        from wasmgate.wasm.runtime import check_plugins

        problems.extend(check_plugins(config))
    return problems
