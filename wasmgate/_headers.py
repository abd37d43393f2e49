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


FRAMING = frozenset({"content-length", "transfer-encoding"})
"""How a message's body is delimited: the gateway's to say, never a filter's."""


def from_filters(headers: Iterable[tuple[str, str]]) -> list[Header]:
    """
    Headers filters gave (for the upstream request, an answer or the
    response) as bytes, without C{Content-Length} or C{Transfer-Encoding}
    in any case: the gateway frames every body it sends itself, so a
    filter cannot make a length disagree with the body (request smuggling).
    """
    return [
        (n.encode("latin-1"), v.encode("latin-1"))
        for n, v in headers
        if n not in FRAMING and (n.islower() or n.lower() not in FRAMING)
    ]


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Forwarded:
    """The headers to send upstream, and what was learnt reading the client's."""

    __slots__ = (
        "headers", "client_ip", "scheme", "user_agent", "declared_length", "trusted",
        "request_id", "traceparent", "tracestate",
    )

    def __init__(self) -> None:
        self.headers: list[Header] = []
        self.client_ip = ""
        """After trusted-proxy handling."""
        self.scheme = "http"
        self.user_agent: Optional[bytes] = None
        self.declared_length = False
        """The client sent a Content-Length (a zero one is passed on)."""
        self.trusted = False
        """The peer is a trusted proxy."""
        self.request_id: Optional[bytes] = None
        self.traceparent: Optional[bytes] = None
        self.tracestate: Optional[bytes] = None
        """What the client sent of these (dropped here: the exchange decides)."""


def upstream_headers(
    headers: Sequence[Header],
    *,
    host: str,
    peer: str,
    secure: bool,
    trusted: Sequence[Network],
    drop: frozenset[bytes],
) -> Forwarded:
    """
    The client's end-to-end headers for the upstream, in one pass: Host
    first (C{host}: the one the request was routed by), X-Forwarded-For,
    -Proto and -Host last. C{drop} holds what is not passed on (see
    L{dropping}); it must hold the hop-by-hop names and those four, and
    the C{X-Request-Id} and trace context headers it reads for the caller.
    """
    out = Forwarded()
    sent = out.headers = [(b"host", host.encode("latin-1"))] if host else []
    xff_in: list[bytes] = []
    proto_in = host_in = None
    tokens: Optional[set[bytes]] = None
    for header in headers:
        name = header[0]
        if name in drop:
            if name == b"x-forwarded-for":
                xff_in.append(header[1])
            elif name == b"x-forwarded-proto":
                proto_in = proto_in or header[1]
            elif name == b"x-forwarded-host":
                host_in = host_in or header[1]
            elif name == b"connection":
                tokens = tokens or set()
                tokens.update(t.strip().lower() for t in header[1].split(b","))
            elif name == b"content-length":
                out.declared_length = True
            elif name == b"x-request-id":
                out.request_id = out.request_id or header[1]
            elif name == b"traceparent":
                out.traceparent = out.traceparent or header[1]
            elif name == b"tracestate":
                out.tracestate = out.tracestate or header[1]
            continue
        if name.startswith(b"proxy-"):
            continue
        if name == b"user-agent":
            out.user_agent = header[1]
        sent.append(header)
    if tokens:
        sent[:] = [h for h in sent if h[0] not in tokens]
    out.trusted = _trusted(peer, tuple(trusted))
    xff, out.client_ip = forwarded_for(peer, xff_in, trusted)
    out.scheme, forwarded_host = forwarded_scheme_and_host(
        peer, trusted, scheme="https" if secure else "http", host=host,
        incoming_proto=proto_in, incoming_host=host_in,
    )
    sent.append((b"x-forwarded-for", xff.encode("latin-1")))
    sent.append((b"x-forwarded-proto", out.scheme.encode("latin-1")))
    if forwarded_host:
        sent.append((b"x-forwarded-host", forwarded_host.encode("latin-1")))
    return out


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
