# -*- test-case-name: tests.test_proxy,tests.test_gateway_committed -*-
"""
The way back of an exchange (L{wasmgate.proxy.Exchange}): the upstream's
response head and body relayed to the client with backpressure, through
the route's response filters when it has any, and after a response a
filter committed in its request phase.

A committed response (L{Continue.response}: an http-wasm guest that set
the status or wrote a body in C{handle_request}, then went on) is sent as
the reference host sends it: its status, the gateway's response headers,
its body, then the upstream's body; the upstream's status and headers are
dropped. The length is the committed body's plus the upstream's
Content-Length when that is known; otherwise the body is streamed
(chunked on HTTP/1.1). Response filters see the committed status, no
headers, and the committed body followed by the upstream's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.internet import defer
from twisted.python.failure import Failure

from wasmgate._headers import dropping, end_to_end, from_filters
from wasmgate.http import _wire
from wasmgate.http.message import Header, IncomingRequest, RequestRecord, ResponseChannel
from wasmgate.wasm.messages import FilterDecision, FilterResponse

if TYPE_CHECKING:
    from wasmgate._forward import Forward
    from wasmgate.generation import RouteRuntime
    from wasmgate.proxy import Gateway
    from wasmgate.wasm.chain import RequestRun

RESPONSE_DROP = dropping(b"content-length")
_NO_BODY = frozenset({204, 304})


def committed_response(response: FilterResponse) -> Optional[FilterResponse]:
    """
    What a committed C{response} commits to: a 1xx status is interim, not
    a final one (as on the reference host, Go's net/http): with a body
    written it becomes 200, without one nothing is committed.
    """
    if response.status >= 200:
        return response
    return FilterResponse(200, [], response.body) if response.body else None


class ResponseRelay:
    """The response side of an exchange (its L{wasmgate._forward.ForwardSink} part but the ends)."""

    gateway: "Gateway"
    request: IncomingRequest
    channel: ResponseChannel
    record: RequestRecord
    route: Optional["RouteRuntime"]
    run: Optional["RequestRun"]
    forward: Optional["Forward"]
    done: bool
    response_headers: list[Header]
    committed: Optional[FilterResponse]
    _collected: Optional[list[bytes]]
    _collected_size: int
    _held: Optional[list[bytes]]
    _when_collected: Optional[defer.Deferred[None]]
    _upstream_ended: bool

    if TYPE_CHECKING:

        def answer(self, code: int, body: bytes, headers: Optional[list[Header]] = None) -> None: ...

        def _finish(self, *, status: Optional[int] = None, log: bool = True) -> None: ...

        def _filters_busy(self, reason: Failure) -> None: ...

        def _internal_error(self, reason: Failure) -> None: ...

    def upstream_head(self, status: int, reason: bytes, headers: list[Header], length: Optional[int]) -> None:
        route, forward = self.route, self.forward
        assert route is not None and forward is not None
        if self.committed is not None:
            self._after_committed(self.committed, status, length)
            return
        if status == 101:  # a granted upgrade: no response filters, the tunnel follows
            upgrade = next((v for n, v in headers if n == b"upgrade"), self.request.upgrade or b"websocket")
            out = end_to_end(headers, RESPONSE_DROP) + [(b"connection", b"Upgrade"), (b"upgrade", upgrade)]
            out += self.response_headers
            self.channel.respond(101, reason, out, length=None)
            return
        if route.chain is not None and route.chain.has_response_filters:
            self._filter_response(status, reason, end_to_end(headers, RESPONSE_DROP), length)
            return
        self.channel.respond(status, reason, end_to_end(headers, RESPONSE_DROP) + self.response_headers, length=length)
        self.channel.pause_upstream_with(forward)

    def upstream_data(self, data: bytes) -> None:
        if self._collected is not None:
            self._collected_size += len(data)
            if self._collected_size > self.gateway.settings.max_body_bytes:
                self._collected = None
                self.record.error = "upstream response over max_body_bytes for the response filters"
                self.answer(502, b"upstream response too large for the response filters\n")
                return
            self._collected.append(data)
        elif self._held is not None:
            self._held.append(data)
        elif not self.done:
            self.channel.write(data)

    def upstream_done(self) -> None:
        self._upstream_ended = True
        if self.done:
            return
        if self._when_collected is not None:
            collected, self._when_collected = self._when_collected, None
            collected.callback(None)
            return
        if self._collected is not None or self._held is not None:
            return  # the response filters' callback finishes it
        self.channel.stop_pausing()
        self.channel.finish()
        self._finish()

    # -- a response committed in the request phase ---------------------------

    def _after_committed(self, committed: FilterResponse, status: int, length: Optional[int]) -> None:
        """The upstream's head is in: send C{committed}, then the upstream's body."""
        forward, route = self.forward, self.route
        assert forward is not None and route is not None
        body = committed.body or b""
        if committed.status in _NO_BODY or status == 101:
            # No body may follow (or an upgrade nobody will see): the
            # upstream's is not waited for.
            forward.stop()
            self._upstream_ended = True
            length = 0
            if committed.status in _NO_BODY:
                body = b""
        elif status in _NO_BODY:
            length = 0  # (a 304's Content-Length is not its body's)
        total = None if length is None or committed.status in _NO_BODY else len(body) + length
        phrase = _wire.reason_phrase(committed.status)
        if route.chain is not None and route.chain.has_response_filters:
            self._filter_response(committed.status, phrase, [], total, prefix=body)
            return
        self.channel.respond(committed.status, phrase, self.response_headers, length=total)
        self.channel.write(body)
        if self._upstream_ended:
            self.channel.finish()
            self._finish()
            return
        self.channel.pause_upstream_with(forward)

    # -- response filters ------------------------------------------------------

    def _filter_response(
        self, status: int, reason: bytes, kept: list[Header], length: Optional[int], prefix: bytes = b""
    ) -> None:
        """
        Run the response filters on the response whose head is C{status}
        and C{kept}: on its whole body when the chain reads bodies, else on
        the head while the body waits. C{prefix} is a committed body that
        goes before the upstream's.
        """
        route, forward, run = self.route, self.forward, self.run
        assert route is not None and route.chain is not None and forward is not None and run is not None
        ended = self._upstream_ended  # (only after a committed response)
        d: defer.Deferred[Any]
        if route.chain.wants_body:
            self._collected = [prefix] if prefix else []
            if ended:
                d = defer.succeed(None)
            else:
                d = self._when_collected = defer.Deferred()
        else:
            self._held = [prefix] if prefix else []  # the body waits while the filters look at the head
            if not ended:
                forward.pauseProducing()
            d = defer.succeed(None)

        def run_filters(_: Any) -> defer.Deferred[Any]:
            body = b"".join(self._collected) if self._collected is not None else None
            resp = FilterResponse(
                status=status, headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in kept], body=body
            )
            return run.run_response(resp)

        def write(result: tuple[FilterResponse, list[FilterDecision]]) -> None:
            resp, decisions = result
            self.record.decisions.extend(decisions)
            if self.done:
                return
            out = from_filters(resp.headers) + self.response_headers
            phrase = reason if resp.status == status else _wire.reason_phrase(resp.status)
            if self._collected is not None or resp.body is not None:
                body = resp.body if resp.body is not None else b"".join(self._collected or ())
                self._collected = self._held = None
                forward.stop()  # done with it (or its body is replaced)
                size: Optional[int] = len(body)
                if resp.status == 304 or (not body and self.request.method == b"HEAD"):
                    size = length  # no body came: the upstream's length stands
                self.channel.respond(resp.status, phrase, out, length=size, body=body)
                self._finish()
                return
            held, self._held = self._held or [], None
            self.channel.respond(resp.status, phrase, out, length=length)
            for data in held:
                self.channel.write(data)
            if self._upstream_ended:
                self.channel.finish()
                self._finish()
                return
            self.channel.pause_upstream_with(forward)
            forward.resumeProducing()

        d.addCallback(run_filters)
        d.addCallbacks(write, self._filters_busy)
        d.addErrback(self._internal_error)
