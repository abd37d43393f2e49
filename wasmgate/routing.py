# -*- test-case-name: tests.test_proxy -*-
"""
Which route a request takes: by host (exact, then C{*.example.com}, then
any host) and then by the longest matching path prefix.
"""
from __future__ import annotations

from typing import Generic, Optional, Sequence, TypeVar

from wasmgate.config import RouteConfig

R = TypeVar("R")


def _prefix_matches(prefix: str, path: str) -> bool:
    if not path.startswith(prefix):
        return False
    # "/api" matches "/api" and "/api/x" but not "/apix".
    return (
        len(path) == len(prefix)
        or prefix.endswith("/")
        or path[len(prefix)] in "/?"
    )


class Router(Generic[R]):
    """
    Routes looked up by host and path; C{R} is whatever the caller attached
    to each route config (the proxy attaches its compiled chain).
    """

    def __init__(self, routes: Sequence[tuple[RouteConfig, R]]) -> None:
        self._by_host: dict[Optional[str], list[tuple[RouteConfig, R]]] = {}
        for config, value in routes:
            self._by_host.setdefault(config.host, []).append((config, value))
        for entries in self._by_host.values():
            # Longest prefix first; stable for equal prefixes (config order).
            entries.sort(key=lambda entry: -len(entry[0].path_prefix))

    def match(self, host: str, path: str) -> Optional[tuple[RouteConfig, R]]:
        host = _strip_port(host.lower())
        candidates = [host]
        if "." in host:
            candidates.append("*." + host.split(".", 1)[1])
        candidates.append(None)  # type: ignore[arg-type]
        for key in candidates:
            for config, value in self._by_host.get(key, ()):
                if _prefix_matches(config.path_prefix, path):
                    return config, value
        return None


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
