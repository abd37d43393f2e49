# -*- test-case-name: tests.test_proxy -*-
"""
The exchange core: one request's way through route, filters, upstream and
back, whatever wire protocol it came on.

A wire protocol hands L{Gateway.start_exchange} an L{IncomingRequest} and
a L{ResponseChannel}; the L{Exchange} routes it, runs the route's request
filters (one thread hop for the chain), sends it to a target over the
generation's L{UpstreamPool} (streaming the body when no filter reads it),
runs the response filters, and relays the answer with backpressure both
ways. Errors map to statuses here: 400 (target), 404 (route), 413/408
(body), 502 (upstream failed), 503 (no target), 504 (too slow).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wasmgate._headers import dropping, end_to_end, forwarded_for, forwarded_scheme_and_host
from wasmgate.filterjobs import QueueFull
from wasmgate.http import _wire
from wasmgate.http.message import (
    BodyMalformed,
    BodyTimedOut,
    BodyTooLarge,
    ClientGone,
    Header,
    IncomingRequest,
    RequestRecord,
    ResponseChannel,
)
from wasmgate.http.upstream import UpstreamConnection
from wasmgate.routing import BadPath, BadTarget, normalize_path, split_target
from wasmgate.upstream import NoTargetAvailable, Target, UpstreamBusy
from wasmgate.wasm.messages import Answer, Continue, FilterDecision, FilterRequest, FilterResponse

if TYPE_CHECKING:
    from wasmgate.generation import Generation, RouteRuntime
    from wasmgate.http.server import ServerSettings
    from wasmgate.wasm.chain import RequestRun

log = Logger()

_REQUEST_DROP = dropping(
    b"host", b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"
)
_REQUEST_DROP_UNENCODED = _REQUEST_DROP | {b"accept-encoding"}
_RESPONSE_DROP = dropping(b"content-length")
_TEXT = (b"content-type", b"text/plain; charset=utf-8")
_RETRY_FRESH = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"})
"""Idempotent methods retried once on a fresh connection when a kept-alive
one closed before any answer (only without a body, as Twisted's pool did)."""


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
    ) -> None:
        self.generation = generation
        self.clock = clock
        self.record = record
        self.settings = settings
        """The client side's limits (a reload changes them in place)."""
        self._on_ejection = on_ejection

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


