# -*- test-case-name: tests.test_proxy -*-
"""
Header rules of a proxy: what is hop-by-hop, and the X-Forwarded-* set.

Headers are lists of C{(name, value)} byte pairs with lower-case names,
in their order, as the wire protocols deliver them.
"""
from __future__ import annotations

import functools
import ipaddress
from typing import Iterable, Optional, Sequence

Header = tuple[bytes, bytes]

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


def dropping(*names: bytes) -> frozenset[bytes]:
    """The hop-by-hop names and C{names}: a C{drop} set for L{end_to_end}."""
    return HOP_BY_HOP | frozenset(names)


def connection_tokens(headers: Iterable[Header]) -> Optional[set[bytes]]:
    """The names the Connection header lists (hop-by-hop too), or None."""
    tokens: Optional[set[bytes]] = None
    for name, value in headers:
        if name == b"connection":
            if tokens is None:
                tokens = set()
            tokens.update(token.strip().lower() for token in value.split(b","))
    return tokens


def end_to_end(headers: Sequence[Header], drop: frozenset[bytes]) -> list[Header]:
    """
    The headers a proxy may forward: without C{drop} (which holds the
    hop-by-hop names, see L{dropping}), those the Connection header names,
    and C{Proxy-*}.
    """
    tokens = connection_tokens(headers)
    if tokens is None:
        return [h for h in headers if h[0] not in drop and not h[0].startswith(b"proxy-")]
    return [
        h for h in headers
        if h[0] not in drop and h[0] not in tokens and not h[0].startswith(b"proxy-")
    ]


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=4096)
def _trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    if not trusted:
        return False
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
    trusted = tuple(trusted)
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
    peer: str,
    trusted: Sequence[Network],
    *,
    scheme: str,
    host: str,
    incoming_proto: Optional[bytes],
    incoming_host: Optional[bytes],
) -> tuple[str, str]:
    """
    The C{X-Forwarded-Proto} and C{X-Forwarded-Host} to send upstream.

    Behind a trusted proxy (a load balancer that terminated TLS, say) its
    values are passed on, so the application still sees C{https} and the
    name the client asked for; from anyone else they are replaced.
    """
    if (incoming_proto or incoming_host) and _trusted(peer, tuple(trusted)):
        if incoming_proto:
            scheme = incoming_proto.decode("latin-1").split(",")[0].strip() or scheme
        if incoming_host:
            host = incoming_host.decode("latin-1").split(",")[0].strip() or host
    return scheme, host
