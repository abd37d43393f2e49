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
from typing import TYPE_CHECKING, Optional

import httptools
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from wasmgate.http import _wire
from wasmgate.http._h1head import check_head
from wasmgate.http._h1message import Message
from wasmgate.http._timers import Deadline, StallWatch
from wasmgate.http.tunnel import Tunnel
from wasmgate.http.message import (
    BodyMalformed,
    BodyTimedOut,
    ClientGone,
    RequestRecord,
    server_name,
)

if TYPE_CHECKING:
    from wasmgate.http.factory import HTTPServerFactory

log = Logger()


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing this connection."""


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
        self._read_counted = False
        self._completed: Optional[Message] = None
        """The request whose body ended last (an upgrade's, when llhttp stops)."""
        self._tunnel: Optional[Tunnel] = None
        self._sni: Optional[str] = None

    # -- connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        _wire.no_delay(transport)  # (else a TLS 1.3 session ticket's ACK holds the first response ~40 ms)
        self._secure = ISSLTransport.providedBy(transport)
        peer = transport.getPeer()
        self._peer_host = getattr(peer, "host", "") or ""
        self._peer_port = getattr(peer, "port", 0) or 0
        self._idle_since = self._last_read = self.clock.seconds()
        self.factory.connections.add(self)
        self._rearm()

    def connectionLost(self, reason: Failure = Failure(ClientGone())) -> None:
        self.closing = True
        self._deadline.close()
        if self._tunnel is not None:
            self._tunnel.client_closed()
        self.factory.connection_closed(self)
        if self.stall_watch is not None:
            self.stall_watch.cancel()
            self.stall_watch = None
        messages = list(self._queue)
        if self._parsing is not None and self._parsing not in messages:
            messages.append(self._parsing)
        self._queue.clear()
        self._parsing = None
        self._completed = None
        self._parser = httptools.HttpRequestParser(_wire.NO_CALLBACKS)
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
        return not self._queue and self._parsing is None and self._tunnel is None

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
        if self._tunnel is not None:
            self._tunnel.from_client(data)
            return
        if self._discarding or self.closing or "stopped" in self._pauses:
            return  # (a TLS transport may still hand over what it had decrypted)
        self._last_read = self.clock.seconds()
        parsing = self._parsing
        self._read_counted = parsing is not None and parsing.headers_done
        if self._read_counted:
            # Past the head, every byte not handed over as body is framing:
            # chunk lines and trailers, bounded like a head (on_body resets).
            parsing.wire_bytes += len(data)
        try:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade as e:
                # llhttp stops after a request asking to switch protocols.
                self._parser = httptools.HttpRequestParser(self)
                rest = data[e.args[0]:] if e.args else b""
                upgrading = self._completed
                if upgrading is not None and upgrading.upgrade and not upgrading.finished:
                    # A WebSocket handshake: what follows is the client's
                    # either way, read on once its answer is known.
                    upgrading.upgrade_rest = rest
                    self.pause_reading("upgrade")
                elif rest:
                    # Any other Upgrade was served as a plain request: read on.
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
        if parsing is None:
            return
        settings = self.settings
        if parsing.headers_done:
            if parsing.wire_bytes > settings.max_request_line + settings.max_header_bytes and parsing.body is not None:
                parsing.keep_alive = False
                self._parsing = None
                self._stop_reading()
                parsing.body.fail(BodyMalformed("chunk framing or trailers too large"))
        else:
            # A head still coming in: bound what it may take before llhttp
            # has a whole line to hand over.
            parsing.wire_bytes += len(data)
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
            # A trailer: not passed on, but counted with the body's framing
            # when its read was not (it came with the head, before any check).
            if not self._read_counted:
                message.wire_bytes += len(name) + len(value) + 4
            return
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
        message.wire_bytes = 0
        if self._secure and self._sni is None:
            self._sni = server_name(self.transport)  # (the handshake is done by now)
        refusal = check_head(
            message, self._parser, self.settings, peer=(self._peer_host, self._peer_port),
            secure=self._secure, server_name=self._sni or "",
        )
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
        message.wire_bytes = 0
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
        self._completed = message
        message.ended = True
        if message.body is not None:
            message.body.end()
        self._rearm()

    # -- answering -----------------------------------------------------------

    def _start(self, message: Message) -> None:
        """The message is at the head of the queue: answer it now."""
        self._fresh = False
        if message.refusal is not None:
            status, text, request_id = message.refusal
            message.keep_alive = False
            headers = _wire.refusal_headers(request_id, self.settings.banner)
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
        if message.upgrade_rest is not None:
            # The upgrade was not granted: the connection goes on as HTTP/1.1.
            rest, message.upgrade_rest = message.upgrade_rest, None
            self.resume_reading("upgrade")
            if rest:
                self.dataReceived(rest)
                return
        if self._queue:
            self._start(self._queue[0])
        self._rearm()

    def enter_tunnel(self, message: Message, tunnel: Tunnel) -> None:
        """The upgrade was granted (101): from now on bytes go through C{tunnel}."""
        self._tunnel = tunnel
        self._deadline.cancel()  # the tunnel keeps its own idle time
        if self._queue and self._queue[0] is message:
            self._queue.popleft()
        rest, message.upgrade_rest = message.upgrade_rest, None
        self._pauses.clear()
        if self.transport is not None:
            self.transport.resumeProducing()
        if rest:
            tunnel.from_client(rest)

    @property
    def tunnel(self) -> Optional[Tunnel]:
        return self._tunnel

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
        message.keep_alive = False
        self._stop_reading()
        record = self._record(message, status, text)
        self.factory.refused(record)  # (which gives the record its request ID)
        message.refusal = (status, text, record.request_id)
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
        if self._tunnel is not None:
            return
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
        if self.closing or self.transport is None or self._tunnel is not None:
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
