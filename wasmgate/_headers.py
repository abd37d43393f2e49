# -*- test-case-name: tests.test_proxy -*-
"""
Header rules of a proxy: what is hop-by-hop, and the X-Forwarded-* set.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable, Sequence

from twisted.web.http_headers import Headers

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def end_to_end(headers: Headers, *, drop: Iterable[bytes] = ()) -> list[tuple[bytes, list[bytes]]]:
    """
    The headers of C{headers} a proxy may forward: without the hop-by-hop
    ones, those the Connection header names, C{Proxy-*}, and C{drop}.
    """
    excluded = set(HOP_BY_HOP)
    excluded.update(name.lower() for name in drop)
    for value in headers.getRawHeaders(b"connection", ()):
        excluded.update(token.strip().lower() for token in value.split(b","))
    return [
        (name, values)
        for name, values in ((n.lower(), v) for n, v in headers.getAllRawHeaders())
        if name not in excluded and not name.startswith(b"proxy-")
    ]


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def forwarded_for(
    peer: str, incoming: Sequence[bytes], trusted: Sequence[Network]
) -> tuple[str, str]:
    """
    The C{X-Forwarded-For} to send upstream and the client's address.

    An incoming X-Forwarded-For is believed only when the peer is a trusted
    proxy; then the client is the right-most address not itself trusted.
    """
    if not incoming or not _trusted(peer, trusted):
        return peer, peer
    chain = [
        part.strip()
        for value in incoming
        for part in value.decode("latin-1").split(",")
        if part.strip()
    ]
    chain.append(peer)
    client = peer
    for address in reversed(chain):
        client = address
        if not _trusted(address, trusted):
            break
    return ", ".join(chain), client


def forwarded_scheme_and_host(
    peer: str, headers: Headers, trusted: Sequence[Network], *, scheme: str, host: str
) -> tuple[str, str]:
    """
    The C{X-Forwarded-Proto} and C{X-Forwarded-Host} to send upstream.

    Behind a trusted proxy (a load balancer that terminated TLS, say) its
    values are passed on, so the application still sees C{https} and the
    name the client asked for; from anyone else they are replaced.
    """
    if _trusted(peer, trusted):
        proto = headers.getRawHeaders(b"x-forwarded-proto")
        forwarded_host = headers.getRawHeaders(b"x-forwarded-host")
        if proto:
            scheme = proto[0].decode("latin-1").split(",")[0].strip() or scheme
        if forwarded_host:
            host = forwarded_host[0].decode("latin-1").split(",")[0].strip() or host
    return scheme, host
