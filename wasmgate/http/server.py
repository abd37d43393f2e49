# -*- test-case-name: tests.test_http_server -*-
"""
The HTTP/1.1 server side: a Twisted L{Protocol} parsing requests with
llhttp (C{httptools}, strict: no leniency flags) and answering them in
order through L{wasmgate.http.message.ResponseChannel}s.

What it owns is framing and the connection: request-line and header limits
(414, 431), the framing rules of RFC 9112 (one Host, a known transfer
coding, no HTTP/0.9), keep-alive, pipelining (requests are parsed ahead and
answered one at a time, reading pauses while one waits), C{Expect:
100-continue}, and the client-side timeouts. Everything about what to do
with a request is the exchange core's, reached through the factory's
C{start_exchange}.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Optional, Protocol as TypingProtocol

import httptools
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wasmgate.http import _wire
from wasmgate.http._timers import Deadline, StallWatch
from wasmgate.http.message import (
    BodyMalformed,
    BodyTimedOut,
    ClientGone,
    Header,
    IncomingRequest,
    RequestBody,
    RequestRecord,
)

log = Logger()


class ServerSettings:
    """Limits and timeouts of the client side; a reload changes them in place."""

    def __init__(
        self,
        *,
        max_body_bytes: int = 1024 * 1024,
        read_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        write_timeout: float = 10.0,
        max_request_line: int = 8192,
        max_header_bytes: int = 65536,
        max_headers: int = 100,
        max_connections: int = 10_000,
        banner: Optional[bytes] = None,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.max_request_line = max_request_line
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_connections = max_connections
        self.banner = banner
        """A C{Server} header for answers the gateway writes itself."""


class Exchange(TypingProtocol):
    """What the exchange core gives back for a request it took on."""

    def client_gone(self) -> None:
        """The client's connection closed before the response was done."""


