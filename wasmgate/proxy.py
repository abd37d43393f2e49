# -*- test-case-name: tests.test_proxy -*-
"""
The exchange core: one request's way through route, filters, upstream and
back, whatever wire protocol it came on.

A wire protocol hands L{Gateway.start_exchange} an L{IncomingRequest} and
a L{ResponseChannel}; the L{Exchange} routes it, runs the route's request
filters (one thread hop for the chain), forwards it (L{wasmgate._forward}:
targets, pooled connections, the body streamed when no filter reads it),
and relays the answer with backpressure both ways (L{wasmgate._relay}:
the response filters, a response a filter committed before the upstream).
Its own answers: 400 (target), 404 (route), 413/408 (body), 502 (upstream
failed), 503 (no target, filters busy), 504 (too slow).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wasmgate._forward import Forward, body_failure
from wasmgate._headers import dropping, from_filters, upstream_headers
from wasmgate._ids import RequestIds, sane_request_id, trace_context
from wasmgate._relay import ResponseRelay, committed_response
from wasmgate.filterjobs import QueueFull
from wasmgate.http import _wire
from wasmgate.http.message import Header, IncomingRequest, RequestRecord, ResponseChannel
from wasmgate.routing import BadPath, BadTarget, normalize_path, split_target
from wasmgate.upstream import Target
from wasmgate.wasm.messages import Answer, Continue, FilterDecision, FilterRequest, FilterResponse

if TYPE_CHECKING:
    from wasmgate.generation import Generation, RouteRuntime
    from wasmgate.http.tunnel import Tunnel
    from wasmgate.http.upstream import UpstreamConnection
    from wasmgate.http.factory import ServerSettings
    from wasmgate.wasm.chain import RequestRun

log = Logger()

_REQUEST_DROP = dropping(
    b"host", b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
    b"x-request-id", b"traceparent", b"tracestate",
)
_REQUEST_DROP_UNENCODED = _REQUEST_DROP | {b"accept-encoding"}
_TEXT = (b"content-type", b"text/plain; charset=utf-8")


class Gateway:
    """What exchanges need of the running gateway."""

    def __init__(
        self,
        *,
        generation: Callable[[], "Generation"],
        clock: IReactorTime,
        record: Callable[[RequestRecord], None],
        settings: "ServerSettings",
        on_ejection: Callable[[str, str], None] = lambda upstream, target: None,
        sample_ratio: float = 0.0,
    ) -> None:
        self.generation = generation
        self.ids = RequestIds()
        self.sample_ratio = sample_ratio
        """Share of new traces whose spans are exported (0: tracing is off)."""
        self.clock = clock
        self.record = record
        self.settings = settings
        """The client side's limits (a reload changes them in place)."""
        self._on_ejection = on_ejection
        self.tunnels: set["Tunnel"] = set()
        """Upgraded connections open now."""
        self.tunnel_bytes_in = 0
        """Bytes from clients through closed tunnels (open ones count at their end)."""
        self.tunnel_bytes_out = 0

    def tunnel_opened(self, tunnel: "Tunnel") -> None:
        self.tunnels.add(tunnel)

    def tunnel_closed(self, tunnel: "Tunnel") -> None:
        self.tunnels.discard(tunnel)
        self.tunnel_bytes_in += tunnel.bytes_in
        self.tunnel_bytes_out += tunnel.bytes_out


    def ejected(self, upstream: str, target: Target, why: str) -> None:
        """A target was taken out of rotation after failing to connect."""
        log.warn(
            "upstream {upstream} target {target} ejected for {seconds}s after"
            " {n} connect failures in a row (last: {why})",
            upstream=upstream, target=target.url, seconds=target.eject_for,
            n=target.consecutive_failures, why=why,
        )
        self._on_ejection(upstream, target.url)

    def start_exchange(self, request: IncomingRequest, channel: ResponseChannel) -> "Exchange":
        exchange = Exchange(self, request, channel)
        exchange.start()
        return exchange


