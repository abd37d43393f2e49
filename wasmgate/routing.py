# -*- test-case-name: tests.test_proxy -*-
"""
Which route a request takes: by host (exact, then C{*.example.com}, then
any host) and then by the longest matching path prefix.
"""
from __future__ import annotations

import re
from typing import Generic, Optional, Sequence, TypeVar
from urllib.parse import urlsplit

from wasmgate.config import RouteConfig

R = TypeVar("R")

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%(..)?")
_REFUSED_ESCAPES = {
    "2F": "an encoded '/'",
    "5C": "an encoded '\\'",
    "00": "an encoded NUL",
    "3B": "an encoded ';'",  # a path parameter to some servers, a character to others
}


class BadPath(ValueError):
    """A request path the gateway refuses (400) rather than guess at."""


class BadTarget(ValueError):
    """A request target the gateway refuses (400)."""


def split_target(target: bytes, host_header: Optional[bytes]) -> tuple[str, str, str]:
    """
    The host, raw path and query a request is for: one source of truth for
    routing, filters, logs and the upstream request.

    An origin-form target (C{/path?query}) is for the C{Host} header's
    host; an absolute-form one (C{http://host/path}) names its own, which
    replaces C{Host} (RFC 9112 3.2.2). A fragment is never part of a
    request target: routed one way and forwarded another, it would walk
    around a route's filters, so it is refused, as Envoy does.

    @raise BadTarget: for a fragment, or any other form of target.
    """
    text = target.decode("latin-1")
    if "#" in text:
        raise BadTarget("a fragment ('#') is not part of a request target")
    if text.startswith("/"):
        path, _, query = text.partition("?")
        return (host_header.decode("latin-1") if host_header else ""), path, query
    scheme = text[:8].lower()
    if scheme.startswith(("http://", "https://")):
        parts = urlsplit(text)
        if not parts.netloc or "@" in parts.netloc:
            raise BadTarget("an absolute-form target needs a host (and no user info)")
        return parts.netloc, parts.path or "/", parts.query
    raise BadTarget("expected /path or http://host/path")


def normalize_path(raw: str) -> str:
    """
    The path a request is routed by, given to filters and sent upstream.

    One spelling per resource, so that a route's filters cannot be walked
    around: C{%61dmin}, C{/x/../admin} and C{//admin} all become C{/admin}.
    Escapes of unreserved characters are decoded (RFC 3986 6.2.2.2), other
    escapes get upper-case hex, runs of C{/} become one, and C{.} and C{..}
    segments are resolved (5.2.4).

    @raise BadPath: for a path that is not absolute, has a malformed escape,
        climbs above the root, or encodes C{/}, C{\\} or NUL (which an
        upstream might decode into a different path than the one routed).
    """
    if not raw.startswith("/"):
        raise BadPath("the path must start with '/'")
    if "%" not in raw and "//" not in raw and "/." not in raw:
        return raw  # already normal: the common case, kept cheap

    def unescape(m: "re.Match[str]") -> str:
        hexdigits = m.group(1)
        if hexdigits is None or not all(c in "0123456789abcdefABCDEF" for c in hexdigits):
            raise BadPath("malformed percent-escape")
        hexdigits = hexdigits.upper()
        if hexdigits in _REFUSED_ESCAPES:
            raise BadPath("the path contains %s" % (_REFUSED_ESCAPES[hexdigits],))
        byte = int(hexdigits, 16)
        return chr(byte) if byte in _UNRESERVED else "%" + hexdigits

    path = _ESCAPE.sub(unescape, raw) if "%" in raw else raw
    segments = path.split("/")
    out: list[str] = []
    for segment in segments[1:]:
        if segment == "..":
            if not out:
                raise BadPath("the path climbs above the root")
            out.pop()
        elif segment not in (".", ""):
            out.append(segment)
    # "/a/", "/a/." and "/a/b/.." name a directory: keep its trailing slash.
    trailing = bool(out) and segments[-1] in ("", ".", "..")
    return "/" + "/".join(out) + ("/" if trailing else "")


def without_params(path: str) -> str:
    """
    C{path} with each segment's C{;parameters} dropped: what a route's
    prefix is matched against. Tomcat and Spring serve C{/admin;x/y} as
    C{/admin/y}, so it must take the C{/admin} route and its filters.
    """
    if ";" not in path:
        return path
    return "/".join(segment.split(";", 1)[0] for segment in path.split("/"))


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
        self._any_host = self._by_host.get(None, [])
        self._host_routes = any(host is not None for host in self._by_host)

    def match(self, host: str, path: str) -> Optional[tuple[RouteConfig, R]]:
        """
        The route for C{host} (any case, a port or a trailing dot ignored)
        and C{path} (a normalised one; C{;parameters} ignored).
        """
        path = without_params(path)
        if self._host_routes:
            host = _strip_port(host.lower()).rstrip(".")
            keys = [host]
            if "." in host:
                keys.append("*." + host.split(".", 1)[1])
            for key in keys:
                for config, value in self._by_host.get(key, ()):
                    if _prefix_matches(config.path_prefix, path):
                        return config, value
        for config, value in self._any_host:
            if _prefix_matches(config.path_prefix, path):
                return config, value
        return None


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
