"""
Unit tests of the HTTP/1.1 server protocol (L{wasmgate.http.server}): its
framing, keep-alive, pipelining, 100-continue and timeouts, on a
L{StringTransport} and a L{MemoryReactorClock}, so timeouts cost no wall
time. The exchange core is replaced by a recorder the tests answer through.
"""
from __future__ import annotations

from typing import Any, Optional

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from wasmgate.http.message import BodyMalformed, BodyTimedOut, BodyTooLarge, IncomingRequest
from wasmgate.http._h1message import Message
from wasmgate.http.factory import HTTPServerFactory, ServerSettings


class Taken:
    """One request the fake exchange core took, and its channel."""

    def __init__(self, request: IncomingRequest, channel: Message) -> None:
        self.request = request
        self.channel = channel
        self.gone = False

    def client_gone(self) -> None:
        self.gone = True

    def ok(self, body: bytes = b"ok") -> None:
        self.channel.respond(200, b"OK", [(b"x-answer", b"1")], length=len(body), body=body)


class Connection:
    def __init__(self, settings: Optional[ServerSettings] = None) -> None:
        self.clock = MemoryReactorClock()
        self.taken: list[Taken] = []
        self.refused: list[Any] = []
        self.factory = HTTPServerFactory(
            clock=self.clock,
            settings=settings or ServerSettings(),
            start_exchange=self._start,
            refused=self.refused.append,
        )
        self.protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 40000))
        self.protocol.makeConnection(self.transport)

    def _start(self, request: IncomingRequest, channel: Message) -> Taken:
        taken = Taken(request, channel)
        self.taken.append(taken)
        return taken

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def out(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return value

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


def status_line(response: bytes) -> bytes:
    return response.split(b"\r\n", 1)[0]


def headers_of(response: bytes) -> dict[bytes, bytes]:
    head = response.split(b"\r\n\r\n", 1)[0]
    return {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    }


def test_request_reaches_the_exchange_and_keep_alive_goes_on() -> None:
    c = Connection()
    c.send(b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-Multi: 1\r\nx-multi: 2\r\n\r\n")
    (t,) = c.taken
    r = t.request
    assert (r.method, r.target, r.version, r.secure) == (b"GET", b"/a?b=1", b"HTTP/1.1", False)
    assert (r.peer_host, r.peer_port) == ("192.0.2.1", 40000)
    assert r.headers == [(b"host", b"example.com"), (b"x-multi", b"1"), (b"x-multi", b"2")]
    assert r.body is None
    t.ok(b"hello")
    response = c.out()
    assert status_line(response) == b"HTTP/1.1 200 OK"
    h = headers_of(response)
    assert h[b"content-length"] == b"5" and h[b"x-answer"] == b"1" and b"date" in h
    assert b"connection" not in h and response.endswith(b"\r\n\r\nhello")
    assert not c.closed
    c.send(b"GET /again HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert len(c.taken) == 2 and c.taken[1].request.target == b"/again"


def test_pipelined_requests_are_answered_in_order_one_at_a_time() -> None:
    c = Connection()
    c.send(
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"GET /3 HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert [t.request.target for t in c.taken] == [b"/1"]
    assert c.transport.producerState == "paused"  # nothing more is read meanwhile
    c.taken[0].ok(b"one")
    assert [t.request.target for t in c.taken] == [b"/1", b"/2"]
    c.taken[1].ok(b"two")
    c.taken[2].ok(b"three")
    out = c.out()
    assert out.index(b"one") < out.index(b"two") < out.index(b"three")
    assert c.transport.producerState == "producing" and not c.closed


def test_expect_100_continue_only_once_the_body_is_wanted() -> None:
    c = Connection()
    c.send(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    (t,) = c.taken
    assert c.out() == b""  # not invited before anyone reads the body
    collected: list[bytes] = []
    assert t.request.body is not None
    t.request.body.collect().addCallback(collected.append)
    assert c.out() == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.send(b"hello")
    assert collected == [b"hello"]
    t.ok()
    assert status_line(c.out()) == b"HTTP/1.1 200 OK" and not c.closed


def test_an_http10_clients_100_continue_is_ignored() -> None:
    """RFC 9110 10.1.1: no 417 and no interim response; the body is read as it comes."""
    c = Connection()
    c.send(b"POST /up HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    (t,) = c.taken
    collected: list[bytes] = []
    assert t.request.body is not None
    t.request.body.collect().addCallback(collected.append)
    c.send(b"hello")
    assert collected == [b"hello"]
    t.ok()
    assert status_line(c.out()) == b"HTTP/1.1 200 OK"


def test_answered_without_reading_the_body_means_no_100_and_a_close() -> None:
    c = Connection()
    c.send(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    c.taken[0].channel.respond(429, b"Too Many Requests", [], length=0, body=b"")
    out = c.out()
    assert status_line(out) == b"HTTP/1.1 429 Too Many Requests"
    assert b"100 Continue" not in out and headers_of(out)[b"connection"] == b"close"
    assert c.closed


def test_read_deadline_runs_from_the_first_byte_whatever_trickles_in() -> None:
    """Slowloris: a byte a second of a 3 s read timeout still gets 408 at 3 s."""
    c = Connection(ServerSettings(read_timeout=3.0, idle_timeout=60.0))
    request = b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"
    c.send(request[:1])
    for i in range(1, 3):
        c.clock.advance(1.0)
        c.send(request[i : i + 1])
    c.clock.advance(0.9)
    assert c.out() == b"" and not c.closed
    c.clock.advance(0.2)
    assert status_line(c.out()) == b"HTTP/1.1 408 Request Timeout"
    assert c.closed and c.taken == []
    assert c.refused[0].status == 408


def test_idle_connections_are_closed() -> None:
    settings = ServerSettings(read_timeout=3.0, idle_timeout=10.0)
    c = Connection(settings)
    c.clock.advance(3.1)  # a connection that never sends: the read timeout
    assert c.closed and c.out() == b""
    c = Connection(settings)
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    c.taken[0].ok()
    c.clock.advance(9.0)
    assert not c.closed  # kept alive: the idle timeout
    c.clock.advance(1.1)
    assert c.closed


def test_a_gap_in_the_body_fails_it() -> None:
    c = Connection(ServerSettings(read_timeout=3.0))
    c.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhalf")
    (t,) = c.taken
    failures: list[Any] = []
    assert t.request.body is not None
    t.request.body.collect().addErrback(failures.append)
    c.clock.advance(2.0)
    c.send(b"f")  # still coming: the gap starts again
    c.clock.advance(2.5)
    assert failures == []
    c.clock.advance(0.6)
    assert failures and failures[0].check(BodyTimedOut)


def test_chunked_body_past_the_limit_fails_and_reading_stops() -> None:
    c = Connection(ServerSettings(max_body_bytes=8))
    c.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    (t,) = c.taken
    failures: list[Any] = []
    assert t.request.body is not None and t.request.body.length is None
    t.request.body.collect().addErrback(failures.append)
    c.send(b"5\r\nabcde\r\n5\r\nfghij\r\n")
    assert failures and failures[0].check(BodyTooLarge)
    assert c.transport.producerState == "paused"


def _chunked_post(c: "Connection") -> tuple[Any, list[Any], list[bytes]]:
    c.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    (t,) = c.taken
    failures: list[Any] = []
    got: list[bytes] = []
    t.request.body.collect().addCallbacks(got.append, failures.append)
    return t, failures, got


def test_trailers_in_small_reads_are_counted_once() -> None:
    """60 KB of trailers in 16 KiB reads (a TLS record each): under the 72 KiB bound, so the body is whole."""
    c = Connection()
    t, failures, got = _chunked_post(c)
    rest = b"5\r\nhello\r\n0\r\n" + (b"X-T: " + b"a" * 100 + b"\r\n") * 560 + b"\r\n"
    for i in range(0, len(rest), 16384):
        c.send(rest[i : i + 16384])
    assert failures == [] and got == [b"hello"]


def test_reads_after_the_framing_bound_are_ignored_not_a_crash() -> None:
    """Past the bound the body fails; what a TLS transport still hands over after the pause is dropped."""
    c = Connection()
    t, failures, got = _chunked_post(c)
    c.send(b"5\r\nhello\r\n0\r\n")
    c.send(b"X-T: a\r\n" * 10_000)
    assert failures and failures[0].check(BodyMalformed)
    assert c.transport.producerState == "paused"
    c.send(b"X-T: a\r\n" * 100)  # (no exception: the parser is not fed any more)
    assert len(failures) == 1


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nExpect: something-else\r\n\r\n", 417),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000\r\n\r\n", 413),
        (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 405),
        (b"BREW /pot HTTP/1.1\r\nHost: h\r\n\r\n", 501),
        (b"GET /\r\n\r\n", 400),  # HTTP/0.9
        (b"GET / HTTP/1.1\nHost: h\n\n", 400),  # bare LF
    ],
)
def test_refused_at_the_wire(request_bytes: bytes, status: int) -> None:
    c = Connection()
    c.send(request_bytes)
    out = c.out()
    assert status_line(out).startswith(b"HTTP/1.1 %d " % status), out[:100]
    assert headers_of(out)[b"connection"] == b"close"
    assert c.taken == [] and c.closed
    assert [r.status for r in c.refused] == [status]


def test_a_refusal_waits_for_the_answer_before_it() -> None:
    c = Connection()
    c.send(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\n\r\n")
    assert c.out() == b""
    c.taken[0].ok(b"first")
    out = c.out()
    assert out.index(b"first") < out.index(b"HTTP/1.1 400 ")
    assert c.closed and len(c.taken) == 1


def test_http_10_bodies_end_with_the_connection_unless_kept_alive() -> None:
    c = Connection()
    c.send(b"GET / HTTP/1.0\r\n\r\n")
    c.taken[0].channel.respond(200, b"OK", [], length=None)
    c.taken[0].channel.write(b"streamed")
    c.taken[0].channel.finish()
    out = c.out()
    assert headers_of(out)[b"connection"] == b"close" and out.endswith(b"\r\n\r\nstreamed")
    assert c.closed
    c = Connection()
    c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    c.taken[0].ok()
    assert headers_of(c.out())[b"connection"] == b"keep-alive" and not c.closed


def test_unknown_length_is_chunked_for_http_11_and_trailers_are_dropped() -> None:
    c = Connection()
    c.send(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Trailer: secret\r\n\r\n"
    )
    (t,) = c.taken
    assert all(name != b"x-trailer" for name, _ in t.request.headers)
    t.channel.respond(200, b"OK", [], length=None)
    t.channel.write(b"ab")
    t.channel.write(b"c")
    t.channel.finish()
    out = c.out()
    assert headers_of(out)[b"transfer-encoding"] == b"chunked"
    assert out.endswith(b"\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n")


def test_head_and_304_send_no_body() -> None:
    c = Connection()
    c.send(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    t = c.taken[0]
    t.channel.respond(200, b"OK", [], length=12345)
    t.channel.write(b"never sent")
    t.channel.finish()
    out = c.out()
    assert headers_of(out)[b"content-length"] == b"12345" and out.endswith(b"\r\n\r\n")
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    c.taken[1].channel.respond(304, b"Not Modified", [], length=None)
    c.taken[1].channel.finish()
    out = c.out()
    assert b"content-length" not in headers_of(out) and b"transfer-encoding" not in headers_of(out)
    assert out.endswith(b"\r\n\r\n") and not c.closed


def test_client_gone_reaches_the_exchange() -> None:
    c = Connection()
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    c.protocol.connectionLost(None)  # type: ignore[arg-type]
    assert c.taken[0].gone


def test_a_client_that_stops_reading_is_cut_after_the_write_timeout() -> None:
    c = Connection(ServerSettings(write_timeout=5.0))
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    t = c.taken[0]

    class Upstream:
        state = "producing"

        def pauseProducing(self) -> None:
            self.state = "paused"

        def resumeProducing(self) -> None:
            self.state = "producing"

        def stopProducing(self) -> None:
            self.state = "stopped"

    upstream = Upstream()
    t.channel.respond(200, b"OK", [], length=None)
    t.channel.pause_upstream_with(upstream)  # type: ignore[arg-type]
    c.transport.producer.pauseProducing()  # the client's buffer is full
    assert upstream.state == "paused"
    c.clock.advance(4.0)
    c.transport.producer.resumeProducing()  # it read a little
    assert upstream.state == "producing"
    c.transport.producer.pauseProducing()
    c.clock.advance(5.1)
    assert upstream.state == "stopped" and c.transport.disconnected
