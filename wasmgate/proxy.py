# -*- test-case-name: tests.test_proxy -*-
"""
The reverse proxy: a twisted.web resource that takes each request through
its route's filter chain to an upstream and streams the answer back.
"""
from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any, Callable, Optional
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.client import FileBodyProducer, PotentialDataLoss, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from twisted.web.resource import Resource
from zope.interface import implementer

from wasmgate._headers import end_to_end, forwarded_for, forwarded_scheme_and_host
from wasmgate.routing import BadPath, normalize_path
from wasmgate.upstream import NoTargetAvailable, Target, UpstreamBusy
from wasmgate.wasm.messages import Answer, Continue, FilterDecision, FilterRequest, FilterResponse

if TYPE_CHECKING:
    from wasmgate.generation import Generation, RouteRuntime

log = Logger()

_REQUEST_DROP = (b"content-length", b"x-forwarded-proto", b"x-forwarded-host")
_RESPONSE_DROP = (b"content-length",)


def _request_drop(route: "RouteRuntime") -> tuple[bytes, ...]:
    """
    Request headers not passed upstream. Where filters read response
    bodies, Accept-Encoding is not passed either: the upstream then answers
    uncompressed, and a redactor sees text, not gzip it cannot read.
    """
    chain = route.chain
    if chain is not None and chain.wants_body and chain.has_response_filters:
        return _REQUEST_DROP + (b"accept-encoding",)
    return _REQUEST_DROP


class ExchangeInfo:
    """What the access log and metrics want to know about one request."""

    __slots__ = (
        "route", "target", "decisions", "started", "error", "upstream", "upstream_status", "client_ip"
    )

    def __init__(self, started: float) -> None:
        self.route: str = ""
        self.upstream: str = ""
        self.target: str = ""
        self.decisions: list[FilterDecision] = []
        self.started = started
        self.error: str = ""
        self.upstream_status: str = ""
        self.client_ip: str = ""
        """After trusted-proxy handling; empty when no route was found."""


class GatewayRequest(server.Request):
    """
    A request whose body is refused past the site's C{max_body_bytes}
    (413, connection closed) instead of being buffered; and which carries
    an L{ExchangeInfo} for logs.
    """

    defaultContentType = None
    _rejected = False
    _received = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.info = ExchangeInfo(time.monotonic())
        site = self.channel.site
        # The request line is in; headers and body must follow within the
        # read timeout (a client trickling bytes would hold a slot forever).
        self._read_timer = site.reactor.callLater(site.read_timeout, self._read_timed_out)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._read_timer.active():
            self._read_timer.cancel()
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Failure) -> None:
        if self._read_timer.active():
            self._read_timer.cancel()
        super().connectionLost(reason)

    def write(self, data: bytes) -> None:
        if not self.startedWriting and self.channel is not None and self.channel.site.draining:
            # Shutting down: this connection ends with this response, and
            # the client hears so instead of finding it closed under it.
            self.responseHeaders.setRawHeaders(b"connection", [b"close"])
            self.channel.persistent = False
        super().write(data)

    def _read_timed_out(self) -> None:
        if not self._rejected:
            self._refuse(408, b"Request Timeout", b"request not received in time\n")

    def gotLength(self, length: Optional[int]) -> None:
        if length is not None and length > self.channel.site.max_body_bytes:
            self.content = io.BytesIO()
            self._reject_too_large()
            return
        # Headers are in: from now on the timeout is a gap in the body, so
        # a large upload on a slow link is fine as long as it keeps coming.
        self._body_arriving()
        super().gotLength(length)

    def _body_arriving(self) -> None:
        if self._read_timer.active():
            self._read_timer.reset(self.channel.site.read_timeout)

    def handleContentChunk(self, data: bytes) -> None:
        if self._rejected:
            return
        self._body_arriving()
        self._received += len(data)
        if self._received > self.channel.site.max_body_bytes:
            self._reject_too_large()
            return
        self.content.write(data)

    def _reject_too_large(self) -> None:
        self._refuse(413, b"Payload Too Large", b"request body too large\n")

    def process(self) -> None:
        if not self._rejected:
            super().process()

    def _refuse(self, code: int, phrase: bytes, body: bytes) -> None:
        """
        Answer before the request was fully read (too large, too slow) and
        close: written straight to the transport, as twisted.web does for
        its own 400s, since the request never reaches a resource.
        """
        self._rejected = True
        if self._read_timer.active():
            self._read_timer.cancel()
        self.info.error = body.decode().strip()
        # Never invite the rest of the body with a 100 Continue.
        self.requestHeaders.removeHeader(b"expect")
        transport = self.channel.transport
        transport.write(
            b"HTTP/1.1 %d %s\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (code, phrase, len(body), body)
        )
        self.code = code
        self.sentLength = len(body)
        # requestReceived has not run yet: name the request for the log.
        self.method = getattr(self.channel, "_command", None) or b"-"
        self.uri = getattr(self.channel, "_path", None) or b"-"
        self.path = self.uri.split(b"?", 1)[0]
        # Half-close so the client reads the answer before its unsent body
        # could turn our close into a reset; then close for good.
        try:
            transport.loseWriteConnection()
        except (AttributeError, NotImplementedError):
            transport.loseConnection()
        else:
            self.channel.site.reactor.callLater(2.0, transport.loseConnection)
        self.channel.site.log(self)


