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

Filters whose ABI pins an instance to a request (http-wasm) must see their
response phase or be released: when a later filter answers in the request
phase, the pinned filters before it get that answer as their response in the
same hop; when a filter fails, or the proxy never runs the response phase
(client gone, upstream error), L{FilterChain.release} ends their pins.
"""
from __future__ import annotations

import threading
import time
import weakref
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
        pool: ThreadPool,
        reactor: object,
        route_config: Optional[Mapping[str, dict]] = None,
    ) -> None:
        self.filters = tuple(filters)
        self._pool = pool
        self._reactor = reactor
        self._route_config = dict(route_config or {})
        self.response_filters = tuple(
            f
            for f in reversed(self.filters)
            if f.has_response_filter and (f.response_by_default or f.name in self._route_config)
        )
        self.wants_body = any(f.include_body for f in self.filters)
        """Some filter wants request/response bodies (buffered, bounded)."""
        self.has_response_filters = bool(self.response_filters)
        self._pinning = tuple(f for f in self.filters if getattr(f, "pins_instances", False))
        self._released: dict[int, "weakref.ref[FilterRequest]"] = {}
        self._released_lock = threading.RLock()

    def release(self, req: FilterRequest) -> "Deferred[None]":
        """
        The proxy is done with C{req}: call it once when the request ends,
        whatever happened (answered, response phase run, upstream error,
        client gone). Instances still pinned to C{req} run their guest's
        C{handle_response(ctx, is_error=1)} in the filter pool and go back
        to their pools; a request phase still running when this is called
        releases its pins itself when it ends. No thread hop (and an
        already-fired Deferred) when nothing is pinned, so it is cheap to
        call always.
        """
        if not self._pinning:
            return succeed(None)
        key = id(req)
        with self._released_lock:
            if key not in self._released:
                self._released[key] = weakref.ref(req, lambda r, key=key: self._forget(key, r))
        if not any(f.holds(req) for f in self._pinning):
            return succeed(None)
        return deferToThreadPool(self._reactor, self._pool, self.release_sync, req)

    def release_sync(self, req: FilterRequest) -> None:
        """L{release}'s work, blocking, on the calling (filter) thread."""
        for f in reversed(self._pinning):
            f.release(req)

    def _forget(self, key: int, ref: object) -> None:
        with self._released_lock:
            if self._released.get(key) is ref:
                del self._released[key]

    def _was_released(self, req: FilterRequest) -> bool:
        with self._released_lock:
            ref = self._released.get(id(req))
            return ref is not None and ref() is req

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
        if not self._pinning:
            return self._request_phase(req)
        outcome, decisions = self._request_phase(req)
        if self._was_released(req):  # the proxy gave up on it meanwhile
            self.release_sync(req)
        return outcome, decisions

    def _request_phase(self, req: FilterRequest) -> tuple[ChainOutcome, list[FilterDecision]]:
        decisions: list[FilterDecision] = []
        response_headers: Headers = []
        for f in self.filters:
            started = time.perf_counter()
            try:
                result = f.run_request(req, route_config=self._route_config.get(f.name))
            except FilterFailure as e:
                status = self._failed(f, e, started, decisions, req)
                if status is None:
                    continue
                return error_answer(status, f.name), decisions
            seconds = time.perf_counter() - started
            if isinstance(result, Answer):
                decisions.append(FilterDecision(f.name, "answer", seconds))
                result.plugin = result.plugin or f.name
                if self._pinning:
                    result = self._unwind(req, result, decisions)
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
                status = self._failed(f, e, started, decisions, req)
                if status is None:
                    continue
                a = error_answer(status, f.name)
                return FilterResponse(status=a.status, headers=a.headers, body=a.body), decisions
            decisions.append(FilterDecision(f.name, "continue", time.perf_counter() - started))
        return resp, decisions

    def _failed(
        self,
        f: WasmFilter,
        e: FilterFailure,
        started: float,
        decisions: list[FilterDecision],
        req: FilterRequest,
    ) -> Optional[int]:
        """
        Record a filter's failure; the status to answer with, or None when
        its policy (open) says to go on without it.
        """
        seconds = time.perf_counter() - started
        status = failure_status(e.kind, f.failure_policy)
        if status is None:
            decisions.append(FilterDecision(f.name, "skipped:" + e.kind, seconds))
            return None
        decisions.append(FilterDecision(f.name, "failed:" + e.kind, seconds))
        if self._pinning:
            self.release_sync(req)
        return status

    def _unwind(self, req: FilterRequest, answer: Answer, decisions: list[FilterDecision]) -> Answer:
        """
        A filter answered after pinned filters passed the request on: for
        them that answer is what "the next handler" produced, so they get it
        as their response phase (innermost first), as an onion would.
        """
        pinned = [f for f in reversed(self._pinning) if f.holds(req)]
        if not pinned:
            return answer
        resp = FilterResponse(status=answer.status, headers=list(answer.headers), body=answer.body)
        for f in pinned:
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
                self.release_sync(req)
                return error_answer(status, f.name)
        return Answer(
            status=resp.status, headers=resp.headers, body=resp.body or b"", plugin=answer.plugin
        )