class Exchange(ResponseRelay):
    """One request's way through route, filters, upstream and back."""

    def __init__(self, gateway: Gateway, request: IncomingRequest, channel: ResponseChannel) -> None:
        self.gateway = gateway
        self.generation = generation = gateway.generation()
        self.request = request
        self.channel = channel
        self.record = RequestRecord(request.started)
        self.route: Optional["RouteRuntime"] = None
        self.freq: Optional[FilterRequest] = None
        self.run: Optional["RequestRun"] = None
        """The request's way through its route's filters."""
        self.forward: Optional[Forward] = None
        self.done = False
        self.pending: Optional[defer.Deferred[Any]] = None
        self.response_headers: list[Header] = []
        """Headers added to the response (filters', X-Request-Id)."""
        self.committed: Optional[FilterResponse] = None
        """A response a request filter committed (see L{wasmgate._relay})."""
        self._collected: Optional[list[bytes]] = None
        self._collected_size = 0
        self._held: Optional[list[bytes]] = None
        self._when_collected: Optional[defer.Deferred[None]] = None
        self._upstream_ended = False
        generation.request_started()

    # -- the way in --------------------------------------------------------

    def start(self) -> None:
        request = self.request
        record = self.record
        record.method = request.method.decode("latin-1")
        record.protocol = request.version.decode("latin-1")
        record.client_ip = request.peer_host
        record.sni = request.server_name
        try:
            host, raw_path, query = split_target(request.target, request.header(b"host"))
            record.host, record.path = host, raw_path
            path = normalize_path(raw_path)
            if ";" in path and self.generation.config.server.path_params == "reject":
                raise BadPath("path parameters (';') are not accepted here")
        except (BadTarget, BadPath) as e:
            self.answer(400, b"bad request target: %s\n" % (str(e).encode("latin-1"),))
            return
        record.path = path
        found = self.generation.router.match(host, path)
        if found is None:
            self.answer(404, b"no route for this host and path\n")
            return
        self.route = route = found[1]
        record.route = route.config.name
        record.upstream = route.upstream.name
        if request.upgrade is not None and not route.config.websocket:
            self.answer(403, b"WebSocket is not allowed on this route\n")
            return
        chain = route.chain
        drop = _REQUEST_DROP
        if chain is not None and chain.wants_body and chain.has_response_filters:
            # The upstream then answers uncompressed: a redactor reads text, not gzip.
            drop = _REQUEST_DROP_UNENCODED
        sent = upstream_headers(
            request.headers, host=host, peer=request.peer_host, secure=request.secure,
            trusted=self.generation.config.server.trusted_proxies, drop=drop,
        )
        record.client_ip = sent.client_ip
        record.request_id = (
            (sent.trusted and sane_request_id(sent.request_id)) or self.gateway.ids.next()
        ).decode("latin-1")
        trace = record.trace = trace_context(
            sent.traceparent, sent.tracestate, trusted=sent.trusted, sample=self.gateway.sample_ratio
        )
        request_id = record.request_id.encode("latin-1")
        sent.headers.append((b"x-request-id", request_id))
        self.response_headers.append((b"x-request-id", request_id))
        sent.headers.append((b"traceparent", trace.traceparent()))
        if trace.tracestate is not None:
            sent.headers.append((b"tracestate", trace.tracestate))
        if request.upgrade is not None:
            sent.headers += [(b"connection", b"upgrade"), (b"upgrade", request.upgrade)]
        if sent.user_agent is not None:
            record.user_agent = sent.user_agent.decode("latin-1")
        self.forward = Forward(
            self,
            gateway=self.gateway,
            generation=self.generation,
            upstream=route.upstream,
            timeout=route.config.timeout or self.generation.config.server.timeouts.upstream,
            request=request,
            record=record,
            method=request.method,
            uri=(path + "?" + query if query else path).encode("latin-1"),
            headers=sent.headers,
            body=None,
            declared_length=sent.declared_length,
        )
        if chain is None:
            self.forward.start()
            return
        body = request.body
        if chain.wants_body and body is not None:
            self.pending = d = body.collect()
            d.addCallbacks(self._run_request_filters, self._body_failed_early)
            return
        self._run_request_filters(b"" if chain.wants_body else None)

    def _run_request_filters(self, body: Optional[bytes]) -> None:
        self.pending = None
        if self.done:
            return
        route, forward, request = self.route, self.forward, self.request
        assert route is not None and route.chain is not None and forward is not None
        path, _, query = forward.uri.decode("latin-1").partition("?")
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in forward.headers]
        if request.body is not None and request.body.length is not None:
            headers.append(("content-length", str(request.body.length)))
        elif request.body is None and forward.declared_length:
            headers.append(("content-length", "0"))
        self.freq = FilterRequest(
            method=forward.method.decode("latin-1"),
            path=path,
            query=query,
            headers=headers,
            client_ip=self.record.client_ip,
            body=body,
            route=route.config.name,
            scheme="https" if request.secure else "http",
            protocol=request.version.decode("latin-1"),
            source_port=request.peer_port if self.record.client_ip == request.peer_host else 0,
        )
        self.run = route.chain.begin(self.freq, request_id=self.record.request_id)
        self.pending = d = self.run.run_request()
        d.addCallbacks(self._filtered, self._filters_busy)
        d.addErrback(self._internal_error)

    def _filtered(self, result: tuple[Any, list[FilterDecision]]) -> None:
        self.pending = None
        outcome, decisions = result
        self.record.decisions.extend(decisions)
        if self.done:
            return
        if isinstance(outcome, Answer):
            self.answer(outcome.status, outcome.body, from_filters(outcome.headers))
            return
        assert isinstance(outcome, Continue) and self.forward is not None
        freq = self.freq = outcome.request
        forward = self.forward
        forward.method = freq.method.encode("latin-1")
        forward.uri = (freq.path + ("?" + freq.query if freq.query else "")).encode("latin-1")
        # Content-Length (which the filters saw) is dropped: the forward
        # frames the body itself, the buffered one's length or the client's.
        forward.headers = from_filters(freq.headers)
        forward.body = freq.body
        self.response_headers = from_filters(outcome.response_headers) + self.response_headers
        if outcome.response is not None:
            self.committed = committed_response(outcome.response)
        forward.start()

    def _filters_busy(self, reason: Failure) -> None:
        """Every filter thread is taken and filters.max_queue jobs wait: 503."""
        reason.trap(QueueFull)
        self.pending = None
        if self.forward is not None:
            self.forward.stop()
        self.record.error = "filter queue full (filters.max_queue)"
        self.answer(503, b"busy, try again\n", [(b"retry-after", b"1")])

    def _body_failed_early(self, reason: Failure) -> None:
        self.pending = None
        if not reason.check(defer.CancelledError):
            status, text = body_failure(reason.value)
            self.record.error = text.decode().strip()
            self.answer(status, text)

    # -- the response's ends (ForwardSink; the rest is ResponseRelay's) --------

    def upstream_failed(self, status: int, body: bytes, headers: list[Header]) -> None:
        self._upstream_ended = True
        self.answer(status, body, headers)

    def upstream_upgraded(self, connection: "UpstreamConnection", rest: bytes) -> None:
        """Splice the two connections; the exchange ends, its log line waits for the tunnel's end."""
        self._upstream_ended = True
        if self.done or connection.transport is None:
            connection.abort()
            return
        tunnel = self.channel.open_tunnel(
            connection.transport,
            idle_timeout=self.generation.config.server.timeouts.tunnel_idle,
            on_close=self._tunnel_closed,
        )
        connection.tunnel = tunnel
        self.gateway.tunnel_opened(tunnel)
        self._finish(log=False)  # the generation is not held by a tunnel
        if rest:
            tunnel.from_upstream(rest)

    def _tunnel_closed(self, tunnel: "Tunnel", why: str) -> None:
        record = self.record
        record.status = 101
        record.tunnel = why
        record.bytes = tunnel.bytes_out
        record.bytes_in = tunnel.bytes_in
        self.gateway.tunnel_closed(tunnel)
        self.gateway.record(record)

    def upstream_cut(self, *, timed_out: bool) -> None:
        self._upstream_ended = True
        if self.channel.started:
            self.channel.abort()
            self._finish()
        elif timed_out:
            self.answer(504, b"upstream timed out\n")
        else:
            self.answer(502, b"bad gateway\n")

    # -- the way out -----------------------------------------------------------

    def answer(self, code: int, body: bytes, headers: Optional[list[Header]] = None) -> None:
        """Answer the client from the gateway itself (errors, filter answers)."""
        if self.done:
            return
        if self.channel.started:
            self.channel.abort()
            self._finish()
            return
        out = list(headers or ())
        if not any(name.lower() == b"content-type" for name, _ in out):
            out.append(_TEXT)
        if not self.record.request_id:
            self.record.request_id = self.gateway.ids.next().decode("latin-1")
        out.append((b"x-request-id", self.record.request_id.encode("latin-1")))
        banner = self.gateway.settings.banner
        if banner:
            out.append((b"server", banner))
        self.channel.respond(code, _wire.reason_phrase(code), out, length=len(body), body=body)
        self._finish()

    def _internal_error(self, reason: Failure) -> None:
        if self.done and reason.check(defer.CancelledError):
            return  # the client left and the filter call was cancelled
        log.failure("internal error while proxying", reason)
        self.record.error = reason.getErrorMessage()
        self.answer(500, b"internal gateway error\n")

    def note_error(self, text: str) -> None:
        """The wire protocol's word on why it is ending this exchange."""
        self.record.error = text

    def client_gone(self) -> None:
        """The client's connection closed before its response was done."""
        if self.done:
            return
        if not self.record.error:
            self.record.error = "client closed the connection"
        self._finish(status=499 if not self.channel.started else None)

    def _finish(self, *, status: Optional[int] = None, log: bool = True) -> None:
        """The exchange is over (answered, cut, or the client left): let go of everything."""
        if self.done:
            return
        self.done = True
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.cancel()
        if self.forward is not None:
            self.forward.detach()
        self.generation.request_finished()
        if self.run is not None:
            self.run.finish()  # http-wasm filters hold an instance until now
        record = self.record
        record.ended = self.gateway.clock.seconds()
        if not log:
            return
        channel = self.channel
        record.status = status or channel.status or 499
        record.bytes = channel.sent_bytes
        if self.request.body is not None:
            record.bytes_in = self.request.body.received
        if self.route is None:  # answered before the headers were looked at
            agent = self.request.header(b"user-agent")
            if agent is not None:
                record.user_agent = agent.decode("latin-1")
        self.gateway.record(record)
