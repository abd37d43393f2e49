# -*- test-case-name: tests.test_config -*-
"""
File paths in gateway.yaml: relative ones are taken from the config file's
directory, and fetched plugins get a cache directory even when none is set.

Shared by several sections (server.tls, filters, plugins, upstreams,
access_log), so it lives on its own.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from wasmgate import _schema as s


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> str:
    """
    Where fetched plugins and compiled modules go when C{filters.cache_dir}
    is not set: systemd's C{CacheDirectory=} (C{$CACHE_DIRECTORY}), else
    C{$XDG_CACHE_HOME/wasmgate}, else C{~/.cache/wasmgate}.
    """
    systemd = environ.get("CACHE_DIRECTORY", "").split(":")[0]
    if systemd:
        return systemd
    xdg = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "wasmgate")


def relative_path(base: str) -> Callable[[Any], str]:
    """A converter for a file path: relative ones are taken from C{base}."""

    def convert(value: Any) -> str:
        return os.path.normpath(os.path.join(base, s.string(value)))

    return convert
