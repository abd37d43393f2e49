# -*- test-case-name: tests.test_http_server -*-
"""
What an HTTP/1.1 request head must be before the gateway takes it on.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import httptools

from wasmgate.http._h1message import Message
from wasmgate.http.message import IncomingRequest, RequestBody

if TYPE_CHECKING:
    from wasmgate.http.factory import ServerSettings


def check_head(
    message: Message,
    parser: httptools.HttpRequestParser,
    settings: "ServerSettings",
    *,
    peer: tuple[str, int],
    secure: bool,
    server_name: str = "",
) -> Optional[tuple[int, bytes]]:
    """
    Build C{message}'s request once its head is in, or say why it is
    refused (status and text): RFC 9112's framing rules (HTTP/1.0 or 1.1
    only, exactly one Host for 1.1, chunked as the only transfer coding and
    not in 1.0, no CONNECT), C{Expect}, and the body limit.
    """
    version = parser.get_http_version()
    if version not in ("1.1", "1.0"):
        return 400, b"HTTP/0.9 requests are not supported\n"
    method = parser.get_method()
    message.version11 = version == "1.1"
    message.keep_alive = parser.should_keep_alive()
    message.head_only = method == b"HEAD"
    if method == b"CONNECT":
        return 405, b"CONNECT is not supported\n"
    headers = message.headers
    hosts = 0
    length: Optional[int] = None
    chunked = False
    upgrade = connection_upgrade = False
    for name, value in headers:
        if name == b"host":
            hosts += 1
        elif name == b"upgrade":
            upgrade = value.split(b",")[0].strip().lower().split(b"/")[0] == b"websocket"
        elif name == b"connection":
            connection_upgrade = connection_upgrade or b"upgrade" in value.lower()
        elif name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            if value.strip().lower() != b"chunked":
                return 501, b"transfer coding not supported\n"
            if not message.version11:
                return 400, b"Transfer-Encoding in an HTTP/1.0 request\n"
            chunked = True
        elif name == b"expect":
            if value.strip().lower() != b"100-continue":
                return 417, b"unsupported expectation\n"
            # (RFC 9110 10.1.1: an HTTP/1.0 client's 100-continue is ignored.)
            message.expect_continue = message.version11
    if hosts > 1 or (hosts == 0 and message.version11):
        return 400, b"a request needs exactly one Host header\n"
    if length is not None and length > settings.max_body_bytes:
        return 413, b"request body too large\n"
    if upgrade and connection_upgrade and method == b"GET" and not (chunked or length) and message.version11:
        message.upgrade = b"websocket"  # (RFC 6455 4.1; any other Upgrade is served as HTTP/1.1)
    body = None
    if chunked or length:
        body = message.body = RequestBody(message, length=length, limit=settings.max_body_bytes)
    else:
        message.expect_continue = False
    message.request = IncomingRequest(
        method=method,
        target=b"".join(message.url),
        version=b"HTTP/1.1" if message.version11 else b"HTTP/1.0",
        headers=headers,
        peer_host=peer[0],
        peer_port=peer[1],
        secure=secure,
        body=body,
        started=message.arrived,
        upgrade=message.upgrade,
        server_name=server_name,
    )
    return None
