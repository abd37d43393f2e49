"""
HTTP/1.1 on a raw socket, for tests that check the bytes on the wire:
one request per connection, and a reader of what comes back (or of what
a recording upstream got).
"""
from __future__ import annotations

import socket

from tests.conftest import read_until_closed

Headers = list[tuple[bytes, bytes]]


def exchange(port: int, request: bytes) -> bytes:
    """Send C{request} (it should say C{Connection: close}); everything until the gateway closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        return read_until_closed(sock)


def split(raw: bytes) -> tuple[bytes, Headers, bytes]:
    """The start line, the headers (names in lower case) and the bytes after the head."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, raw
    first, *lines = head.split(b"\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    return first, headers, rest


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


def dechunk(data: bytes) -> bytes:
    """A whole chunked body (no trailers) decoded; its end must be there."""
    out = []
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            assert data == b"\r\n", data
            return b"".join(out)
        out.append(data[:size])
        assert data[size : size + 2] == b"\r\n"
        data = data[size + 2 :]


def response(raw: bytes) -> tuple[int, Headers, bytes]:
    """Status, headers and body of one response (Content-Length, chunked or until close)."""
    first, headers, rest = split(raw)
    status = int(first.split()[1])
    if values(headers, b"transfer-encoding") == [b"chunked"]:
        return status, headers, dechunk(rest)
    lengths = values(headers, b"content-length")
    if lengths:
        assert len(lengths) == 1, headers
        assert len(rest) == int(lengths[0]), (lengths, rest)
    return status, headers, rest