class ProxyResource(Resource):
    """
    The gateway's only resource: every request goes through L{_Exchange}.
    """

    isLeaf = True

    def __init__(
        self, *, generation: Callable[[], "Generation"], reactor: IReactorTime
    ) -> None:
        super().__init__()
        self._generation = generation
        self._reactor = reactor

    def render(self, request: GatewayRequest) -> int:
        _Exchange(self._generation(), request, self._reactor).start()
        return server.NOT_DONE_YET


class _Exchange:
    """One request's way through route, filters, upstream and back."""

    def __init__(
        self, generation: "Generation", request: GatewayRequest, reactor: IReactorTime
    ) -> None:
        self.generation = generation
        self.request = request
        self.reactor = reactor
        self.info = request.info
        self.route: Optional["RouteRuntime"] = None
        self.freq: Optional[FilterRequest] = None
        self.response_headers: list[tuple[str, str]] = []
        self.pending: Optional[defer.Deferred[Any]] = None
        self.body_transport: Any = None
        self._holding: Optional[Target] = None
        self.done = False
        generation.request_started()
        request.notifyFinish().addBoth(self._finished)

    # -- the way in --

    def start(self) -> None:
        request = self.request
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        raw_path = request.path.decode("latin-1")
        if raw_path.startswith(("http://", "https://")):  # absolute-form (RFC 9112 3.2.2)
            parts = urlsplit(raw_path)
            host, raw_path = parts.netloc, parts.path or "/"
        try:
            path = normalize_path(raw_path)
        except BadPath as e:
            self.answer(400, b"bad request path: %s\n" % (str(e).encode("latin-1"),))
            return
        found = self.generation.router.match(host, path)
        if found is None:
            self.answer(404, b"no route for this host and path\n")
            return
        self.route = route = found[1]
        self.info.route = route.config.name
        self.info.upstream = route.upstream.name
        self.freq = freq = self._filter_request(route, host, path)
        if route.chain is None:
            self.forward()
            return
        self.pending = route.chain.run_request(freq)
        self.pending.addCallback(self._filtered)
        self.pending.addErrback(self._internal_error)  # also a bug in _filtered: a 500, never a hang

    def _filter_request(self, route: "RouteRuntime", host: str, path: str) -> FilterRequest:
        request = self.request
        generation = self.generation
        peer = request.getClientAddress()
        peer_ip = getattr(peer, "host", "") or ""
        xff, client_ip = forwarded_for(
            peer_ip,
            request.requestHeaders.getRawHeaders(b"x-forwarded-for", ()),
            generation.config.server.trusted_proxies,
        )
        self.info.client_ip = client_ip
        scheme = "https" if request.isSecure() else "http"
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, values in end_to_end(request.requestHeaders, drop=_request_drop(route))
            if name != b"x-forwarded-for"
            for value in values
        ]
        headers.append(("x-forwarded-for", xff))
        scheme, forwarded_host = forwarded_scheme_and_host(
            peer_ip, request.requestHeaders, generation.config.server.trusted_proxies,
            scheme=scheme, host=host,
        )
        headers.append(("x-forwarded-proto", scheme))
        if forwarded_host:
            headers.append(("x-forwarded-host", forwarded_host))
        query = request.uri.decode("latin-1").partition("?")[2]
        body = None
        if route.chain is not None and route.chain.wants_body:
            request.content.seek(0)
            body = request.content.read()
        return FilterRequest(
            method=request.method.decode("latin-1"),
            path=path,
            query=query,
            headers=headers,
            client_ip=client_ip,
            body=body,
            route=route.config.name,
            scheme=scheme,
            protocol=(request.clientproto or b"HTTP/1.1").decode("latin-1"),
            source_port=getattr(peer, "port", 0) if client_ip == peer_ip else 0,
        )

    def _filtered(self, result: tuple[Any, list[FilterDecision]]) -> None:
        self.pending = None
        outcome, decisions = result
        self.info.decisions.extend(decisions)
        if self.done:
            return
        if isinstance(outcome, Answer):
            self.answer(outcome.status, outcome.body, outcome.headers)
            return
        assert isinstance(outcome, Continue)
        self.freq = outcome.request
        self.response_headers = list(outcome.response_headers)
        self.forward()

    # -- upstream --

    def forward(self) -> None:
        assert self.route is not None and self.freq is not None
        try:
            candidates = self.route.upstream.candidates(self.freq.client_ip)
        except UpstreamBusy:
            self.info.error = "every target is at max_connections_per_target"
            self.answer(503, b"upstream busy\n", [("retry-after", "1")])
            return
        except NoTargetAvailable:
            self.answer(503, b"no healthy upstream\n")
            return
        retries = 1 if self.freq.method.upper() in self.route.upstream.config.retry_methods else 0
        self._try(candidates[: retries + 1])

    def _try(self, targets: list[Target]) -> None:
        assert self.route is not None and self.freq is not None
        target, rest = targets[0], targets[1:]
        freq = self.freq
        self.info.target = target.url
        headers = Headers()
        for name, value in freq.headers:
            headers.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
        uri = freq.path + ("?" + freq.query if freq.query else "")
        url = (target.url + uri).encode("latin-1")
        timeout = self._upstream_timeout()
        target.active += 1  # until the exchange is over (least_requests)
        self._release_target()
        self._holding = target
        d = self.route.upstream.agent.request(
            freq.method.encode("latin-1"), url, headers, self._body_producer()
        )
        self.pending = d
        # Not Deferred.addTimeout: the Agent turns a cancel into
        # ResponseNeverReceived, so the timeout has to remember it fired.
        timer = self.reactor.callLater(timeout, self._timed_out, d)

        def settled(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        def failed(reason: Failure) -> None:
            self.pending = None
            self._release_target()
            if self.done:
                return
            now = self.reactor.seconds()
            self.info.upstream_status = "timeout" if getattr(d, "timed_out", False) else "error"
            if getattr(d, "timed_out", False):
                self._upstream_error(504, b"upstream timed out\n", target, reason)
                return
            target.failed(now)
            connect_failed = reason.check(ConnectError) and not reason.check(ConnectingCancelledError)
            if connect_failed and rest:
                # Nothing reached the upstream: safe to try another target.
                log.info(
                    "upstream {target} refused ({error}); retrying on {next}",
                    target=target.url, error=reason.getErrorMessage(), next=rest[0].url,
                )
                self._try(rest)
                return
            self._upstream_error(502, b"bad gateway\n", target, reason)

        d.addBoth(settled)
        d.addCallbacks(lambda response: self._got_response(response, target), failed)
        d.addErrback(self._internal_error)

    def _release_target(self) -> None:
        target, self._holding = self._holding, None
        if target is not None:
            target.active -= 1

    def _timed_out(self, d: defer.Deferred[Any]) -> None:
        d.timed_out = True  # type: ignore[attr-defined]
        d.cancel()

    def _body_producer(self) -> Optional[FileBodyProducer]:
        assert self.freq is not None and self.route is not None
        if self.freq.body is not None:
            if not self.freq.body and self.freq.method in ("GET", "HEAD", "DELETE", "OPTIONS"):
                return None
            return FileBodyProducer(io.BytesIO(self.freq.body), cooperator=self.generation.cooperator)
        request = self.request
        content = request.content
        content.seek(0, io.SEEK_END)
        length = content.tell()
        content.seek(0)
        if length == 0 and not (
            request.requestHeaders.hasHeader(b"content-length")
            or request.requestHeaders.hasHeader(b"transfer-encoding")
        ):
            return None
        return FileBodyProducer(content, cooperator=self.generation.cooperator)

    def _upstream_error(self, code: int, body: bytes, target: Target, reason: Failure) -> None:
        self.info.error = _describe(reason)
        log.warn(
            "upstream {upstream} target {target}: {error} -> {code}",
            upstream=self.info.upstream, target=target.url, error=self.info.error, code=code,
        )
        self.answer(code, body)

    def _got_response(self, response: IResponse, target: Target) -> Optional[defer.Deferred[Any]]:
        self.pending = None
        if response.code >= 500:
            target.failed(self.reactor.seconds(), answered=True)  # ejection counts 5xx too
        else:
            target.succeeded()
        self.info.upstream_status = str(response.code)
        if self.done:
            response.deliverBody(_Discard())
            return None
        if self.route is not None and self.route.chain is not None and self.route.chain.has_response_filters:
            return self._filter_response(response)
        self._start_response(
            response.code, response.phrase, end_to_end(response.headers, drop=_connection_named(response))
        )
        self._set_length(response)
        response.deliverBody(_BodyRelay(self))
        return None

    def _upstream_timeout(self) -> float:
        """
        The route's upstream timeout: for the response headers to come, and
        then for each gap in the response body.
        """
        assert self.route is not None
        return self.route.config.timeout or self.generation.config.server.timeouts.upstream

    def _upstream_stalled(self) -> None:
        self.info.error = "upstream sent nothing more of its body for the upstream timeout"
        log.warn(
            "upstream {upstream} target {target}: body stalled, giving up",
            upstream=self.info.upstream, target=self.info.target,
        )

    def _set_length(self, response: IResponse) -> None:
        """
        Keep the upstream's Content-Length: Twisted's client hides it in
        C{response.length}, except for HEAD where it stays a header.
        """
        if self.request.method == b"HEAD":
            lengths = response.headers.getRawHeaders(b"content-length")
            if lengths:
                self.request.responseHeaders.setRawHeaders(b"content-length", lengths[:1])
        elif response.length is not UNKNOWN_LENGTH:
            self.request.responseHeaders.setRawHeaders(
                b"content-length", [b"%d" % (response.length,)]
            )

    def _filter_response(self, response: IResponse) -> defer.Deferred[Any]:
        assert self.route is not None and self.route.chain is not None and self.freq is not None
        chain = self.route.chain
        limit = self.generation.config.server.max_body_bytes
        # Read now: once the body is in, Twisted has let go of the parser
        # that knows which headers the upstream's Connection header named.
        hop_by_hop = _RESPONSE_DROP + _connection_named(response)
        if chain.wants_body:
            collected: defer.Deferred[Optional[bytes]] = defer.Deferred()
            response.deliverBody(_Collect(collected, limit, exchange=self))
        else:
            collected = defer.succeed(None)

        def run(body: Optional[bytes]) -> defer.Deferred[Any]:
            headers = [
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, values in end_to_end(response.headers, drop=hop_by_hop)
                for value in values
            ]
            resp = FilterResponse(status=response.code, headers=headers, body=body)
            d = chain.run_response(self.freq, resp)  # type: ignore[arg-type]
            return d.addCallback(lambda result: (body, result))

        def write(outcome: tuple[Optional[bytes], tuple[Any, list[FilterDecision]]]) -> None:
            body, (resp, decisions) = outcome
            self.info.decisions.extend(decisions)
            buffered = chain.wants_body
            if self.done or isinstance(resp, Answer):
                if not buffered:
                    response.deliverBody(_Discard())
                if not self.done:
                    self.answer(resp.status, resp.body, resp.headers)
                return
            grouped: dict[bytes, list[bytes]] = {}
            for name, value in resp.headers:
                grouped.setdefault(name.encode("latin-1"), []).append(value.encode("latin-1"))
            phrase = response.phrase if resp.status == response.code else None
            self._start_response(resp.status, phrase, list(grouped.items()))
            if resp.body is None and not buffered:
                self._set_length(response)
                response.deliverBody(_BodyRelay(self))
                return
            if not buffered:
                response.deliverBody(_Discard())
            payload = resp.body if resp.body is not None else body or b""
            self.request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(payload)])
            self.request.write(payload)
            self.request.finish()

        def too_large(reason: Failure) -> None:
            if reason.trap(_BodyTooLarge, _BodyStalled) is _BodyStalled:
                self.answer(504, b"upstream timed out\n")
            else:
                self.answer(502, b"upstream response too large for the response filters\n")

        collected.addCallback(run)
        collected.addCallbacks(write, too_large)
        collected.addErrback(self._internal_error)
        return collected

    def _start_response(
        self, code: int, phrase: Optional[bytes], headers: list[tuple[bytes, list[bytes]]]
    ) -> None:
        request = self.request
        request.setResponseCode(code, phrase)
        out = request.responseHeaders
        out.removeHeader(b"server")
        out.removeHeader(b"date")
        for name, values in headers:
            if name != b"content-length":
                out.setRawHeaders(name, values)
        for name, value in self.response_headers:
            out.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))

    # -- the way out --

    def answer(
        self, code: int, body: bytes, headers: Optional[list[tuple[str, str]]] = None
    ) -> None:
        """Answer the client from the gateway itself (errors, filter answers)."""
        if self.done:
            return
        request = self.request
        request.setResponseCode(code)
        out = request.responseHeaders
        out.removeHeader(b"server")
        names = set()
        for name, value in headers or ():
            names.add(name.lower())
            out.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
        if "content-type" not in names:
            out.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
        out.setRawHeaders(b"content-length", [b"%d" % len(body)])
        request.write(body)
        request.finish()

    def _internal_error(self, reason: Failure) -> None:
        if self.done and reason.check(defer.CancelledError):
            return  # the client left and _finished cancelled the filter call
        log.failure("internal error while proxying", reason)
        self.info.error = reason.getErrorMessage()
        if not self.done and not self.request.startedWriting:
            self.answer(500, b"internal gateway error\n")
        elif not self.done:
            self.request.loseConnection()

    def _finished(self, result: Any) -> None:
        """The client got its answer, or went away: stop all work for it."""
        self.done = True
        self._release_target()
        self.generation.request_finished()
        if self.route is not None and self.route.chain is not None and self.freq is not None:
            # http-wasm filters hold an instance per request until now.
            self.route.chain.release(self.freq)
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.cancel()
        if self.body_transport is not None:
            self.body_transport.stopProducing()
            self.body_transport = None


