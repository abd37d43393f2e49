# -*- test-case-name: tests.test_observability -*-
"""
Request IDs and W3C Trace Context (C{traceparent}) for the exchange core:
cheap to make on every request, and only believed from trusted proxies.
"""
from __future__ import annotations

import os
import random
import re
from typing import Optional

_REQUEST_ID = re.compile(rb"^[\x21-\x7e]{1,200}$")
_TRACEPARENT = re.compile(rb"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


class RequestIds:
    """
    Request IDs unique across processes and restarts: a random prefix per
    source and a counter (no system call per request, unlike uuid4).
    """

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._count = 0

    def next(self) -> bytes:
        self._count += 1
        return b"%s%020x" % (self._prefix.encode("ascii"), self._count)


def sane_request_id(value: Optional[bytes]) -> Optional[bytes]:
    """A client's C{X-Request-Id} when it is printable and not too long."""
    if value is not None and _REQUEST_ID.match(value):
        return value
    return None


class TraceContext:
    """A request's place in a trace: its trace, the span that sent it, and ours."""

    __slots__ = ("trace_id", "parent_id", "sampled", "tracestate", "span_id", "upstream_span_id")

    def __init__(
        self, trace_id: bytes, parent_id: Optional[bytes], sampled: bool, tracestate: Optional[bytes]
    ) -> None:
        self.trace_id = trace_id
        """32 hex digits."""
        self.parent_id = parent_id
        """The client's span (16 hex digits), None when the trace starts here."""
        self.sampled = sampled
        self.tracestate = tracestate
        self.span_id = new_span_id()
        """The gateway's server span."""
        self.upstream_span_id = new_span_id()
        """The upstream exchange's span: the parent the upstream sees."""

    def traceparent(self) -> bytes:
        """The C{traceparent} to send upstream."""
        return b"00-%s-%s-%s" % (self.trace_id, self.upstream_span_id, b"01" if self.sampled else b"00")


def new_span_id() -> bytes:
    return b"%016x" % (random.getrandbits(64) or 1)


def trace_context(
    traceparent: Optional[bytes], tracestate: Optional[bytes], *, trusted: bool, sample: float
) -> TraceContext:
    """
    The trace a request belongs to: the client's (from a trusted peer, when
    its C{traceparent} is well formed), else a new one sampled at C{sample}.
    """
    if trusted and traceparent is not None:
        match = _TRACEPARENT.match(traceparent.strip().lower())
        if match and match.group(1) != b"ff" and match.group(2) != b"0" * 32 and match.group(3) != b"0" * 16:
            sampled = bool(int(match.group(4), 16) & 1)
            return TraceContext(match.group(2), match.group(3), sampled, tracestate)
    trace_id = b"%032x" % (random.getrandbits(128) or 1)
    return TraceContext(trace_id, None, sample > 0 and random.random() < sample, None)