@implementer(IPushProducer)
class Exchange:
    """One request's way through route, filters, upstream and back."""

    def __init__(self, gateway: Gateway, request: IncomingRequest, channel: ResponseChannel) -> None:
        self.gateway = gateway
        self.generation = generation = gateway.generation()
        self.request = request
        self.channel = channel
        self.clock = gateway.clock
        self.record = RequestRecord(request.started)
        self.route: Optional["RouteRuntime"] = None
        self.freq: Optional[FilterRequest] = None
        self.run: Optional["RequestRun"] = None
        """The request's way through its route's filters."""
        self.done = False
        self.pending: Optional[defer.Deferred[Any]] = None
        # What goes upstream.
        self.method = request.method
        self.uri = b""
        self.headers: list[Header] = []
        self.body: Optional[bytes] = None
        """A buffered body (filters read it); else the request's streams."""
        self.response_headers: list[Header] = []
        self.conn: Optional[UpstreamConnection] = None
        self._targets: list[Target] = []
        self._holding: Optional[Target] = None
        self._fresh = False
        self._head_seen = False
        self._sent_at = 0.0
        self._declared_length = False
        self._paused = False
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
        try:
            host, raw_path, query = split_target(request.target, request.header(b"host"))
            record.path = raw_path
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
        self.uri = (path + "?" + query if query else path).encode("latin-1")
        chain = route.chain
        self.headers = self._upstream_headers(route, host)
        if chain is None:
            self.forward()
            return
        body = request.body
        if chain.wants_body and body is not None:
            self.pending = d = body.collect()
            d.addCallbacks(self._run_request_filters, self._body_failed_early)
            return
        self._run_request_filters(b"" if chain.wants_body else None)

    def _upstream_headers(self, route: "RouteRuntime", host: str) -> list[Header]:
        """
        The client's end-to-end headers, Host first, X-Forwarded-* last:
        one pass over what the client sent.
        """
        request = self.request
        chain = route.chain
        drop = _REQUEST_DROP
        if chain is not None and chain.wants_body and chain.has_response_filters:
            # The upstream then answers uncompressed: a redactor reads text, not gzip.
            drop = _REQUEST_DROP_UNENCODED
        out = [(b"host", host.encode("latin-1"))] if host else []
        xff_in: list[bytes] = []
        proto_in = host_in = None
        tokens: Optional[set[bytes]] = None
        for header in request.headers:
            name = header[0]
            if name in drop:
                if name == b"x-forwarded-for":
                    xff_in.append(header[1])
                elif name == b"x-forwarded-proto":
                    proto_in = proto_in or header[1]
                elif name == b"x-forwarded-host":
                    host_in = host_in or header[1]
                elif name == b"connection":
                    tokens = tokens or set()
                    tokens.update(t.strip().lower() for t in header[1].split(b","))
                elif name == b"content-length":
                    self._declared_length = True
                continue
            if name.startswith(b"proxy-"):
                continue
            if name == b"user-agent":
                self.record.user_agent = header[1].decode("latin-1")
            out.append(header)
        if tokens:
            out = [h for h in out if h[0] not in tokens]
        trusted = self.generation.config.server.trusted_proxies
        peer = request.peer_host
        xff, client_ip = forwarded_for(peer, xff_in, trusted)
        self.record.client_ip = client_ip
        scheme, forwarded_host = forwarded_scheme_and_host(
            peer, trusted, scheme="https" if request.secure else "http", host=host,
            incoming_proto=proto_in, incoming_host=host_in,
        )
        out.append((b"x-forwarded-for", xff.encode("latin-1")))
        out.append((b"x-forwarded-proto", scheme.encode("latin-1")))
        if forwarded_host:
            out.append((b"x-forwarded-host", forwarded_host.encode("latin-1")))
        return out

    def _run_request_filters(self, body: Optional[bytes]) -> None:
        self.pending = None
        if self.done:
            return
        route = self.route
        assert route is not None and route.chain is not None
        request = self.request
        path, _, query = self.uri.decode("latin-1").partition("?")
        self.freq = FilterRequest(
            method=self.method.decode("latin-1"),
            path=path,
            query=query,
            headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.headers],
            client_ip=self.record.client_ip,
            body=body,
            route=route.config.name,
            scheme="https" if request.secure else "http",
            protocol=request.version.decode("latin-1"),
            source_port=request.peer_port if self.record.client_ip == request.peer_host else 0,
        )
        self.run = route.chain.begin(self.freq)
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
            self.answer(
                outcome.status, outcome.body,
                [(n.encode("latin-1"), v.encode("latin-1")) for n, v in outcome.headers],
            )
            return
        assert isinstance(outcome, Continue)
        freq = self.freq = outcome.request
        self.method = freq.method.encode("latin-1")
        self.uri = (freq.path + ("?" + freq.query if freq.query else "")).encode("latin-1")
        self.headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in freq.headers]
        self.response_headers = [
            (n.encode("latin-1"), v.encode("latin-1")) for n, v in outcome.response_headers
        ]
        if freq.body is not None:
            self.body = freq.body
        self.forward()

    def _filters_busy(self, reason: Failure) -> None:
        """Every filter thread is taken and filters.max_queue jobs wait: 503."""
        reason.trap(QueueFull)
        self.pending = None
        self.record.error = "filter queue full (filters.max_queue)"
        self.answer(503, b"busy, try again\n", [(b"retry-after", b"1")])

    def _body_failed_early(self, reason: Failure) -> None:
        self.pending = None
        self._body_failed(reason.value)

    # -- upstream ------------------------------------------------------------

    def forward(self) -> None:
        route = self.route
        assert route is not None
        try:
            candidates = route.upstream.candidates(self.record.client_ip)
        except UpstreamBusy:
            self.record.error = "every target is at max_connections_per_target"
            self.answer(503, b"upstream busy\n", [(b"retry-after", b"1")])
            return
        except NoTargetAvailable:
            self.answer(503, b"no healthy upstream\n")
            return
        retries = 1 if self.method.decode("latin-1").upper() in route.upstream.config.retry_methods else 0
        self._targets = candidates[: retries + 1]
        self._try()

    def _try(self) -> None:
        target = self._targets.pop(0)
        self.record.target = target.url
        self._release_target()
        target.active += 1  # until the exchange is over (least_requests)
        self._holding = target
        self._head_seen = False
        pool = self.generation.pool
        conn = None if self._fresh else pool.idle(target)
        if conn is not None:
            self._send(conn)
            return
        d = pool.connect(target)
        self.pending = d
        d.addCallbacks(self._connected, self._connect_failed, errbackArgs=(target,))
        d.addErrback(self._internal_error)

    def _connected(self, conn: UpstreamConnection) -> None:
        self.pending = None
        if self.done:
            self.generation.pool.release(conn)  # unused: still good
            return
        self._send(conn)

    def _send(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        self._sent_at = now = self.clock.seconds()
        first_check = now + self._upstream_timeout()
        head = b"%s %s HTTP/1.1\r\n%s" % (self.method, self.uri, _wire.header_block(self.headers))
        head_only = self.method == b"HEAD"
        body = self.request.body
        if self.body is not None:
            if self.body or self.method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
                head += b"content-length: %d\r\n\r\n%s" % (len(self.body), self.body)
            else:
                head += b"\r\n"
            conn.send(head, self, head_only=head_only, first_check=first_check)
        elif body is not None:
            length = body.length
            if length is None:
                head += b"transfer-encoding: chunked\r\n\r\n"
            else:
                head += b"content-length: %d\r\n\r\n" % (length,)
            conn.send(
                head, self, head_only=head_only, first_check=first_check,
                chunked_body=length is None, body_follows=True,
            )
            conn.transport.registerProducer(body, True)
            body.stream_to(self)
        else:
            if self._declared_length:
                head += b"content-length: 0\r\n"
            conn.send(head + b"\r\n", self, head_only=head_only, first_check=first_check)

    def _connect_failed(self, reason: Failure, target: Target) -> None:
        self.pending = None
        if self.done:
            return
        connect_failed = reason.check(ConnectError) and not reason.check(ConnectingCancelledError)
        if connect_failed and target.failed(self.clock.seconds()):
            self.gateway.ejected(self.record.upstream, target, reason.getErrorMessage())
        if connect_failed and self._targets:
            # Nothing reached the upstream: safe to try another target.
            log.info(
                "upstream {target} refused ({error}); retrying on {next}",
                target=target.url, error=reason.getErrorMessage(), next=self._targets[0].url,
            )
            self._try()
            return
        self.record.upstream_status = "error"
        self._upstream_error(502, b"bad gateway\n", target, reason)

    def _upstream_timeout(self) -> float:
        """The route's upstream timeout: for the response headers, then each gap in the body."""
        assert self.route is not None
        return self.route.config.timeout or self.generation.config.server.timeouts.upstream

    def upstream_deadline(self, now: float) -> Optional[float]:
        """
        The upstream connection's timer: no response headers within the
        route's timeout is a 504; after them, a gap that long in the body
        (while the client keeps reading) cuts the response.
        """
        if self.done or self._upstream_ended:
            return None
        timeout = self._upstream_timeout()
        if not self._head_seen:
            if now < self._sent_at + timeout:
                return self._sent_at + timeout
            self.record.upstream_status = "timeout"
            self.record.error = "upstream sent no response headers within %gs" % (timeout,)
            log.warn(
                "upstream {upstream} target {target}: timed out -> 504",
                upstream=self.record.upstream, target=self.record.target,
            )
            self._drop_upstream()
            self.answer(504, b"upstream timed out\n")
            return None
        conn = self.conn
        if self._paused or conn is None:
            return now + timeout  # the client is slow, not the upstream
        if now < conn.last_data + timeout:
            return conn.last_data + timeout
        self.record.error = "upstream sent nothing more of its body for the upstream timeout"
        log.warn(
            "upstream {upstream} target {target}: body stalled, giving up",
            upstream=self.record.upstream, target=self.record.target,
        )
        self._drop_upstream()
        if self.channel.started:
            self.channel.abort()
            self._finish()
        else:
            self.answer(504, b"upstream timed out\n")
        return None

    def _upstream_error(self, code: int, body: bytes, target: Target, reason: Failure) -> None:
        self.record.error = _describe(reason)
        log.warn(
            "upstream {upstream} target {target}: {error} -> {code}",
            upstream=self.record.upstream, target=target.url, error=self.record.error, code=code,
        )
        self.answer(code, body)

    def _drop_upstream(self) -> None:
        """Give up on the upstream request: reset its connection."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.cancel()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()

    def _release_target(self) -> None:
        target, self._holding = self._holding, None
        if target is not None:
            target.active -= 1

    # -- the request body, streamed (BodySink) -------------------------------

    def body_data(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.write_body(data)

    def body_end(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.end_body()
            if conn.transport is not None:
                conn.transport.unregisterProducer()

    def body_failed(self, reason: Exception) -> None:
        conn = self.conn
        if conn is not None and conn.transport is not None:
            conn.transport.unregisterProducer()
        self._body_failed(reason)

    def _body_failed(self, reason: BaseException) -> None:
        if self.done or isinstance(reason, ClientGone):
            return
        self._drop_upstream()
        if isinstance(reason, BodyTooLarge):
            self.record.error = "request body too large"
            self.answer(413, b"request body too large\n")
        elif isinstance(reason, BodyTimedOut):
            self.record.error = "request body not received in time"
            self.answer(408, b"request not received in time\n")
        elif isinstance(reason, BodyMalformed):
            self.record.error = f"malformed request body: {reason}"
            self.answer(400, b"malformed request body\n")
        else:
            self._internal_error(Failure(reason))

    # -- the response (ResponseHandler) ----------------------------------------

    def response_head(self, status: int, reason: bytes, headers: list[Header], length: Optional[int]) -> None:
        self._head_seen = True
        self.record.upstream_status = str(status)
        target = self._holding
        if target is not None:
            target.succeeded()  # it answered: it is up
        if self.done:
            return
        route = self.route
        assert route is not None
        chain = route.chain
        if chain is not None and chain.has_response_filters:
            self._filter_response(status, reason, headers, length)
            return
        self.channel.respond(status, reason, end_to_end(headers, _RESPONSE_DROP) + self.response_headers, length=length)
        self.channel.pause_upstream_with(self)

    def response_data(self, data: bytes) -> None:
        if self._collected is not None:
            self._collected_size += len(data)
            if self._collected_size > self.gateway.settings.max_body_bytes:
                self._collected = None
                self._drop_upstream()
                self.answer(502, b"upstream response too large for the response filters\n")
                return
            self._collected.append(data)
        elif self._held is not None:
            self._held.append(data)
        elif not self.done:
            self.channel.write(data)

    def response_done(self) -> None:
        self._upstream_ended = True
        self.conn = None
        self._release_target()
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

    def response_failed(self, reason: Failure, *, received: bool) -> None:
        conn, self.conn = self.conn, None
        if self.done:
            return
        target = self._holding
        assert target is not None
        if not self._head_seen:
            if (
                conn is not None and conn.reused and not received and not self._fresh
                and self.method in _RETRY_FRESH and self.request.body is None and not self.body
            ):
                # A kept-alive connection the upstream closed as the request
                # went out: nothing was acted on; once more, on a fresh one.
                self._fresh = True
                self._targets.insert(0, target)
                self._try()
                return
            self.record.upstream_status = "error"
            self._upstream_error(502, b"bad gateway\n", target, reason)
            return
        # Headers are out; the only honest signal left is to cut the
        # connection so the client sees a truncated response.
        self._upstream_ended = True
        self.record.error = f"upstream body failed: {reason.getErrorMessage()}"
        log.warn("upstream body failed: {error}", error=reason.getErrorMessage())
        if self.channel.started:
            self.channel.abort()
            self._finish()
        else:
            self.answer(502, b"bad gateway\n")

    # -- response filters ------------------------------------------------------

    def _filter_response(self, status: int, reason: bytes, headers: list[Header], length: Optional[int]) -> None:
        route = self.route
        assert route is not None and route.chain is not None and self.freq is not None
        chain = route.chain
        kept = end_to_end(headers, _RESPONSE_DROP)
        if chain.wants_body:
            self._collected = []
        else:
            # Hold the body while the filters look at the head.
            self._held = []
            self._paused = True
            self._pause_upstream()

        def run(_: Any) -> defer.Deferred[Any]:
            body = b"".join(self._collected) if self._collected is not None else None
            resp = FilterResponse(
                status=status,
                headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in kept],
                body=body,
            )
            assert self.run is not None
            return self.run.run_response(resp)

        def write(result: tuple[FilterResponse, list[FilterDecision]]) -> None:
            resp, decisions = result
            self.record.decisions.extend(decisions)
            if self.done:
                return
            out = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in resp.headers] + self.response_headers
            phrase = reason if resp.status == status else _wire.reason_phrase(resp.status)
            if self._collected is not None or resp.body is not None:
                body = resp.body if resp.body is not None else b"".join(self._collected or ())
                self._collected = None
                if self._held is not None:
                    self._held = None
                    self._drop_upstream()  # its body is replaced
                self.channel.respond(resp.status, phrase, out, length=len(body), body=body)
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
            self.channel.pause_upstream_with(self)
            self.resumeProducing()

        if chain.wants_body:
            d: defer.Deferred[Any] = defer.Deferred()
            self._when_collected = d
        else:
            d = defer.succeed(None)
        def busy(reason: Failure) -> None:
            reason.trap(QueueFull)
            self._drop_upstream()
            self._filters_busy(reason)

        d.addCallback(run)
        d.addCallbacks(write, busy)
        d.addErrback(self._internal_error)

    # -- backpressure from the client (IPushProducer) ----------------------

    def _pause_upstream(self) -> None:
        conn = self.conn
        if conn is not None and conn.transport is not None:
            conn.transport.pauseProducing()

    def _resume_upstream(self) -> None:
        conn = self.conn
        if conn is not None and conn.transport is not None:
            conn.transport.resumeProducing()

    def pauseProducing(self) -> None:
        self._paused = True
        self._pause_upstream()

    def resumeProducing(self) -> None:
        self._paused = False
        conn = self.conn
        if conn is not None:
            conn.last_data = self.clock.seconds()  # a pause is not the upstream's gap
        self._resume_upstream()

    def stopProducing(self) -> None:
        self._drop_upstream()

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
        if self.done:
            return
        self._drop_upstream()
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

    def _finish(self, *, status: Optional[int] = None) -> None:
        """The exchange is over (answered, cut, or the client left): let go of everything."""
        if self.done:
            return
        self.done = True
        if not self._upstream_ended:
            self._drop_upstream()
        elif self.pending is not None:
            pending, self.pending = self.pending, None
            pending.cancel()
        self._release_target()
        self.generation.request_finished()
        route = self.route
        if self.run is not None:
            self.run.finish()  # http-wasm filters hold an instance until now
        record = self.record
        channel = self.channel
        record.status = status or channel.status or 499
        record.bytes = channel.sent_bytes
        if route is None:  # answered before the headers were looked at
            agent = self.request.header(b"user-agent")
            if agent is not None:
                record.user_agent = agent.decode("latin-1")
        self.gateway.record(record)


def _describe(reason: Failure) -> str:
    """One line on why an upstream request failed."""
    return f"{type(reason.value).__name__}: {reason.getErrorMessage()}"
