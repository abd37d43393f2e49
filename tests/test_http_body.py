"""
Unit tests of L{wasmgate.http.message.RequestBody}: a request body read
once, collected or streamed, with the client paused while nobody reads.
"""
from __future__ import annotations

from typing import Any

from wasmgate.http.message import BodyTooLarge, ClientGone, RequestBody


class Source:
    """The wire side: records pauses and whether the body was asked for."""

    def __init__(self) -> None:
        self.paused = False
        self.wanted = 0

    def pause_body(self) -> None:
        self.paused = True

    def resume_body(self) -> None:
        self.paused = False

    def body_wanted(self) -> None:
        self.wanted += 1


class Sink:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.ended = False
        self.failed: list[Exception] = []

    def body_data(self, data: bytes) -> None:
        self.data.append(data)

    def body_end(self) -> None:
        self.ended = True

    def body_failed(self, reason: Exception) -> None:
        self.failed.append(reason)


def body(limit: int = 1000, length: Any = None) -> tuple[RequestBody, Source]:
    source = Source()
    return RequestBody(source, length=length, limit=limit), source


def test_collect_what_came_and_what_comes() -> None:
    b, source = body()
    b.data(b"ab")
    got: list[bytes] = []
    b.collect().addCallback(got.append)
    assert source.wanted == 1 and got == []
    b.data(b"cd")
    b.end()
    assert got == [b"abcd"]


def test_nobody_reading_pauses_the_client_past_high_water() -> None:
    b, source = body(limit=10_000)
    b.high_water = 100
    b.data(b"x" * 60)
    assert not source.paused
    b.data(b"x" * 60)
    assert source.paused
    got: list[bytes] = []
    b.collect().addCallback(got.append)
    assert not source.paused  # a reader: read on
    b.end()
    assert got == [b"x" * 120]


def test_stream_delivers_in_order_and_follows_the_sink_pace() -> None:
    b, source = body()
    b.data(b"1")
    sink = Sink()
    b.stream_to(sink)
    assert sink.data == [b"1"]
    b.pauseProducing()  # the upstream cannot take more
    assert source.paused
    b.data(b"2")
    b.data(b"3")
    assert sink.data == [b"1"]
    b.resumeProducing()
    assert sink.data == [b"1", b"2", b"3"] and not source.paused
    b.data(b"4")
    b.end()
    assert sink.data == [b"1", b"2", b"3", b"4"] and sink.ended


def test_end_while_the_sink_is_paused_ends_after_the_rest() -> None:
    b, source = body()
    sink = Sink()
    b.stream_to(sink)
    b.pauseProducing()
    b.data(b"tail")
    b.end()
    assert not source.paused  # all in: the connection reads on (the next request)
    assert sink.data == [] and not sink.ended
    b.resumeProducing()
    assert sink.data == [b"tail"] and sink.ended


def test_over_the_limit_fails_the_reader() -> None:
    b, _ = body(limit=5)
    sink = Sink()
    b.stream_to(sink)
    b.data(b"abc")
    b.data(b"def")
    assert sink.data == [b"abc"] and isinstance(sink.failed[0], BodyTooLarge)
    b.data(b"more")  # ignored from now on
    assert sink.data == [b"abc"]


def test_failure_before_a_reader_is_seen_by_it() -> None:
    b, _ = body()
    b.data(b"part")
    b.fail(ClientGone())
    failures: list[Any] = []
    b.collect().addErrback(failures.append)
    assert failures[0].check(ClientGone)
