# -*- test-case-name: tests.test_wasm_chain -*-
"""
A route's filters, run in order in the filter thread pool.

A request goes through a chain as a L{RequestRun}: the handle that owns
what the chain holds for it (http-wasm instances pinned from the request
phase to the response phase) and ends it with L{RequestRun.finish}. Each
phase is one hop to the filter pool (L{wasmgate.filterjobs.BatchingRunner},
the route's chain being its lane)
for the whole chain; an empty phase does not hop at all. The request is
encoded for JSON-ABI filters once, and again only after a filter changed it.

Failure model (docs/architecture.md): a trap, timeout, memory cap, state
(counter store) or load failure answers 502 under policy C{closed} and
skips the filter under C{open}; invalid output answers 500 whatever the
policy; C{busy} (every instance in use) answers 503. The answers are short
plain-text bodies naming nothing internal.

Response filters run in reverse order (the last request filter sees the
response first), the usual "onion" order of middleware.

Filters whose ABI pins an instance to a request (http-wasm) must see their
response phase or be released: when a later filter answers in the request
phase, the pinned filters before it get that answer as their response in the
same hop; when a filter fails, or the proxy never runs the response phase
(client gone, upstream error), L{RequestRun.finish} ends their pins.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

from twisted.internet.defer import Deferred, succeed

from wasmgate.wasm.abi_json import route_suffix
from wasmgate.wasm.filter import FilterFailure, Pins, WasmFilter
from wasmgate.wasm.hostfuncs import filter_request_id
from wasmgate.wasm.messages import (
    Answer,
    ChainOutcome,
    Continue,
    FilterDecision,
    FilterRequest,
    FilterResponse,
    Headers,
)

if TYPE_CHECKING:
    from wasmgate.filterjobs import BatchingRunner

_TEXT = [("content-type", "text/plain; charset=utf-8")]
_BODIES = {500: b"Internal Server Error\n", 502: b"Bad Gateway\n", 503: b"Service Unavailable\n"}


def failure_status(kind: str, policy: str) -> Optional[int]:
    """The status a failure answers with, or C{None} to skip the filter."""
    if kind == "bad_output":
        return 500
    if kind == "busy":
        return 503  # overload: neither the guest's fault nor a reason to skip it
    if policy == "open":
        return None
    return 502


def error_answer(status: int, plugin: str) -> Answer:
    return Answer(status=status, headers=list(_TEXT), body=_BODIES[status], plugin=plugin)


class FilterChain:
    """
    The filters of one route.

    @param route_config: per-plugin overrides for this route, by plugin
        name; given to the guest as C{"route_config"}.
    """

    def __init__(
        self,
        filters: Sequence[WasmFilter],
        *,
        runner: "BatchingRunner",
        route_config: Optional[Mapping[str, dict]] = None,
    ) -> None:
        self.filters = tuple(filters)
        self.runner = runner
        self._route_config = dict(route_config or {})
        self.response_filters = tuple(
            f
            for f in reversed(self.filters)
            if f.has_response_filter and (f.response_by_default or f.name in self._route_config)
        )
        self.wants_body = any(f.include_body for f in self.filters)
        """Some filter wants request/response bodies (buffered, bounded)."""
        self.has_response_filters = bool(self.response_filters)
        self.pinning = tuple(f for f in self.filters if f.pins_instances)
        # Per filter: its route_config, and for JSON-ABI filters the end of
        # the encoded payload that carries it.
        self.steps = tuple(
            (
                f,
                self._route_config.get(f.name),
                route_suffix(self._route_config.get(f.name)) if f.abi_name == "json" else None,
            )
            for f in self.filters
        )
        self.response_steps = tuple((f, self._route_config.get(f.name)) for f in self.response_filters)

    def begin(self, req: FilterRequest, *, request_id: str = "") -> "RequestRun":
        """A request starts through this chain; what its filters log names C{request_id}."""
        return RequestRun(self, req, request_id)


class RequestRun:
    """
    One request's way through a L{FilterChain}: its phases, and the
    instances the chain pins to it until L{finish}.

    The phases and L{finish} are called on the reactor thread and run in
    the filter pool; the C{*_sync} methods are the same work, blocking, for
    the calling (filter) thread.
    """

    __slots__ = ("chain", "req", "pins", "ended", "request_id")

    def __init__(self, chain: FilterChain, req: FilterRequest, request_id: str = "") -> None:
        self.chain = chain
        self.req = req
        self.request_id = request_id
        self.pins: Optional[Pins] = Pins() if chain.pinning else None
        self.ended = False

    def run_request(self) -> "Deferred[tuple[ChainOutcome, list[FilterDecision]]]":
        """Run the request phase; fires with the outcome and the decisions."""
        if not self.chain.filters:
            return succeed((Continue(self.req), []))
        return self.chain.runner.run(self.request_sync, lane=self.chain)

    def run_response(self, resp: FilterResponse) -> "Deferred[tuple[FilterResponse, list[FilterDecision]]]":
        """Run the response phase; fires with the (changed) response."""
        if not self.chain.response_filters:
            return succeed((resp, []))
        return self.chain.runner.run(self.response_sync, resp, lane=self.chain)

    def finish(self) -> "Deferred[None]":
        """
        The request is over, whatever happened (answered, response phase
        run, upstream error, client gone): instances still pinned to it run
        their guest's C{handle_response(ctx, is_error=1)} in the filter pool
        and go back to their pools; a request phase still running releases
        them itself when it ends. No hop when nothing is pinned. Idempotent.
        """
        self.ended = True
        if not self.pins:
            return succeed(None)
        # Never refused by a full queue: the instances would stay held.
        return self.chain.runner.run(self.release_sync, lane=self.chain, bounded=False)

    abandon = finish

    def release_sync(self) -> None:
        """L{finish}'s work, blocking, on the calling (filter) thread."""
        pins = self.pins
        assert pins is not None
        token = filter_request_id.set(self.request_id)
        try:
            for f in reversed(self.chain.pinning):
                f.abandon(self.req, pins)
        finally:
            filter_request_id.reset(token)

    def request_sync(self) -> tuple[ChainOutcome, list[FilterDecision]]:
        """The request phase, blocking, on the calling thread."""
        token = filter_request_id.set(self.request_id)
        try:
            outcome = self._request_phase()
        finally:
            filter_request_id.reset(token)
        if self.ended and self.pins:  # the proxy gave up on it meanwhile
            self.release_sync()
        return outcome

    def _request_phase(self) -> tuple[ChainOutcome, list[FilterDecision]]:
        decisions: list[FilterDecision] = []
        response_headers: Headers = []
        committed: Optional[FilterResponse] = None
        req = self.req
        body = req.body
        pins = self.pins
        prefixes: dict[bool, bytes] = {}
        clock = time.perf_counter
        wall = time.time
        for f, route_config, suffix in self.chain.steps:
            at = wall()
            started = clock()
            payload = None
            if suffix is not None:
                prefix = prefixes.get(f.include_body)
                if prefix is None:
                    prefix = prefixes[f.include_body] = f.abi.request_prefix(req)
                payload = prefix + suffix
            try:
                result = f.run_request(req, route_config=route_config, pins=pins, payload=payload)
            except FilterFailure as e:
                status = self._failed(f, e, started, decisions, at=at)
                if status is None:
                    continue
                return error_answer(status, f.name), decisions
            seconds = clock() - started
            if isinstance(result, Answer):
                decisions.append(FilterDecision(f.name, "answer", seconds, status=result.status, at=at))
                result.plugin = result.plugin or f.name
                if pins:
                    result = self._unwind(result, decisions)
                return result, decisions
            decisions.append(FilterDecision(f.name, "continue", seconds, at=at))
            req = self.req = result.request
            if result.changed:
                prefixes.clear()
                if req.body is not body:
                    body = req.body
                    _relength(req)
            response_headers.extend(result.response_headers)
            if result.response is not None:
                committed = result.response if committed is None else _also_committed(committed, result.response)
        return Continue(req, response_headers=response_headers, response=committed), decisions

    def response_sync(self, resp: FilterResponse) -> tuple[FilterResponse, list[FilterDecision]]:
        """The response phase, blocking, on the calling thread."""
        token = filter_request_id.set(self.request_id)
        try:
            return self._response_phase(resp)
        finally:
            filter_request_id.reset(token)

    def _response_phase(self, resp: FilterResponse) -> tuple[FilterResponse, list[FilterDecision]]:
        decisions: list[FilterDecision] = []
        req = self.req
        pins = self.pins
        for f, route_config in self.chain.response_steps:
            at = time.time()
            started = time.perf_counter()
            try:
                resp = f.run_response(req, resp, route_config=route_config, pins=pins)
            except FilterFailure as e:
                status = self._failed(f, e, started, decisions, "response", at=at)
                if status is None:
                    continue
                a = error_answer(status, f.name)
                return FilterResponse(status=a.status, headers=a.headers, body=a.body), decisions
            decisions.append(FilterDecision(f.name, "continue", time.perf_counter() - started, "response", at=at))
        return resp, decisions

    def _failed(
        self,
        f: WasmFilter,
        e: FilterFailure,
        started: float,
        decisions: list[FilterDecision],
        phase: str = "request",
        at: float = 0.0,
    ) -> Optional[int]:
        """
        Record a filter's failure; the status to answer with, or None when
        its policy (open) says to go on without it.
        """
        seconds = time.perf_counter() - started
        status = failure_status(e.kind, f.failure_policy)
        if status is None:
            decisions.append(FilterDecision(f.name, "skipped:" + e.kind, seconds, phase, at=at))
            return None
        decisions.append(FilterDecision(f.name, "failed:" + e.kind, seconds, phase, at=at))
        if self.pins:
            self.release_sync()
        return status

    def _unwind(self, answer: Answer, decisions: list[FilterDecision]) -> Answer:
        """
        A filter answered after pinned filters passed the request on: for
        them that answer is what "the next handler" produced, so they get it
        as their response phase (innermost first), as an onion would.
        """
        pins = self.pins
        assert pins is not None
        pinned = [f for f in reversed(self.chain.pinning) if pins.holds(f)]
        resp = FilterResponse(status=answer.status, headers=list(answer.headers), body=answer.body)
        req = self.req
        route_config = self.chain._route_config
        for f in pinned:
            started = time.perf_counter()
            try:
                resp = f.run_response(req, resp, route_config=route_config.get(f.name), pins=pins)
            except FilterFailure as e:
                status = self._failed(f, e, started, decisions)
                if status is None:
                    continue
                return error_answer(status, f.name)
        return Answer(
            status=resp.status, headers=resp.headers, body=resp.body or b"", plugin=answer.plugin
        )


def _relength(req: FilterRequest) -> None:
    """
    A filter replaced the body: a Content-Length the request carries says
    the new body's length, for the later filters (the proxy frames the
    upstream request itself, whatever the headers say).
    """
    if req.body is None or not any(n == "content-length" for n, _ in req.headers):
        return
    req.headers = [h for h in req.headers if h[0] != "content-length"]
    req.headers.append(("content-length", str(len(req.body))))


def _also_committed(first: FilterResponse, later: FilterResponse) -> FilterResponse:
    """
    A later filter committed a response too: as on the reference host, the
    first status stands (the response has gone out) and the later body
    follows the first.
    """
    return FilterResponse(first.status, [], (first.body or b"") + (later.body or b""))
