# -*- test-case-name: tests.test_http_body -*-
"""
What a wire protocol hands the exchange core (L{wasmgate.proxy}): the
request, its body as it arrives, and a channel to answer on. HTTP/1.1
connections, HTTP/2 streams and upgraded tunnels all speak through these,
so the core never sees framing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, ITransport
from zope.interface import implementer

if TYPE_CHECKING:
    from wasmgate.http.tunnel import Tunnel

Header = tuple[bytes, bytes]


class BodyTooLarge(Exception):
    """The request body went past C{max_body_bytes} (413)."""


class BodyTimedOut(Exception):
    """The client stopped sending its body for longer than C{timeouts.read} (408)."""


class BodyMalformed(Exception):
    """The request body broke HTTP/1.1 framing (a bad chunk size, say): 400."""


class ClientGone(Exception):
    """The client's connection (or stream) closed before the body ended."""


class IncomingRequest:
    """
    A request as the client sent it: raw target, header names in lower
    case in their order, and the body (C{None} when there is none).
    """

    __slots__ = (
        "method", "target", "version", "headers", "peer_host", "peer_port", "secure", "body", "started",
        "upgrade", "server_name",
    )

    def __init__(
        self,
        *,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: list[Header],
        peer_host: str,
        peer_port: int,
        secure: bool,
        body: Optional["RequestBody"],
        started: float,
        upgrade: Optional[bytes] = None,
        server_name: str = "",
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        """C{HTTP/1.1}, C{HTTP/1.0} or C{HTTP/2}."""
        self.headers = headers
        self.peer_host = peer_host
        self.peer_port = peer_port
        self.secure = secure
        self.body = body
        self.started = started
        """When the first byte of the request arrived (reactor seconds)."""
        self.upgrade = upgrade
        """C{websocket} when the client asks to switch to it (HTTP/1.1 only)."""
        self.server_name = server_name
        """The TLS server name (SNI) the client asked for, if any."""

    def header(self, name: bytes) -> Optional[bytes]:
        """The first value of header C{name} (lower case), or None."""
        for n, v in self.headers:
            if n == name:
                return v
        return None


def server_name(transport: object) -> str:
    """The SNI name a TLS connection's client asked for ("" when none)."""
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return ""
    try:
        name = get_handle().get_servername()
    except Exception:  # not a TLS handle after all
        return ""
    return name.decode("ascii", "replace") if name else ""


class BodySource(Protocol):
    """The wire side of a body: can stop and restart reading the client."""

    def pause_body(self) -> None: ...

    def resume_body(self) -> None: ...

    def body_wanted(self) -> None:
        """Someone started reading the body (HTTP/1.1: time for 100 Continue)."""


class BodySink(Protocol):
    """Where a streamed body goes (the upstream request)."""

    def body_data(self, data: bytes) -> None: ...

    def body_end(self) -> None: ...

    def body_failed(self, reason: Exception) -> None: ...


class ResponseChannel(Protocol):
    """
    How the exchange core answers: one response per request, its head
    once, then body bytes, then C{finish} (or C{abort} to cut it short).
    """

    started: bool
    """Whether the response head is out (after that, errors can only cut)."""
    status: int
    sent_bytes: int

    def respond(
        self,
        status: int,
        reason: bytes,
        headers: list[Header],
        *,
        length: Optional[int],
        body: Optional[bytes] = None,
    ) -> None:
        """
        Send the head; C{length} is the body's length (None: unknown,
        streamed); with C{body} the whole response is sent and finished.
        """

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None:
        """Cut the response (the client sees it truncated) and the connection."""

    def pause_upstream_with(self, producer: IPushProducer) -> None:
        """Let the client's pace pause C{producer} (the upstream body)."""

    def stop_pausing(self) -> None: ...

    def open_tunnel(
        self, upstream: ITransport, *, idle_timeout: float, on_close: Callable[["Tunnel", str], None]
    ) -> "Tunnel":
        """
        After a 101 for an upgrade: splice the client's connection to
        C{upstream}'s (a wire protocol that cannot raises NotImplementedError).
        """


@implementer(IPushProducer)
class RequestBody:
    """
    A request body on its way in, read once: either collected whole
    (L{collect}, for filters that read it) or streamed to a L{BodySink}
    (L{stream_to}, the upstream request). What arrives before a reader
    is there is kept, up to C{high_water} bytes before the client is
    paused; a streaming reader's pauses pause the client too.
    """

    high_water = 256 * 1024

    def __init__(self, source: BodySource, *, length: Optional[int], limit: int) -> None:
        self._source = source
        self.length = length
        """The declared Content-Length, or None for a chunked body."""
        self.limit = limit
        self.received = 0
        self.complete = False
        self.failure: Optional[Exception] = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._sink: Optional[BodySink] = None
        self._collecting: Optional[Deferred[bytes]] = None
        self._paused_by_sink = False
        self._paused_source = False
        self._wanted = False

    # -- the wire side ---------------------------------------------------

    def data(self, chunk: bytes) -> None:
        if self.failure is not None:
            return
        self.received += len(chunk)
        if self.received > self.limit:
            self.fail(BodyTooLarge())
            return
        sink = self._sink
        if sink is not None and not self._paused_by_sink and not self._buffer:
            sink.body_data(chunk)
            return
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        if self._collecting is None and self._buffered > self.high_water:
            self._pause_source()

    def end(self) -> None:
        if self.failure is not None or self.complete:
            return
        self.complete = True
        self._resume_source()  # all in: what the connection reads next is not ours
        # Nothing more to ask of the wire, and the source holds this body:
        # letting go keeps a finished request free of reference cycles.
        self._source = _SETTLED
        if self._collecting is not None:
            d, self._collecting = self._collecting, None
            d.callback(self._take())
        elif self._sink is not None and not self._buffer:
            self._end_sink()

    def fail(self, reason: Exception) -> None:
        """The body will not be whole (too large, timed out, client gone)."""
        if self.failure is not None or self.complete:
            return
        self.failure = reason
        self._buffer = []
        self._buffered = 0
        if self._collecting is not None:
            d, self._collecting = self._collecting, None
            d.errback(reason)
        elif self._sink is not None:
            sink, self._sink = self._sink, None
            sink.body_failed(reason)

    # -- the reader's side -------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether a reader took the body (it cannot be read again)."""
        return self._wanted

    def collect(self) -> "Deferred[bytes]":
        """The whole body, once it is in (fails with the body's failure)."""
        self._want()
        if self.failure is not None:
            return _failed(self.failure)
        if self.complete:
            return _succeeded(self._take())
        self._collecting = Deferred()
        self._resume_source()
        return self._collecting

    def stream_to(self, sink: BodySink) -> None:
        """Deliver what came and what comes to C{sink}, in order."""
        self._want()
        if self.failure is not None:
            sink.body_failed(self.failure)
            return
        self._sink = sink
        self._flush()

    def _want(self) -> None:
        if not self._wanted:
            self._wanted = True
            self._source.body_wanted()

    def _take(self) -> bytes:
        data = b"".join(self._buffer)
        self._buffer = []
        self._buffered = 0
        return data

    def _flush(self) -> None:
        sink = self._sink
        assert sink is not None
        while self._buffer and not self._paused_by_sink:
            chunk = self._buffer.pop(0)
            self._buffered -= len(chunk)
            sink.body_data(chunk)
            if self._sink is None or self.failure is not None:
                return
        if self._paused_by_sink:
            return
        if self.complete:
            self._end_sink()
        else:
            self._resume_source()

    def _end_sink(self) -> None:
        # The sink (the upstream request) holds this body: once it has it
        # all, let go of it, so that neither waits for the garbage collector.
        sink, self._sink = self._sink, None
        assert sink is not None
        sink.body_end()

    def _pause_source(self) -> None:
        if not self._paused_source:
            self._paused_source = True
            self._source.pause_body()

    def _resume_source(self) -> None:
        if self._paused_source:
            self._paused_source = False
            self._source.resume_body()

    # -- IPushProducer, for the upstream transport ------------------------

    def pauseProducing(self) -> None:
        self._paused_by_sink = True
        if not self.complete:
            self._pause_source()

    def resumeProducing(self) -> None:
        self._paused_by_sink = False
        if self._sink is not None and self.failure is None:
            self._flush()

    def stopProducing(self) -> None:
        self._sink = None
        self._paused_by_sink = False


class _Settled:
    """The source of a body that is all in: there is nothing left to ask of it."""

    def pause_body(self) -> None:
        pass

    def resume_body(self) -> None:
        pass

    def body_wanted(self) -> None:
        pass


_SETTLED: BodySource = _Settled()


def _succeeded(value: bytes) -> "Deferred[bytes]":
    d: Deferred[bytes] = Deferred()
    d.callback(value)
    return d


def _failed(reason: Exception) -> "Deferred[bytes]":
    d: Deferred[bytes] = Deferred()
    d.errback(reason)
    return d


class RequestRecord:
    """What the access log and metrics want to know about one request."""

    __slots__ = (
        "started", "method", "path", "client_ip", "route", "upstream", "target", "status", "bytes",
        "decisions", "error", "upstream_status", "user_agent", "protocol", "bytes_in", "tunnel",
        "request_id", "host", "sni", "trace", "upstream_started", "upstream_ended", "attempts", "ended",
    )

    def __init__(self, started: float) -> None:
        self.started = started
        self.method = "-"
        self.path = "-"
        self.client_ip = ""
        """After trusted-proxy handling (the peer's address before routing)."""
        self.route = ""
        self.upstream = ""
        self.target = ""
        self.status = 0
        self.bytes = 0
        self.decisions: list = []
        self.error = ""
        self.upstream_status = ""
        self.user_agent: Optional[str] = None
        self.protocol = "HTTP/1.1"
        self.bytes_in = 0
        """A tunnel's bytes from the client."""
        self.tunnel: Optional[str] = None
        """Why a tunnel (WebSocket) ended; None for plain requests."""
        self.request_id = ""
        self.host = ""
        """The host the request was routed by."""
        self.sni = ""
        """The TLS server name the client asked for."""
        self.trace: Any = None
        """Its L{wasmgate._ids.TraceContext}, when it has one."""
        self.upstream_started = 0.0
        """When the request went to the upstream (0: it did not)."""
        self.upstream_ended = 0.0
        self.attempts = 0
        """Connections tried for it (a retry on another target adds one)."""
        self.ended = 0.0
        """When the exchange ended (reactor seconds)."""
