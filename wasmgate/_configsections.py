# -*- test-case-name: tests.test_config,tests.test_observability -*-
"""
The short sections (C{admin:}, C{state:}, C{filters:}, C{tracing:},
C{access_log:}): a handful of keys each, too small for a module apiece.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from wasmgate import _schema as s
from wasmgate._configpaths import relative_path
from wasmgate._configtypes import AdminConfig, FiltersConfig, StateConfig, TracingConfig


def read_tracing(reader: s.Reader, raw: Any) -> Optional[TracingConfig]:
    if raw is None or raw is False:
        return None
    data = reader.mapping(raw, "tracing", ("otlp_endpoint", "sample_ratio", "max_queue", "service_name", "timeout"))
    endpoint = reader.get(data, "tracing", "otlp_endpoint", s.string, "")
    if not endpoint:
        reader.problem("tracing.otlp_endpoint", "required: the OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces")
    elif urlsplit(endpoint).scheme not in ("http", "https"):
        reader.problem("tracing.otlp_endpoint", f"expected an http:// or https:// URL, got {endpoint!r}")
    ratio = reader.get(data, "tracing", "sample_ratio", _ratio, 0.01)
    return TracingConfig(
        otlp_endpoint=endpoint,
        sample_ratio=ratio,
        max_queue=reader.get(data, "tracing", "max_queue", s.integer(1, 1_000_000), 2048),
        service_name=reader.get(data, "tracing", "service_name", s.string, "wasmgate"),
        timeout=reader.get(data, "tracing", "timeout", s.duration(0.001), 5.0),
    )


def _ratio(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"expected a number from 0 to 1, got {value!r}")
    return float(value)


def read_admin(reader: s.Reader, raw: Any) -> AdminConfig:
    if raw is False:
        return AdminConfig(listen=None)
    data = reader.mapping(raw, "admin", ("listen",))
    return AdminConfig(
        listen=reader.get(data, "admin", "listen", s.string, AdminConfig.listen)
    )


def read_state(reader: s.Reader, raw: Any) -> StateConfig:
    data = reader.mapping(raw, "state", ("backend", "url", "timeout", "max_keys"))
    backend = reader.get(data, "state", "backend", s.choice("memory", "redis"), "memory")
    url = reader.get(data, "state", "url", s.string, None)
    if backend == "redis":
        if url is None:
            reader.problem("state.url", "required for the redis backend (redis://HOST:PORT/DB)")
        elif urlsplit(url).scheme not in ("redis", "rediss"):
            reader.problem("state.url", f"expected redis://HOST:PORT/DB, got {url!r}")
    return StateConfig(
        backend=backend,
        url=url,
        timeout=reader.get(data, "state", "timeout", s.duration(minimum=0.001), 0.025),
        max_keys=reader.get(data, "state", "max_keys", s.integer(minimum=1), 100_000),
    )


def read_filters(reader: s.Reader, raw: Any, base: str) -> FiltersConfig:
    data = reader.mapping(raw, "filters", ("threads", "max_queue", "epoch_tick", "cache_dir"))
    return FiltersConfig(
        threads=reader.get(data, "filters", "threads", s.integer(1, 256), 4),
        max_queue=reader.get(data, "filters", "max_queue", s.integer(1, 1_000_000), 1024),
        epoch_tick=reader.get(
            data, "filters", "epoch_tick", s.duration(minimum=0.0001), 0.005
        ),
        cache_dir=reader.get(data, "filters", "cache_dir", relative_path(base), None),
    )


def access_log_target(base: str) -> Callable[[Any], str]:
    """A converter for C{access_log:}: C{log}, C{off} (or false) or a file path."""

    def convert(value: Any) -> str:
        if value is False:
            return "off"
        text = s.string(value)
        if text in ("log", "off"):
            return text
        path = relative_path(base)(text)
        if not os.path.isdir(os.path.dirname(path)):
            raise ValueError(f"expected log, off or a file path; no directory for {path}")
        return path

    return convert
