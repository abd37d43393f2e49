# -*- test-case-name: tests.test_http_server -*-
"""
Bytes on the wire shared by the server and the upstream client: status
lines, header blocks, chunked framing and the Date header.
"""
from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Iterable, Optional

NO_CALLBACKS = object()
"""
What a closed connection's parser calls back: nothing. A parser holds the
methods of its protocol, which holds the parser; given a fresh parser on
this, a closed connection goes with its last reference instead of waiting
for the (rarely run) garbage collector.
"""

_PHRASES = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
_PHRASES[429] = b"Too Many Requests"


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase of C{status} (RFC 9110), or C{Unknown}."""
    return _PHRASES.get(status, b"Unknown")


def header_block(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """C{name: value} lines, each ending in CRLF."""
    return b"".join([name + b": " + value + b"\r\n" for name, value in headers])


def no_delay(transport: object) -> None:
    """
    Send small writes at once (TCP_NODELAY), as nginx does on keep-alive
    connections: an HTTP/2 stream's HEADERS and its last DATA often go out
    in different reactor turns, and Nagle would hold the second until the
    client's (delayed, ~40 ms) ACK of the first.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:  # not TCP (a UNIX socket), or already closed
            pass


def refusal_headers(request_id: str, banner: Optional[bytes]) -> list[tuple[bytes, bytes]]:
    """The headers of an error answered at the wire: its type, request ID and banner."""
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if request_id:
        headers.append((b"x-request-id", request_id.encode("latin-1")))
    if banner:
        headers.append((b"server", banner))
    return headers


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


class DateCache:
    """
    The IMF-fixdate of the current second, formatted once a second rather
    than once a response.
    """

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def value(self, now: float) -> bytes:
        second = int(now)
        if second != self._second:
            self._second = second
            self._value = formatdate(second, usegmt=True).encode("ascii")
        return self._value


def now() -> float:
    return time.time()
