"""
A raw upstream for wire-level tests: it records every byte it receives,
by connection, and answers each whole request with a fixed response.
"""
from __future__ import annotations

import httptools
from twisted.internet.protocol import Protocol

class Recorder:
    """What a L{RecordingUpstream} saw: every byte, by connection."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.connections: list["RecordingUpstream"] = []

    @property
    def received(self) -> bytes:
        return b"".join(bytes(c.received) for c in self.connections)

    @property
    def requests(self) -> int:
        return sum(c.requests for c in self.connections)


class RecordingUpstream(Protocol):
    """Records what it receives; answers each whole request with C{answer}."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.received = bytearray()
        self.requests = 0

    def connectionMade(self) -> None:
        self.recorder.connections.append(self)
        self.parser = httptools.HttpRequestParser(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.loseConnection()

    def on_message_complete(self) -> None:
        self.requests += 1
        self.transport.write(self.recorder.answer)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