StartExchange = Callable[[IncomingRequest, "Message"], Exchange]


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing this connection."""


class Message:
    """
    One request on a connection, and the L{ResponseChannel} its answer
    goes out on.
    """

    __slots__ = (
        "protocol", "url", "url_size", "headers", "header_bytes", "wire_bytes", "arrived", "request", "body",
        "keep_alive", "head_only", "version11", "headers_done", "ended", "exchange", "refusal",
        "expect_continue", "started_response", "status", "sent_bytes", "chunked", "finished",
    )

    def __init__(self, protocol: "HTTP11ServerProtocol", arrived: float) -> None:
        self.protocol = protocol
        self.url: list[bytes] = []
        self.url_size = 0
        self.headers: list[Header] = []
        self.header_bytes = 0
        self.wire_bytes = 0
        self.arrived = arrived
        self.request: Optional[IncomingRequest] = None
        self.body: Optional[RequestBody] = None
        self.keep_alive = True
        self.head_only = False
        self.version11 = True
        self.headers_done = False
        self.ended = False
        self.exchange: Optional[Exchange] = None
        self.refusal: Optional[tuple[int, bytes]] = None
        self.expect_continue = False
        self.started_response = False
        self.status = 0
        self.sent_bytes = 0
        self.chunked = False
        self.finished = False

    # -- ResponseChannel ---------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether the response head is out."""
        return self.started_response

    def respond(
        self,
        status: int,
        reason: bytes,
        headers: list[Header],
        *,
        length: Optional[int],
        body: Optional[bytes] = None,
    ) -> None:
        protocol = self.protocol
        if self.started_response or protocol.transport is None:
            return
        self.started_response = True
        self.status = status
        no_body = self.head_only or status == 204 or status == 304 or status < 200
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason), _wire.header_block(headers)]
        if length is not None and status != 204 and status >= 200:
            parts.append(b"Content-Length: %d\r\n" % (length,))
        elif not no_body:
            if self.version11:
                self.chunked = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False  # the body ends when the connection does
        if protocol.factory.draining or protocol.closing or (body is not None and not self.ended):
            # (Answered whole before the request body is in: the rest of
            # it will not be read, so the connection ends here.)
            self.keep_alive = False
        if not self.keep_alive:
            parts.append(b"Connection: close\r\n")
        elif not self.version11:
            parts.append(b"Connection: keep-alive\r\n")
        if not _has_date(headers):
            parts.append(b"Date: " + protocol.factory.date(protocol.clock.seconds()) + b"\r\n")
        parts.append(b"\r\n")
        if body is not None:
            if not no_body:
                parts.append(body)
                self.sent_bytes = len(body)
            protocol.transport.write(b"".join(parts))
            self.finish()
            return
        protocol.transport.write(b"".join(parts))

    def write(self, data: bytes) -> None:
        transport = self.protocol.transport
        if self.finished or transport is None or not data or self.head_only:
            return
        self.sent_bytes += len(data)
        transport.write(_wire.chunk(data) if self.chunked else data)

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.chunked and self.protocol.transport is not None:
            self.protocol.transport.write(_wire.LAST_CHUNK)
        self.protocol.response_done(self)

    def abort(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.protocol.abort()

    def pause_upstream_with(self, producer: IPushProducer) -> None:
        protocol = self.protocol
        if protocol.transport is None or self.finished:
            producer.stopProducing()
            return
        watch = StallWatch(
            producer, clock=protocol.clock, timeout=protocol.settings.write_timeout,
            on_stall=protocol.write_stalled,
        )
        protocol.stall_watch = watch
        protocol.transport.registerProducer(watch, True)

    def stop_pausing(self) -> None:
        self.protocol.unregister_stall_watch()

    # -- BodySource ----------------------------------------------------------

    def pause_body(self) -> None:
        self.protocol.pause_reading("body")

    def resume_body(self) -> None:
        self.protocol.resume_reading("body")

    def body_wanted(self) -> None:
        if self.expect_continue and not self.started_response and self.protocol.transport is not None:
            self.expect_continue = False
            self.protocol.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")


def _has_date(headers: list[Header]) -> bool:
    for name, _ in headers:
        if name == b"date":
            return True
    return False


class HTTP11ServerProtocol(Protocol):
    """One client connection speaking HTTP/1.1 (or 1.0)."""

    factory: "HTTPServerFactory"

    def __init__(self, factory: "HTTPServerFactory") -> None:
        self.factory = factory
        self.settings = factory.settings
        self.clock = factory.clock
        self.closing = False
        self.stall_watch: Optional[StallWatch] = None
        self._parser = httptools.HttpRequestParser(self)
        self._parsing: Optional[Message] = None
        self._queue: deque[Message] = deque()
        self._pauses: set[str] = set()
        self._last_read = 0.0
        self._idle_since = 0.0
        self._fresh = True
        self._secure = False
        self._peer_host = ""
        self._peer_port = 0
        self._deadline = Deadline(self.clock, self._timed_out)
        self._discarding = False

    # -- connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        self._secure = ISSLTransport.providedBy(transport)
        peer = transport.getPeer()
        self._peer_host = getattr(peer, "host", "") or ""
        self._peer_port = getattr(peer, "port", 0) or 0
        self._idle_since = self._last_read = self.clock.seconds()
        self.factory.connections.add(self)
        self._rearm()

    def connectionLost(self, reason: Failure = Failure(ClientGone())) -> None:
        self.closing = True
        self._deadline.cancel()
        self.factory.connection_closed(self)
        if self.stall_watch is not None:
            self.stall_watch.cancel()
            self.stall_watch = None
        messages = list(self._queue)
        if self._parsing is not None and self._parsing not in messages:
            messages.append(self._parsing)
        self._queue.clear()
        self._parsing = None
        for message in messages:
            if message.body is not None:
                message.body.fail(ClientGone())
            exchange, message.exchange = message.exchange, None
            if exchange is not None and not message.finished:
                message.finished = True
                exchange.client_gone()

    @property
    def idle(self) -> bool:
        """Waiting for a request (nothing of one received, nothing to answer)."""
        return not self._queue and self._parsing is None

    @property
    def idle_since(self) -> float:
        return self._idle_since

    def close_idle(self) -> None:
        """Close this kept-alive connection that waits for a request (room is needed)."""
        self.closing = True
        if self.transport is not None:
            self.transport.loseConnection()

    def drain(self) -> None:
        """Shutting down: close now if idle, else after the response in progress."""
        if self.idle and self.transport is not None:
            self.closing = True
            self.transport.loseConnection()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abortConnection()

    # -- reading -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._discarding or self.closing:
            return
        self._last_read = self.clock.seconds()
        try:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade as e:
                # Upgrades are not spliced (yet): the request was handled as
                # a plain one without its hop-by-hop Upgrade; read on.
                self._parser = httptools.HttpRequestParser(self)
                rest = data[e.args[0]:] if e.args else b""
                if rest:
                    self._parser.feed_data(rest)
        except _Stop:
            return
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _Stop):
                return
            raise
        except httptools.HttpParserInvalidMethodError:
            # RFC 9110 9.1: an unrecognised method is a 501. llhttp knows
            # the registered ones (RFC 9110, WebDAV, PATCH, PURGE, QUERY...).
            self._refuse(self._parsing, 501, b"request method not recognised\n")
            return
        except httptools.HttpParserError as e:
            why = str(e).encode("latin-1", "replace")
            message = self._parsing
            if message is not None and message.headers_done and message.body is not None:
                # The body broke its framing on the way in: its exchange
                # answers 400 (or cuts a response already started).
                message.keep_alive = False
                self._parsing = None
                self._stop_reading()
                message.body.fail(BodyMalformed(why.decode("latin-1")))
                return
            self._refuse(message, 400, b"malformed request: %s\n" % (why,))
            return
        parsing = self._parsing
        if parsing is not None and not parsing.headers_done:
            # A head still coming in: bound what it may take before llhttp
            # has a whole line to hand over.
            parsing.wire_bytes += len(data)
            settings = self.settings
            if parsing.url_size > settings.max_request_line:
                self._refuse(parsing, 414, b"request line too long\n")
            elif parsing.wire_bytes > settings.max_request_line + settings.max_header_bytes:
                self._refuse(parsing, 431, b"request headers too large\n")

    def on_message_begin(self) -> None:
        self._parsing = Message(self, self._last_read)
        if self._queue:
            self.pause_reading("pipeline")  # one request at a time
        self._rearm()

    def on_url(self, part: bytes) -> None:
        message = self._parsing
        assert message is not None
        message.url.append(part)
        message.url_size += len(part)
        if message.url_size > self.settings.max_request_line:
            self._refuse(message, 414, b"request line too long\n")
            raise _Stop()

    def on_header(self, name: bytes, value: bytes) -> None:
        message = self._parsing
        assert message is not None
        if message.headers_done:
            return  # a trailer: not passed on
        message.headers.append((name.lower(), value))
        message.header_bytes += len(name) + len(value) + 4
        settings = self.settings
        if len(message.headers) > settings.max_headers or message.header_bytes > settings.max_header_bytes:
            self._refuse(message, 431, b"request headers too large\n")
            raise _Stop()

    def on_headers_complete(self) -> None:
        message = self._parsing
        assert message is not None
        message.headers_done = True
        refusal = self._check(message)
        if refusal is not None:
            self._refuse(message, *refusal)
            raise _Stop()
        self._queue.append(message)
        if len(self._queue) == 1:
            self._start(message)
        else:
            self._rearm()

    def on_body(self, data: bytes) -> None:
        message = self._parsing
        assert message is not None and message.body is not None
        body = message.body
        body.data(data)
        if body.failure is not None:
            # Over the limit: the exchange answers 413; nothing more is read.
            message.keep_alive = False
            self._stop_reading()
            raise _Stop()

    def on_message_complete(self) -> None:
        message = self._parsing
        assert message is not None
        self._parsing = None
        message.ended = True
        if message.body is not None:
            message.body.end()
        self._rearm()

    def _check(self, message: Message) -> Optional[tuple[int, bytes]]:
        """Build the request, or say why it is refused."""
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            return 400, b"HTTP/0.9 requests are not supported\n"
        method = parser.get_method()
        message.version11 = version == "1.1"
        message.keep_alive = parser.should_keep_alive()
        message.head_only = method == b"HEAD"
        if method == b"CONNECT":
            return 405, b"CONNECT is not supported\n"
        headers = message.headers
        hosts = 0
        length: Optional[int] = None
        chunked = False
        for name, value in headers:
            if name == b"host":
                hosts += 1
            elif name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    return 501, b"transfer coding not supported\n"
                if not message.version11:
                    return 400, b"Transfer-Encoding in an HTTP/1.0 request\n"
                chunked = True
            elif name == b"expect":
                if value.strip().lower() != b"100-continue" or not message.version11:
                    return 417, b"unsupported expectation\n"
                message.expect_continue = True
        if hosts > 1 or (hosts == 0 and message.version11):
            return 400, b"a request needs exactly one Host header\n"
        if length is not None and length > self.settings.max_body_bytes:
            return 413, b"request body too large\n"
        body = None
        if chunked or length:
            body = message.body = RequestBody(message, length=length, limit=self.settings.max_body_bytes)
        else:
            message.expect_continue = False
        message.request = IncomingRequest(
            method=method,
            target=b"".join(message.url),
            version=b"HTTP/1.1" if message.version11 else b"HTTP/1.0",
            headers=headers,
            peer_host=self._peer_host,
            peer_port=self._peer_port,
            secure=self._secure,
            body=body,
            started=message.arrived,
        )
        return None

    # -- answering -----------------------------------------------------------

    def _start(self, message: Message) -> None:
        """The message is at the head of the queue: answer it now."""
        self._fresh = False
        if message.refusal is not None:
            status, text = message.refusal
            message.keep_alive = False
            headers = [(b"content-type", b"text/plain; charset=utf-8")]
            if self.settings.banner:
                headers.append((b"server", self.settings.banner))
            message.respond(status, _wire.reason_phrase(status), headers, length=len(text), body=text)
            return
        assert message.request is not None
        self._rearm()
        message.exchange = self.factory.start_exchange(message.request, message)

    def response_done(self, message: Message) -> None:
        """C{message}'s response is all written: on to the next, or close."""
        message.exchange = None  # (it points back at the message: no cycle left for the GC)
        if self.stall_watch is not None:
            self.unregister_stall_watch()
        if self._queue and self._queue[0] is message:
            self._queue.popleft()
        if self.transport is None or self.closing:
            return
        if not message.ended:
            message.keep_alive = False  # the rest of its body is unread
        if not message.keep_alive or self.factory.draining:
            self._close_after(message)
            return
        self._idle_since = self.clock.seconds()
        if len(self._queue) <= 1:
            self.resume_reading("pipeline")
        if self._queue:
            self._start(self._queue[0])
        self._rearm()

    def _close_after(self, message: Message) -> None:
        """Close once the response is out; a client still sending gets time to read it."""
        self.closing = True
        self._deadline.cancel()
        transport = self.transport
        if message.ended and message.refusal is None:
            transport.loseConnection()
            return
        # Unread bytes may still come: half-close so the client reads the
        # answer before its unsent body could turn our close into a reset.
        self._discarding = True
        self._pauses.clear()
        transport.resumeProducing()
        try:
            transport.loseWriteConnection()
        except (AttributeError, NotImplementedError):
            transport.loseConnection()
            return
        self.clock.callLater(2.0, transport.loseConnection)

    def _refuse(self, message: Optional[Message], status: int, text: bytes) -> None:
        """Answer with an error in turn and close: the parser is done for."""
        if message is None:
            message = Message(self, self._last_read)
        if message.refusal is not None:
            return
        self._parsing = None
        message.refusal = (status, text)
        message.keep_alive = False
        self._stop_reading()
        self.factory.refused(self._record(message, status, text))
        if message not in self._queue:
            self._queue.append(message)
        if self._queue[0] is message:
            self._start(message)

    def _record(self, message: Message, status: int, text: bytes) -> RequestRecord:
        record = RequestRecord(message.arrived)
        record.client_ip = self._peer_host
        request = message.request
        if request is not None:
            record.method = request.method.decode("latin-1")
        else:
            try:
                record.method = self._parser.get_method().decode("latin-1")
            except Exception:
                record.method = "-"
        record.path = b"".join(message.url)[:200].decode("latin-1") or "-"
        record.status = status
        record.bytes = len(text)
        record.error = text.decode("latin-1").strip()
        record.protocol = "HTTP/1.1" if message.version11 else "HTTP/1.0"
        return record

    def _stop_reading(self) -> None:
        self.pause_reading("stopped")

    def pause_reading(self, reason: str) -> None:
        if not self._pauses and self.transport is not None:
            self.transport.pauseProducing()
        self._pauses.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and self.transport is not None and not self.closing:
            self._last_read = self.clock.seconds()  # a pause is not the client's gap
            self.transport.resumeProducing()
            self._rearm()

    def unregister_stall_watch(self) -> None:
        watch, self.stall_watch = self.stall_watch, None
        if watch is not None:
            watch.cancel()
            if self.transport is not None:
                self.transport.unregisterProducer()

    def write_stalled(self) -> None:
        """The client read nothing of a response for the write timeout."""
        head = self._queue[0] if self._queue else None
        if head is not None and head.exchange is not None:
            note = getattr(head.exchange, "note_error", None)
            if note is not None:
                note("client stopped reading (write timeout)")
        log.info("client stopped reading for {t}s: closing", t=self.settings.write_timeout)
        self.abort()

    # -- timeouts --------------------------------------------------------------

    def _rearm(self) -> None:
        deadline = self._next_deadline()
        if deadline is not None:
            self._deadline.at(deadline)

    def _next_deadline(self) -> Optional[float]:
        settings = self.settings
        parsing = self._parsing
        if parsing is not None and parsing.refusal is None:
            if not parsing.headers_done:
                return parsing.arrived + settings.read_timeout
            if "body" not in self._pauses and "pipeline" not in self._pauses:
                return self._last_read + settings.read_timeout
            return None
        if not self._queue:
            if self._fresh:
                return self._idle_since + min(settings.read_timeout, settings.idle_timeout)
            return self._idle_since + settings.idle_timeout
        return None

    def _timed_out(self) -> None:
        if self.closing or self.transport is None:
            return
        deadline = self._next_deadline()
        if deadline is None:
            return
        if self.clock.seconds() < deadline:
            self._deadline.at(deadline)
            return
        parsing = self._parsing
        if parsing is None:
            self.closing = True
            self.transport.loseConnection()  # idle keep-alive connection
            return
        if not parsing.headers_done:
            self._refuse(parsing, 408, b"request not received in time\n")
            return
        # A gap in the body: the exchange answers 408 if it still can.
        assert parsing.body is not None
        parsing.keep_alive = False
        self._parsing = None
        self._stop_reading()
        parsing.body.fail(BodyTimedOut())


