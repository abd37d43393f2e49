# -*- test-case-name: tests.test_reactor -*-
"""
The gateway's reactor (L{wasmgate._reactor.EagerWriteReactor}), run on its
own over real loopback sockets: what transports write goes out before the
next poll without epoll watching for room, a socket that fills is handed
to epoll and drains, a close after the last bytes and a failing write end
their connection as the reactor would, and twistd runs the gateway on it.
"""
from __future__ import annotations

import os
import socket
from typing import Any, Optional

from twisted.internet import error
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from wasmgate._reactor import EagerWriteReactor


class WatchingReactor(EagerWriteReactor):
    """Notes, before each poll, which writers epoll itself watches."""

    def __init__(self) -> None:
        super().__init__()
        self.watched: list[int] = []

    def doPoll(self, timeout: Optional[float]) -> None:
        # (a connecting client is watched until connected, as it should be)
        self.watched.append(sum(1 for w in EPollReactor.getWriters(self) if w.connected))
        super().doPoll(timeout)


class Sender(Protocol):
    """Answers a line C{N} with N bytes in 64 KiB writes, then closes."""

    def __init__(self, lost: Deferred) -> None:
        self.lost = lost

    def dataReceived(self, data: bytes) -> None:
        size = int(data)
        chunk = b"x" * 65536
        while size > 0:
            self.transport.write(chunk[:size])
            size -= 65536
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.lost.callback(reason)


class Receiver(Protocol):
    """Asks for C{size} bytes; with C{stall}, reads nothing for a while first."""

    def __init__(self, reactor: Any, size: int, done: Deferred, stall: float = 0.0) -> None:
        self.reactor = reactor
        self.size = size
        self.done = done
        self.stall = stall
        self.received = 0

    def connectionMade(self) -> None:
        self.transport.write(b"%d" % (self.size,))
        if self.stall:
            self.transport.pauseProducing()
            self.reactor.callLater(self.stall, self.transport.resumeProducing)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def connectionLost(self, reason: Failure) -> None:
        self.done.callback((self.received, reason))


def _exchange(reactor: WatchingReactor, size: int, stall: float = 0.0) -> tuple[int, Failure, Failure]:
    server_lost: Deferred = Deferred()
    client_done: Deferred = Deferred()
    port = reactor.listenTCP(0, Factory.forProtocol(lambda: Sender(server_lost)), interface="127.0.0.1")
    factory = Factory.forProtocol(lambda: Receiver(reactor, size, client_done, stall))
    factory.clientConnectionFailed = lambda connector, reason: client_done.errback(reason)  # type: ignore[attr-defined]
    reactor.connectTCP("127.0.0.1", port.getHost().port, _ClientFactory(factory))
    results: list[Any] = []
    client_done.addBoth(results.append)
    server_lost.addBoth(results.append)
    safety = reactor.callLater(20, reactor.stop)

    def stop_when_both(_: object) -> None:
        if len(results) == 2:
            safety.cancel()
            reactor.stop()

    client_done.addBoth(stop_when_both)
    server_lost.addBoth(stop_when_both)
    reactor.run(installSignalHandlers=False)
    port.stopListening()
    (received, client_reason) = next(r for r in results if isinstance(r, tuple))
    server_reason = next(r for r in results if isinstance(r, Failure))
    return received, client_reason, server_reason


class _ClientFactory(Factory):
    """A client factory (connectTCP wants one) around a plain factory."""

    def __init__(self, inner: Factory) -> None:
        self.inner = inner

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.inner.buildProtocol(addr)

    def startedConnecting(self, connector: Any) -> None:
        pass

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.inner.clientConnectionFailed(connector, reason)  # type: ignore[attr-defined]

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        pass


def test_small_writes_go_out_without_epoll_watching_for_room():
    reactor = WatchingReactor()
    received, client_reason, server_reason = _exchange(reactor, 1000)
    assert received == 1000
    # The close after the last bytes is a clean one, on both sides.
    client_reason.trap(error.ConnectionDone)
    server_reason.trap(error.ConnectionDone)
    assert reactor.watched and max(reactor.watched) == 0
    assert reactor.getWriters() == []


def test_a_full_socket_is_watched_by_epoll_until_it_drains():
    reactor = WatchingReactor()
    size = 32 * 1024 * 1024  # far more than the socket buffers hold
    received, client_reason, server_reason = _exchange(reactor, size, stall=0.2)
    assert received == size
    client_reason.trap(error.ConnectionDone)
    server_reason.trap(error.ConnectionDone)
    assert max(reactor.watched) >= 1  # the stalled reader filled the socket
    assert reactor.watched[-1] == 0  # and once drained, epoll let it go
    assert reactor.getWriters() == []


class _Pipe(FileDescriptor):
    """A write end of a pipe whose C{doWrite} returns or raises what it is told."""

    def __init__(self, reactor: Any, returns: Any = None, raises: Optional[Exception] = None) -> None:
        super().__init__(reactor)
        self.read_end, self.write_end = os.pipe()
        self.returns = returns
        self.raises = raises
        self.lost: list[Failure] = []
        self.connected = 1

    def fileno(self) -> int:
        return self.write_end

    def doWrite(self) -> Any:
        if self.raises is not None:
            raise self.raises
        return self.returns

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)
        os.close(self.read_end)
        os.close(self.write_end)


def _one_iteration(reactor: EagerWriteReactor) -> None:
    # (a stop in the first round of timed calls would disconnect everything
    # before the first iteration: stop in the second)
    reactor.callLater(0, reactor.callLater, 0, reactor.stop)
    reactor.run(installSignalHandlers=False)


def test_a_write_that_ends_the_connection_disconnects_it():
    reactor = EagerWriteReactor()
    closing = _Pipe(reactor, returns=error.ConnectionDone())
    broken = _Pipe(reactor, raises=ConnectionResetError("peer reset"))
    for pipe in (closing, broken):
        reactor.addWriter(pipe)
    # Written at the end of an iteration, not yet: they are writers.
    assert set(reactor.getWriters()) == {closing, broken}
    _one_iteration(reactor)
    [done] = closing.lost
    done.trap(error.ConnectionDone)
    [reset] = broken.lost
    reset.trap(ConnectionResetError)
    assert reactor.getWriters() == []


def test_remove_all_takes_writers_not_written_yet():
    reactor = EagerWriteReactor()
    pipe = _Pipe(reactor)
    reactor.addWriter(pipe)
    assert pipe in reactor.removeAll()
    assert reactor.getWriters() == []
    _one_iteration(reactor)
    assert pipe.lost == []  # never written: it was removed
    pipe.connectionLost(Failure(error.ConnectionDone()))


def test_a_socket_pair_writes_in_order_across_iterations():
    reactor = EagerWriteReactor()
    a, b = socket.socketpair()
    a.setblocking(False)
    got = bytearray()

    class Writer(FileDescriptor):
        def fileno(self) -> int:
            return a.fileno()

        def writeSomeData(self, data: bytes) -> int:
            return a.send(data)

    writer = Writer(reactor)
    writer.connected = 1
    for i in range(5):
        reactor.callLater(0.001 * i, writer.write, b"%d," % i)
    reactor.callLater(0.05, reactor.stop)
    reactor.run(installSignalHandlers=False)
    b.setblocking(False)
    got += b.recv(100)
    assert bytes(got) == b"0,1,2,3,4,"
    a.close()
    b.close()
