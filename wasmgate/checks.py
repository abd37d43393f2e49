# -*- test-case-name: tests.test_cli -*-
"""
The checks C{wasmgate check} runs beyond the schema: certificates load and
match their keys, plugins compile and speak an ABI the gateway knows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from wasmgate.config import GatewayConfig


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
    return report
