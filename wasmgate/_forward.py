# -*- test-case-name: tests.test_proxy,tests.test_http_conformance -*-
"""
One request's trip to its upstream, for the exchange core: which target,
which connection, the head and the body on the way there, timeouts and
retries, and the response handed back as it comes.

A L{Forward} picks targets by the upstream's policy, takes a kept-alive
connection from the generation's pool (or connects), writes the request
head, and streams the client's body as the upstream takes it (or writes a
body filters read). A connect failure of an idempotent request is retried
on another target; a kept-alive connection the upstream closed as a
body-less idempotent request went out is retried once on a fresh one. No
response head within the route's timeout is a 504; a gap that long in the
body cuts the response. It reports to its L{ForwardSink} (the exchange).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wasmgate.http import _wire
from wasmgate.http.message import BodyMalformed, BodyTimedOut, BodyTooLarge, ClientGone, Header
from wasmgate.upstream import NoTargetAvailable, Target, UpstreamBusy

if TYPE_CHECKING:
    from wasmgate.generation import Generation
    from wasmgate.http.message import IncomingRequest, RequestRecord
    from wasmgate.http.upstream import UpstreamConnection
    from wasmgate.proxy import Gateway
    from wasmgate.upstream import Upstream

log = Logger()

_RETRY_FRESH = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"})
"""Idempotent methods retried once on a fresh connection when a kept-alive
one closed before any answer (only without a body, as Twisted's pool did)."""
_NO_EMPTY_BODY = frozenset({b"GET", b"HEAD", b"DELETE", b"OPTIONS"})


class ForwardSink(TypingProtocol):
    """What a L{Forward} reports to (the exchange)."""

    def upstream_head(self, status: int, reason: bytes, headers: list[Header], length: Optional[int]) -> None: ...

    def upstream_data(self, data: bytes) -> None: ...

    def upstream_done(self) -> None: ...

    def upstream_failed(self, status: int, body: bytes, headers: list[Header]) -> None:
        """No response will come: answer the client with this instead."""

    def upstream_upgraded(self, connection: "UpstreamConnection", rest: bytes) -> None:
        """The upstream switched protocols (101): splice C{connection} to the client."""

    def upstream_cut(self, *, timed_out: bool) -> None:
        """The response broke after its head came: cut the client's (or answer 502/504)."""


@implementer(IPushProducer)
class Forward:
    """
    The upstream request of one exchange. As an L{IPushProducer} it is the
    upstream body's producer the client's connection pauses.
    """

    def __init__(
        self,
        sink: ForwardSink,
        *,
        gateway: "Gateway",
        generation: "Generation",
        upstream: "Upstream",
        timeout: float,
        request: "IncomingRequest",
        record: "RequestRecord",
        method: bytes,
        uri: bytes,
        headers: list[Header],
        body: Optional[bytes],
        declared_length: bool,
    ) -> None:
        self.sink = sink
        self.gateway = gateway
        self.generation = generation
        self.upstream = upstream
        self.timeout = timeout
        self.request = request
        self.record = record
        self.method = method
        self.uri = uri
        self.headers = headers
        self.body = body
        """A body filters read (sent whole); else the request's own streams."""
        self.declared_length = declared_length
        self.conn: Optional["UpstreamConnection"] = None
        self.ended = False
        """The response is complete, failed, or given up on."""
        self.paused = False
        self._pending: Optional[Deferred[Any]] = None
        self._targets: list[Target] = []
        self._holding: Optional[Target] = None
        self._fresh = False
        self._head_seen = False
        self._sent_at = 0.0

    def start(self) -> None:
        try:
            candidates = self.upstream.candidates(self.record.client_ip)
        except UpstreamBusy:
            self.record.error = "every target is at max_connections_per_target"
            self._fail(503, b"upstream busy\n", [(b"retry-after", b"1")])
            return
        except NoTargetAvailable:
            self._fail(503, b"no healthy upstream\n")
            return
        retry = self.method.decode("latin-1").upper() in self.upstream.config.retry_methods
        self._targets = candidates[: 2 if retry else 1]
        self._try()

    def stop(self) -> None:
        """Give up: a connection in progress is cancelled, one in use reset."""
        if not self.ended and self.record.upstream_started:
            self.record.upstream_ended = self.gateway.clock.seconds()
        self.ended = True
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        self._release_target()

    def detach(self) -> None:
        """
        Stop, and let go of the sink for good: the exchange holds this
        forward and this forward the exchange, and once the exchange is over
        both should go with their last reference instead of waiting for the
        garbage collector (which, tuned for a server, runs rarely: under load
        that was tens of MiB of finished exchanges).
        """
        self.stop()
        self.sink = _GONE

    # -- targets and connections ---------------------------------------------

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
        d = self._pending = pool.connect(target)
        d.addCallbacks(self._connected, self._connect_failed, errbackArgs=(target,))
        d.addErrback(self._bug)

    def _connected(self, conn: "UpstreamConnection") -> None:
        self._pending = None
        if self.ended:
            self.generation.pool.release(conn)  # unused: still good
            return
        self._send(conn)

    def _connect_failed(self, reason: Failure, target: Target) -> None:
        self._pending = None
        if self.ended:
            return
        self.record.attempts += 1
        connect_failed = reason.check(ConnectError) and not reason.check(ConnectingCancelledError)
        if connect_failed and target.failed(self.gateway.clock.seconds()):
            self.gateway.ejected(self.record.upstream, target, reason.getErrorMessage())
        if connect_failed and self._targets:
            # Nothing reached the upstream: safe to try another target.
            log.info(
                "upstream {target} refused ({error}); retrying on {next}",
                target=target.url, error=reason.getErrorMessage(), next=self._targets[0].url,
            )
            self._try()
            return
        self._failed_before_head(reason)

    def _send(self, conn: "UpstreamConnection") -> None:
        self.conn = conn
        self._sent_at = now = self.gateway.clock.seconds()
        record = self.record
        record.attempts += 1
        if not record.upstream_started:
            record.upstream_started = now
        first_check = now + self.timeout
        method = self.method
        head = b"%s %s HTTP/1.1\r\n%s" % (method, self.uri, _wire.header_block(self.headers))
        head_only = method == b"HEAD"
        body = self.request.body
        if self.body is not None:
            if self.body or method not in _NO_EMPTY_BODY:
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
            if self.declared_length:
                head += b"content-length: 0\r\n"
            conn.send(
                head + b"\r\n", self, head_only=head_only, first_check=first_check,
                upgrade=self.request.upgrade is not None,
            )

    def _release_target(self) -> None:
        target, self._holding = self._holding, None
        if target is not None:
            target.active -= 1

    # -- timeouts (the connection's timer asks) ------------------------------

    def upstream_deadline(self, now: float) -> Optional[float]:
        """
        No response head within the route's timeout is a 504; after it, a
        gap that long in the body (while the client keeps reading) cuts
        the response. Returns when to look again, or None.
        """
        if self.ended:
            return None
        timeout = self.timeout
        if not self._head_seen:
            if now < self._sent_at + timeout:
                return self._sent_at + timeout
            self.record.upstream_status = "timeout"
            self.record.error = "upstream sent no response headers within %gs" % (timeout,)
            log.warn(
                "upstream {upstream} target {target}: timed out -> 504",
                upstream=self.record.upstream, target=self.record.target,
            )
            self.stop()
            self.sink.upstream_failed(504, b"upstream timed out\n", [])
            return None
        conn = self.conn
        if self.paused or conn is None:
            return now + timeout  # the client is slow, not the upstream
        if now < conn.last_data + timeout:
            return conn.last_data + timeout
        self.record.error = "upstream sent nothing more of its body for the upstream timeout"
        log.warn(
            "upstream {upstream} target {target}: body stalled, giving up",
            upstream=self.record.upstream, target=self.record.target,
        )
        self.stop()
        self.sink.upstream_cut(timed_out=True)
        return None

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
        if self.ended or isinstance(reason, ClientGone):
            return
        self.stop()
        status, text = body_failure(reason)
        self.record.error = text.decode().strip()
        self.sink.upstream_failed(status, text, [])

    # -- the response (ResponseHandler) ----------------------------------------

    def response_head(self, status: int, reason: bytes, headers: list[Header], length: Optional[int]) -> None:
        self._head_seen = True
        self.record.upstream_status = str(status)
        if self._holding is not None:
            self._holding.succeeded()  # it answered: it is up
        if not self.ended:
            self.sink.upstream_head(status, reason, headers, length)

    def response_data(self, data: bytes) -> None:
        if not self.ended:
            self.sink.upstream_data(data)

    def response_upgraded(self, connection: "UpstreamConnection", rest: bytes) -> None:
        self.conn = None  # the tunnel's now
        if self.ended:
            connection.abort()
            return
        self.ended = True
        self.record.upstream_ended = self.gateway.clock.seconds()
        self._release_target()
        self.sink.upstream_upgraded(connection, rest)

    def response_done(self) -> None:
        self.conn = None
        if self.ended:
            return
        self.ended = True
        self.record.upstream_ended = self.gateway.clock.seconds()
        self._release_target()
        self.sink.upstream_done()

    def response_failed(self, reason: Failure, *, received: bool) -> None:
        conn, self.conn = self.conn, None
        if self.ended:
            return
        if self._head_seen:
            # Headers are out; the only honest signal left is to cut the
            # connection so the client sees a truncated response.
            self.ended = True
            self.record.upstream_ended = self.gateway.clock.seconds()
            self._release_target()
            self.record.error = f"upstream body failed: {reason.getErrorMessage()}"
            log.warn("upstream body failed: {error}", error=reason.getErrorMessage())
            self.sink.upstream_cut(timed_out=False)
            return
        if (
            conn is not None and conn.reused and not received and not self._fresh
            and self.method in _RETRY_FRESH and self.request.body is None and not self.body
        ):
            # A kept-alive connection the upstream closed as the request
            # went out: nothing was acted on; once more, on a fresh one.
            self._fresh = True
            assert self._holding is not None
            self._targets.insert(0, self._holding)
            self._try()
            return
        self._failed_before_head(reason)

    def _failed_before_head(self, reason: Failure) -> None:
        self.record.upstream_status = "error"
        self.record.error = f"{type(reason.value).__name__}: {reason.getErrorMessage()}"
        log.warn(
            "upstream {upstream} target {target}: {error} -> 502",
            upstream=self.record.upstream, target=self.record.target, error=self.record.error,
        )
        self.stop()
        self.sink.upstream_failed(502, b"bad gateway\n", [])

    def _fail(self, status: int, body: bytes, headers: Optional[list[Header]] = None) -> None:
        self.ended = True
        self.sink.upstream_failed(status, body, headers or [])

    def _bug(self, reason: Failure) -> None:
        log.failure("internal error while forwarding", reason)
        if not self.ended:
            self.stop()
            self.sink.upstream_failed(500, b"internal gateway error\n", [])

    # -- backpressure from the client (IPushProducer) ----------------------

    def pauseProducing(self) -> None:
        self.paused = True
        conn = self.conn
        if conn is not None and conn.transport is not None:
            conn.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        conn = self.conn
        if conn is not None and conn.transport is not None:
            conn.last_data = self.gateway.clock.seconds()  # a pause is not the upstream's gap
            conn.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.stop()


def body_failure(reason: BaseException) -> tuple[int, bytes]:
    """The answer to a request body that will not be whole."""
    if isinstance(reason, BodyTooLarge):
        return 413, b"request body too large\n"
    if isinstance(reason, BodyTimedOut):
        return 408, b"request not received in time\n"
    if isinstance(reason, BodyMalformed):
        return 400, b"malformed request body\n"
    return 500, b"internal gateway error\n"


class _Gone:
    """The sink of a stopped forward: whatever still arrives goes nowhere."""

    def upstream_head(self, *args: object, **kwargs: object) -> None:
        pass

    upstream_data = upstream_done = upstream_failed = upstream_cut = upstream_upgraded = upstream_head


_GONE = _Gone()
