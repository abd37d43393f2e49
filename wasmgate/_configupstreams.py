# -*- test-case-name: tests.test_config,tests.test_health -*-
"""
The C{upstreams:} section: targets, balancing, ejection, retries and the
active health check of each upstream.
"""
from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

from wasmgate import _schema as s
from wasmgate._configpaths import relative_path
from wasmgate._configtypes import HealthCheckConfig, UpstreamConfig

_UPSTREAM_KEYS = (
    "targets",
    "lb",
    "health_check",
    "ca_file",
    "insecure_skip_verify",
    "max_connections_per_target",
    "eject_after_failures",
    "eject_for",
    "retry_methods",
)


def _target(value: Any) -> str:
    text = s.string(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected http://HOST:PORT or https://HOST:PORT, got {text!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"a target is scheme://host:port only, got {text!r}")
    return f"{parts.scheme}://{parts.netloc}"


def read_upstreams(
    reader: s.Reader, raw: Any, base: str
) -> dict[str, UpstreamConfig]:
    if not isinstance(raw, dict) or not raw:
        reader.problem("upstreams", "expected a mapping of upstream names to {targets: [...]}")
        return {}
    upstreams: dict[str, UpstreamConfig] = {}
    for name, entry in raw.items():
        where = f"upstreams.{name}"
        data = reader.mapping(entry, where, _UPSTREAM_KEYS)
        raw_targets = data.get("targets")
        if not isinstance(raw_targets, list) or not raw_targets:
            reader.problem(f"{where}.targets", "expected a non-empty list of http(s)://HOST:PORT")
            raw_targets = []
        targets = []
        for i, item in enumerate(raw_targets):
            try:
                targets.append(_target(item))
            except ValueError as e:
                reader.problem(f"{where}.targets[{i}]", str(e))
        check = None
        if data.get("health_check") is not None:
            check = _health_check(reader, data["health_check"], f"{where}.health_check")
        ca_file = reader.get(data, where, "ca_file", relative_path(base), None)
        if ca_file and not os.access(ca_file, os.R_OK):
            reader.problem(f"{where}.ca_file", f"cannot read {ca_file}")
        upstreams[str(name)] = UpstreamConfig(
            name=str(name),
            targets=tuple(targets),
            lb=reader.get(
                data, where, "lb", s.choice("round_robin", "least_requests", "ip_hash"), "round_robin"
            ),
            health_check=check,
            ca_file=ca_file,
            insecure_skip_verify=reader.get(data, where, "insecure_skip_verify", s.boolean, False),
            max_connections_per_target=reader.get(
                data, where, "max_connections_per_target", s.integer(1, 100_000), None
            ),
            eject_after_failures=reader.get(
                data, where, "eject_after_failures", s.integer(minimum=1), 5
            ),
            eject_for=reader.get(data, where, "eject_for", s.duration(), 10.0),
            retry_methods=tuple(
                m.upper()
                for m in reader.get(
                    data, where, "retry_methods", s.string_list, ("GET", "HEAD", "OPTIONS")
                )
            ),
        )
    return upstreams


def _status_range(value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    else:
        match = re.match(r"^\s*(\d{3})\s*-\s*(\d{3})\s*$", str(value))
        if not match:
            raise ValueError(f"expected a status like 200 or a range like 200-399, got {value!r}")
        low, high = int(match.group(1)), int(match.group(2))
    if not 100 <= low <= high <= 599:
        raise ValueError(f"expected statuses between 100 and 599, got {value!r}")
    return (low, high)


def _health_check(reader: s.Reader, raw: Any, where: str) -> HealthCheckConfig:
    data = reader.mapping(
        raw,
        where,
        ("path", "interval", "timeout", "healthy_threshold", "unhealthy_threshold", "expect_status"),
    )
    path = reader.get(data, where, "path", s.string, "/health")
    if not path.startswith("/"):
        reader.problem(f"{where}.path", f"must start with '/', got {path!r}")
    return HealthCheckConfig(
        path=path,
        interval=reader.get(data, where, "interval", s.duration(minimum=0.05), 10.0),
        timeout=reader.get(data, where, "timeout", s.duration(minimum=0.01), 2.0),
        healthy_threshold=reader.get(data, where, "healthy_threshold", s.integer(1, 100), 2),
        unhealthy_threshold=reader.get(data, where, "unhealthy_threshold", s.integer(1, 100), 3),
        expect_status=reader.get(data, where, "expect_status", _status_range, (200, 399)),
    )