def _describe(reason: Failure) -> str:
    """
    One line on why an upstream request failed; Twisted's client wraps the
    real causes (refused, TLS verification, reset) in a list.
    """
    causes = getattr(reason.value, "reasons", None)
    if causes:
        return "; ".join(
            f"{type(c.value).__name__}: {c.getErrorMessage()}" if isinstance(c, Failure) else str(c)
            for c in causes
        )
    return f"{type(reason.value).__name__}: {reason.getErrorMessage()}"


def _connection_named(response: IResponse) -> tuple[bytes, ...]:
    """
    The header names the upstream's Connection header lists: hop-by-hop.

    Twisted's client keeps Connection out of C{response.headers}; its parser
    still holds it while the body is unread. (Private, hence the fallback.)
    """
    transport = getattr(getattr(response, "_transport", None), "_producer", None)
    protocol = getattr(transport, "protocol", None)
    for _ in range(3):  # endpoint and TLS wrappers
        protocol = getattr(protocol, "_wrappedProtocol", None) or getattr(
            protocol, "wrappedProtocol", protocol
        )
    headers = getattr(getattr(protocol, "_parser", None), "connHeaders", None)
    if headers is None:
        return ()
    return tuple(
        token.strip().lower()
        for value in headers.getRawHeaders(b"connection", ())
        for token in value.split(b",")
    )


