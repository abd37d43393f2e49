# -*- test-case-name: tests.test_cli -*-
"""
What C{wasmgate --version} and C{twistd wasmgate --version} print: a bug
report needs the versions of the parts that run filters and serve HTTP, not
only wasmgate's.
"""
from __future__ import annotations

import platform
from importlib import metadata

_DISTRIBUTIONS = (
    ("wasmgate", "wasmgate"),
    ("wasmtime", "wasmtime"),
    ("Twisted", "twisted"),
    ("httptools", "httptools"),
)
"""(what to call it, its distribution name) in the order they are printed."""


def distribution_version(name: str) -> str:
    """The installed version of distribution C{name}, or why there is none."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def version_report() -> str:
    """One line per component, wasmgate's first: C{wasmgate 0.1.0} and so on."""
    lines = [f"{label} {distribution_version(name)}" for label, name in _DISTRIBUTIONS]
    lines.append(f"Python {platform.python_version()} ({platform.python_implementation()})")
    return "\n".join(lines)
