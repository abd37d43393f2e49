# -*- test-case-name: tests.test_wasm_chain -*-
"""
What flows between the proxy and a filter chain.

These are plain mutable objects: the proxy builds a L{FilterRequest} on the
reactor thread, hands it to the chain (which runs in the filter pool and
may change it), and reads the outcome back. Nothing here knows about wasm.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union


Headers = list[tuple[str, str]]
"""Header pairs in order, names in lower case; a name may repeat."""


@dataclass
class FilterRequest:
    """The client's request as the filters see it (and may change it)."""

    method: str
    path: str
    query: str
    headers: Headers
    client_ip: str
    body: Optional[bytes] = None
    route: str = ""
    scheme: str = "http"
    protocol: str = "HTTP/1.1"
    """The HTTP version the client spoke."""
    source_port: int = 0
    """The client's port, when C{client_ip} is the peer's (0 behind a proxy)."""


@dataclass
class FilterResponse:
    """The upstream's response as response filters see it."""

    status: int
    headers: Headers
    body: Optional[bytes] = None


@dataclass
class Answer:
    """A filter answered the request itself; the chain stops."""

    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    plugin: str = ""


@dataclass
class Continue:
    """Go on to the upstream with C{request} (possibly changed)."""

    request: FilterRequest
    response_headers: Headers = field(default_factory=list)
    """Headers filters asked to add to the upstream's eventual response."""
    changed: bool = True
    """Whether the filter may have changed C{request} (False: a chain may
    reuse its encoding of it for the next filter)."""
    response: Optional[FilterResponse] = None
    """A response the filter committed in its request phase (an http-wasm
    guest that set the status or wrote a body before C{next=1}): the
    client gets its status and body, then the upstream's body; the
    upstream's status and headers are dropped. Headers: C{[]}."""


ChainOutcome = Union[Answer, Continue]


@dataclass
class FilterDecision:
    """One filter's part in one request, for access logs and metrics."""

    plugin: str
    outcome: str
    """C{continue}, C{answer}, or C{skipped:<kind>} / C{failed:<kind>} where
    kind is one of trap, timeout, oom, bad_output, load, state, busy, error."""
    seconds: float = 0.0
    phase: str = "request"
    """C{request} or C{response}."""
    status: int = 0
    """The status of an C{answer}."""
    at: float = 0.0
    """When the call started (Unix time), for trace spans."""
