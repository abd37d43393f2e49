# -*- test-case-name: tests.test_wasm_chain -*-
"""
A route's filters, run in order in the filter thread pool.

Each phase is one C{deferToThreadPool}: a thread hop costs about as much as
several raw wasm calls, so all filters of a phase run in the same hop. An
empty phase does not hop at all.

Failure model (DESIGN.md): a trap, timeout, memory cap, state (counter
store) or load failure answers 502 under policy C{closed} and skips the
filter under C{open}; invalid output answers 500 whatever the policy. The
answers are short plain-text bodies naming nothing internal.

Response filters run in reverse order (the last request filter sees the
response first), the usual "onion" order of middleware.
"""
from __future__ import annotations

import time
from typing import Mapping, Optional, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from wasmgate.wasm.filter import FilterFailure, WasmFilter
from wasmgate.wasm.messages import (
    Answer,
    ChainOutcome,
    Continue,
    FilterDecision,
    FilterRequest,
    FilterResponse,
    Headers,
)

_TEXT = [("content-type", "text/plain; charset=utf-8")]
_BODIES = {500: b"Internal Server Error\n", 502: b"Bad Gateway\n"}


def failure_status(kind: str, policy: str) -> Optional[int]:
    """The status a failure answers with, or C{None} to skip the filter."""
    if kind == "bad_output":
        return 500
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
        pool: ThreadPool,
        reactor: object,
        route_config: Optional[Mapping[str, dict]] = None,
    ) -> None:
        self.filters = tuple(filters)
        self.response_filters = tuple(f for f in reversed(self.filters) if f.has_response_filter)
        self._pool = pool
        self._reactor = reactor
        self._route_config = dict(route_config or {})
        self.wants_body = any(f.include_body for f in self.filters)
        """Some filter wants request/response bodies (buffered, bounded)."""
        self.has_response_filters = bool(self.response_filters)

    def run_request(self, req: FilterRequest) -> "Deferred[tuple[ChainOutcome, list[FilterDecision]]]":
        """Run the request phase; fires with the outcome and the decisions."""
        if not self.filters:
            return succeed((Continue(req), []))
        return deferToThreadPool(self._reactor, self._pool, self.request_sync, req)

    def run_response(
        self, req: FilterRequest, resp: FilterResponse
    ) -> "Deferred[tuple[FilterResponse, list[FilterDecision]]]":
        """Run the response phase; fires with the (changed) response."""
        if not self.response_filters:
            return succeed((resp, []))
        return deferToThreadPool(self._reactor, self._pool, self.response_sync, req, resp)

    def request_sync(self, req: FilterRequest) -> tuple[ChainOutcome, list[FilterDecision]]:
        """The request phase, blocking, on the calling thread."""
        decisions: list[FilterDecision] = []
        response_headers: Headers = []
        for f in self.filters:
            started = time.perf_counter()
            try:
                result = f.run_request(req, route_config=self._route_config.get(f.name))
            except FilterFailure as e:
                seconds = time.perf_counter() - started
                status = failure_status(e.kind, f.failure_policy)
                if status is None:
                    decisions.append(FilterDecision(f.name, "skipped:" + e.kind, seconds))
                    continue
                decisions.append(FilterDecision(f.name, "failed:" + e.kind, seconds))
                return error_answer(status, f.name), decisions
            seconds = time.perf_counter() - started
            if isinstance(result, Answer):
                decisions.append(FilterDecision(f.name, "answer", seconds))
                result.plugin = result.plugin or f.name
                return result, decisions
            decisions.append(FilterDecision(f.name, "continue", seconds))
            req = result.request
            response_headers.extend(result.response_headers)
        return Continue(req, response_headers=response_headers), decisions

    def response_sync(
        self, req: FilterRequest, resp: FilterResponse
    ) -> tuple[FilterResponse, list[FilterDecision]]:
        """The response phase, blocking, on the calling thread."""
        decisions: list[FilterDecision] = []
        for f in self.response_filters:
            started = time.perf_counter()
            try:
                resp = f.run_response(req, resp, route_config=self._route_config.get(f.name))
            except FilterFailure as e:
                seconds = time.perf_counter() - started
                status = failure_status(e.kind, f.failure_policy)
                if status is None:
                    decisions.append(FilterDecision(f.name, "skipped:" + e.kind, seconds))
                    continue
                decisions.append(FilterDecision(f.name, "failed:" + e.kind, seconds))
                a = error_answer(status, f.name)
                return FilterResponse(status=a.status, headers=a.headers, body=a.body), decisions
            decisions.append(FilterDecision(f.name, "continue", time.perf_counter() - started))
        return resp, decisions
