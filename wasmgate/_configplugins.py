# -*- test-case-name: tests.test_config,tests.test_gateway_sources -*-
"""
The C{plugins:} section: where each module comes from, its pin, its limits
and the configuration its guest reads.
"""
from __future__ import annotations

import base64
import binascii
import os
import re
from typing import Any, Callable, Mapping, Optional
from urllib.parse import urlsplit

from wasmgate import _schema as s
from wasmgate._configpaths import relative_path
from wasmgate._configtypes import PluginConfig

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_SHA256 = re.compile(r"^(sha256:)?[0-9a-fA-F]{64}$")


_PLUGIN_KEYS = (
    "name",
    "path",
    "sha256",
    "timeout_ms",
    "memory_limit_mb",
    "failure_policy",
    "fuel",
    "reload_interval",
    "include_body",
    "max_instances",
    "config",
    "config_raw",
    "config_base64",
    "export",
)


def _plugin_source(base: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = s.string(value)
        scheme = urlsplit(text).scheme
        if scheme in ("https", "s3"):
            return text
        if scheme in ("http", "ftp"):
            raise ValueError(f"plugins are fetched over https:// or s3:// only, got {text!r}")
        return relative_path(base)(text)

    return convert


def _sha256(value: Any) -> str:
    text = s.string(value)
    if not _SHA256.match(text):
        raise ValueError("expected 64 hex digits, optionally prefixed by 'sha256:'")
    return text.split(":")[-1].lower()


def read_plugins(reader: s.Reader, raw: Any, base: str) -> list[PluginConfig]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        reader.problem("plugins", "expected a list of plugins")
        return []
    plugins: list[PluginConfig] = []
    names: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"plugins[{i}]"
        data = reader.mapping(entry, where, _PLUGIN_KEYS)
        name = reader.get(data, where, "name", s.string, "")
        if name and not _NAME.match(name):
            reader.problem(f"{where}.name", "use letters, digits, '_', '-' and '.' only")
        if name in names:
            reader.problem(f"{where}.name", f"a plugin named {name!r} is defined twice")
        names.add(name)
        source = reader.get(data, where, "path", _plugin_source(base), "")
        if source and "://" not in source and not os.path.isfile(source):
            reader.problem(f"{where}.path", f"no such file: {source}")
        plugins.append(
            PluginConfig(
                name=name,
                path=source,
                sha256=reader.get(data, where, "sha256", _sha256, None),
                timeout_ms=reader.get(data, where, "timeout_ms", s.integer(1, 60_000), 50),
                memory_limit_mb=reader.get(
                    data, where, "memory_limit_mb", s.integer(1, 4096), 16
                ),
                failure_policy=reader.get(
                    data, where, "failure_policy", s.choice("closed", "open"), "closed"
                ),
                fuel=reader.get(data, where, "fuel", s.integer(minimum=1), None),
                reload_interval=reader.get(
                    data, where, "reload_interval", s.duration(minimum=0.1), None
                ),
                include_body=reader.get(data, where, "include_body", s.boolean, False),
                max_instances=reader.get(data, where, "max_instances", s.integer(1, 100_000), 256),
                config=reader.get(data, where, "config", s.any_mapping, {}),
                config_bytes=_config_bytes(reader, data, where),
                export=reader.get(data, where, "export", s.string, "handler"),
            )
        )
    return plugins


def _config_bytes(reader: s.Reader, data: Mapping[str, Any], where: str) -> Optional[bytes]:
    """C{config_raw} or C{config_base64}: at most one of them, and not with C{config}."""
    given = [key for key in ("config", "config_raw", "config_base64") if data.get(key) is not None]
    if len(given) > 1:
        reader.problem(f"{where}.{given[1]}", f"give only one of {', '.join(given)}")
        return None
    raw = reader.get(data, where, "config_raw", s.string, None)
    if raw is not None:
        return raw.encode("utf-8")
    encoded = reader.get(data, where, "config_base64", s.string, None)
    if encoded is None:
        return None
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        reader.problem(f"{where}.config_base64", "not valid base64")
        return None
