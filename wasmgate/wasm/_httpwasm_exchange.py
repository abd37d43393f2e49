# -*- test-case-name: tests.test_abi_httpwasm -*-
"""
The http-wasm ABI's request state and rules, shared by the ABI object
(L{wasmgate.wasm.abi_httpwasm}) and its host functions
(L{wasmgate.wasm._httpwasm_host}): one request's L{Exchange} from
C{handle_request} to C{handle_response}, the phase rules a host function
checks (a violation traps the guest), and guest memory access that traps
rather than raising.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from wasmgate.wasm import _raw
from wasmgate.wasm.hostfuncs import GuestFault
from wasmgate.wasm.messages import FilterRequest, FilterResponse, Headers

FEATURE_BUFFER_REQUEST = 1
FEATURE_BUFFER_RESPONSE = 2
FEATURE_TRAILERS = 4
SUPPORTED_FEATURES = FEATURE_BUFFER_REQUEST | FEATURE_BUFFER_RESPONSE

HEADER_REQUEST, HEADER_RESPONSE, TRAILER_REQUEST, TRAILER_RESPONSE = 0, 1, 2, 3
BODY_REQUEST, BODY_RESPONSE = 0, 1

U32 = 0xFFFFFFFF

TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")

INIT, REQUEST, RESPONSE = 0, 1, 2


class Exchange:
    """One request's state, from C{handle_request} to C{handle_response}."""

    __slots__ = (
        "phase",
        "req",
        "resp",
        "features",
        "req_ctx",
        "req_src",
        "req_read",
        "req_written",
        "req_tail",
        "bodies",
        "resp_src",
        "resp_read",
        "resp_written",
        "committed",
    )

    def __init__(self, req: FilterRequest, features: int, bodies: bool) -> None:
        self.phase = REQUEST
        self.req = req
        # In the request phase: the response the guest may write itself.
        self.resp = FilterResponse(status=200, headers=[], body=None)
        self.features = features
        self.req_ctx = 0
        # What read_body reads: the body as it was at the first read (a
        # write_body after that starts a new body, it does not move the
        # reader onto it).
        self.req_src: Optional[bytes] = None
        self.req_read = 0
        self.req_written = False
        # Whether req.body is what is left of req_src (a read that
        # consumes trims it; a write_body makes it a body of its own).
        self.req_tail = False
        self.bodies = bodies
        """Whether this request's bodies are buffered (features 1, 2 honoured)."""
        self.resp_src: Optional[bytes] = None
        self.resp_read = 0
        self.resp_written = False
        self.committed = False
        """The guest set the status or wrote the response body before the next handler."""

    def enter_response(self, resp: FilterResponse) -> None:
        self.phase = RESPONSE
        self.resp = resp
        self.resp_src = None
        self.resp_read = 0
        self.resp_written = False


class Current:
    """Per instance: the features enabled at start-up and the request in flight."""

    __slots__ = ("features", "ex")

    def __init__(self) -> None:
        self.features = 0
        self.ex: Optional[Exchange] = None


def need(cur: Current) -> Exchange:
    ex = cur.ex
    if ex is None:
        raise GuestFault("called outside handle_request/handle_response")
    return ex


def before_next(cur: Current, what: str) -> Exchange:
    ex = need(cur)
    if ex.phase != REQUEST:
        raise GuestFault("can't %s after the next handler" % (what,))
    return ex


def after_next_needs(ex: Exchange, feature: int, what: str) -> None:
    if ex.phase == RESPONSE and not ex.features & feature:
        raise GuestFault(
            "can't %s after the next handler unless feature %s is enabled"
            % (what, {FEATURE_BUFFER_REQUEST: "buffer_request", FEATURE_BUFFER_RESPONSE: "buffer_response"}[feature])
        )


def headers_of(ex: Exchange, kind: int) -> Optional[Headers]:
    if kind == HEADER_REQUEST:
        return ex.req.headers
    if kind == HEADER_RESPONSE:
        return ex.resp.headers
    if kind in (TRAILER_REQUEST, TRAILER_RESPONSE):
        return None  # trailers are not supported: none to read
    raise GuestFault("unknown header kind %d" % (kind,))


def mutable_headers(cur: Current, kind: int, op: str) -> tuple[Exchange, Any]:
    ex = need(cur)
    if kind == HEADER_REQUEST:
        before_next(cur, op + " a request header")
        return ex, ex.req
    if kind == HEADER_RESPONSE:
        after_next_needs(ex, FEATURE_BUFFER_RESPONSE, op + " a response header")
        return ex, ex.resp
    if kind in (TRAILER_REQUEST, TRAILER_RESPONSE):
        raise GuestFault("can't %s a trailer: this host does not support trailers" % (op,))
    raise GuestFault("unknown header kind %d" % (kind,))


def read_guest(base: int, size: int, ptr: int, length: int) -> bytes:
    try:
        return _raw.read(base, size, ptr, length)
    except IndexError as e:
        raise GuestFault(str(e)) from None


def write_guest(base: int, size: int, ptr: int, data: bytes) -> None:
    try:
        _raw.write(base, size, ptr, data)
    except IndexError as e:
        raise GuestFault(str(e)) from None


def header_name(base: int, size: int, ptr: int, length: int) -> str:
    if not length & U32:
        raise GuestFault("HTTP header name cannot be empty")
    raw = read_guest(base, size, ptr, length)
    if not TOKEN.match(raw):
        raise GuestFault("invalid header name %r" % (raw[:200],))
    return raw.decode("ascii").lower()


def header_value(base: int, size: int, ptr: int, length: int) -> str:
    raw = read_guest(base, size, ptr, length)
    if _BAD_VALUE.search(raw):
        raise GuestFault("header value contains CR, LF or NUL")
    return raw.decode("latin-1")


def put(base: int, size: int, buf: int, limit: int, data: bytes) -> int:
    """Write C{data} at C{buf} only if it fits C{limit}; its length either way."""
    n = len(data)
    if n and n <= limit & U32:
        write_guest(base, size, buf, data)
    return n


def put_list(base: int, size: int, buf: int, limit: int, items: list[bytes]) -> int:
    """NUL-terminated C{items} at C{buf} if they fit; C{count << 32 | len}."""
    if not items:
        return 0
    data = b"\0".join(items) + b"\0"
    n = len(data)
    if n <= limit & U32:
        write_guest(base, size, buf, data)
    return (len(items) << 32) | n