class _Refused(Protocol):
    """A connection over the limit: closed as soon as it is made."""

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class HTTPServerFactory(Factory):
    """
    Builds L{HTTP11ServerProtocol}s for one gateway: its settings, the
    exchange core to hand requests to, and a sink for requests refused
    before they reach it (for the access log and metrics).
    """

    noisy = False

    def __init__(
        self,
        *,
        clock: IReactorTime,
        settings: ServerSettings,
        start_exchange: StartExchange,
        refused: Callable[[RequestRecord], None],
    ) -> None:
        self.clock = clock
        self.settings = settings
        self.start_exchange = start_exchange
        self.refused = refused
        self.connections: set[HTTP11ServerProtocol] = set()
        self.draining = False
        self.date = _wire.DateCache().value
        self._closed: list[Deferred[None]] = []
        self.refused_connections = 0
        """Connections closed at once: C{max_connections} were open, none idle."""
        self.idle_closed = 0
        """Kept-alive idle connections closed to make room for new ones."""

    def buildProtocol(self, addr: object) -> Protocol:
        """
        A protocol for a new connection; past C{max_connections}, a
        kept-alive connection idle the longest is closed to make room, and
        with none idle the new one is closed at once (and counted).
        """
        if len(self.connections) >= self.settings.max_connections:
            idle = [p for p in self.connections if p.idle and not p.closing and p.transport is not None]
            if not idle:
                self.refused_connections += 1
                if self.refused_connections & (self.refused_connections - 1) == 0:  # 1, 2, 4, 8...
                    log.warn(
                        "server.max_connections ({n}) reached: new connections are closed"
                        " ({count} so far)", n=self.settings.max_connections, count=self.refused_connections,
                    )
                return _Refused()
            self.idle_closed += 1
            min(idle, key=lambda p: p.idle_since).close_idle()
        return HTTP11ServerProtocol(self)

    def drain(self) -> None:
        """Stop keeping connections alive; close those waiting for a request."""
        self.draining = True
        for protocol in list(self.connections):
            protocol.drain()

    def closed(self) -> "Deferred[None]":
        """Fires once every connection is closed (its last response flushed)."""
        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed.append(d)
        return d

    def abort_all(self) -> None:
        """Cut every connection (the shutdown timeout passed)."""
        for protocol in list(self.connections):
            protocol.abort()

    def connection_closed(self, protocol: HTTP11ServerProtocol) -> None:
        self.connections.discard(protocol)
        if not self.connections and self._closed:
            waiting, self._closed = self._closed, []
            for d in waiting:
                d.callback(None)


__all__ = ["HTTPServerFactory", "HTTP11ServerProtocol", "Message", "ServerSettings", "IDelayedCall"]