class _BodyRelay(Protocol, TimeoutMixin):
    """
    Streams an upstream body to the client, pausing one for the other; an
    upstream that sends nothing for the route's timeout is given up on.
    """

    def __init__(self, exchange: _Exchange) -> None:
        self.exchange = exchange
        self.producer: Optional[_Backpressure] = None
        self.callLater = exchange.reactor.callLater  # TimeoutMixin's clock

    def connectionMade(self) -> None:
        exchange = self.exchange
        if exchange.done:
            self.transport.stopProducing()
            return
        self.setTimeout(exchange._upstream_timeout())
        self.producer = producer = _Backpressure(
            self.transport,
            clock=exchange.reactor,
            timeout=exchange.generation.config.server.timeouts.write,
            on_stall=self._stalled,
        )
        exchange.body_transport = producer
        exchange.request.registerProducer(producer, True)

    def _stalled(self) -> None:
        """The client read nothing for the write timeout: give up on it."""
        exchange = self.exchange
        exchange.info.error = "client stopped reading (write timeout)"
        log.info("client stopped reading for {t}s: closing", t=exchange.generation.config.server.timeouts.write)
        transport = exchange.request.channel.transport if exchange.request.channel else None
        if transport is not None:
            transport.abortConnection()

    def timeoutConnection(self) -> None:
        if self.producer is not None and self.producer.paused:
            self.setTimeout(self.timeOut)  # the client is slow, not the upstream
            return
        self.exchange._upstream_stalled()
        self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        if not self.exchange.done:
            self.exchange.request.write(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        exchange = self.exchange
        exchange.body_transport = None
        self.setTimeout(None)
        if self.producer is not None:
            self.producer.cancel_stall_timer()
        if exchange.done:
            return
        request = exchange.request
        request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            request.finish()
        else:
            # Headers are out; the only honest signal left is to cut the
            # connection so the client sees a truncated response.
            exchange.info.error = f"upstream body failed: {reason.getErrorMessage()}"
            log.warn("upstream body failed: {error}", error=reason.getErrorMessage())
            request.loseConnection()


@implementer(IPushProducer)
class _Backpressure:
    """
    The upstream body's producer as the client connection sees it: pausing
    it pauses the upstream, and a pause longer than C{timeout} (the client
    read nothing meanwhile) calls C{on_stall}. twisted.web suspends its idle
    timeout while a response is being written, so without this a client
    that stops reading would hold the connection, and an upstream one,
    forever.
    """

    def __init__(
        self, upstream: Any, *, clock: IReactorTime, timeout: float, on_stall: Callable[[], None]
    ) -> None:
        self._upstream = upstream
        self._clock = clock
        self._timeout = timeout
        self._on_stall = on_stall
        self._timer: Any = None

    def pauseProducing(self) -> None:
        self._upstream.pauseProducing()
        if self._timer is None:
            self._timer = self._clock.callLater(self._timeout, self._stall)

    def resumeProducing(self) -> None:
        self.cancel_stall_timer()
        self._upstream.resumeProducing()

    def stopProducing(self) -> None:
        self.cancel_stall_timer()
        self._upstream.stopProducing()

    @property
    def paused(self) -> bool:
        """Whether the client's connection has paused the upstream body."""
        return self._timer is not None

    def cancel_stall_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _stall(self) -> None:
        self._timer = None
        self._upstream.stopProducing()
        self._on_stall()


class _BodyTooLarge(Exception):
    pass


class _BodyStalled(Exception):
    pass


class _Collect(Protocol, TimeoutMixin):
    """
    Buffers a body for response filters, up to a limit; an upstream that
    sends nothing for the route's timeout fails it with L{_BodyStalled}.
    """

    def __init__(self, done: defer.Deferred[Optional[bytes]], limit: int, *, exchange: _Exchange) -> None:
        self.done = done
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.exchange = exchange
        self.stalled = False
        self.callLater = exchange.reactor.callLater  # TimeoutMixin's clock

    def connectionMade(self) -> None:
        self.setTimeout(self.exchange._upstream_timeout())

    def timeoutConnection(self) -> None:
        self.stalled = True
        self.exchange._upstream_stalled()
        self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self.size += len(data)
        if self.size > self.limit:
            self.transport.stopProducing()
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        self.setTimeout(None)
        if self.stalled:
            self.done.errback(_BodyStalled())
        elif self.size > self.limit:
            self.done.errback(_BodyTooLarge())
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


class _Discard(Protocol):
    def connectionMade(self) -> None:
        self.transport.stopProducing()
