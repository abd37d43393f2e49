# -*- test-case-name: tests.test_reactor -*-
"""
The reactor the gateway runs on: Twisted's epoll reactor, except that a
transport's buffered writes go out at the end of the loop iteration that
made them instead of on the next poll.

A Twisted transport buffers what it is given and asks the reactor to watch
its socket for room (C{addWriter}: an C{epoll_ctl}); the next poll reports
room, the transport writes, and asks to be watched no more (another
C{epoll_ctl}). For a proxied request, a write each way, that is four system
calls and two more events to dispatch, about 15% of the CPU of a request
without filters. Here C{addWriter} only notes the transport; before each
poll the noted transports write (C{doWrite}, as the reactor would call it),
and only one whose socket is full is handed to epoll, as before. A
transport whose write ends its connection (a close after the last bytes,
an error) is disconnected the way the reactor disconnects one.

Only public interfaces are used: C{IReactorFDSet} (C{addWriter},
C{removeWriter}, C{getWriters}, C{removeAll}), C{doIteration}, and the
descriptors' C{doWrite}/C{connectionLost}.
"""
from __future__ import annotations

import sys
from typing import Any, Optional

from twisted.internet import epollreactor, error
from twisted.internet.interfaces import IWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class EagerWriteReactor(epollreactor.EPollReactor):
    """An epoll reactor writing at the end of each iteration: see the module docstring."""

    def __init__(self) -> None:
        self.__eager: set[IWriteDescriptor] = set()
        """Asked to write, not watched by epoll: written before the next poll."""
        self.__polled: set[IWriteDescriptor] = set()
        """Watched by epoll: their socket was full."""
        self.__writing: Optional[IWriteDescriptor] = None
        self.__flushed_all = False
        """Whether the one C{__writing} stopped writing (it wrote all it had)."""
        super().__init__()

    def addWriter(self, writer: IWriteDescriptor) -> None:
        if writer not in self.__polled:
            self.__eager.add(writer)

    def removeWriter(self, writer: IWriteDescriptor) -> None:
        if writer is self.__writing:
            self.__flushed_all = True
        if writer in self.__eager:
            self.__eager.discard(writer)
        elif writer in self.__polled:
            self.__polled.discard(writer)
            super().removeWriter(writer)

    def getWriters(self) -> list[IWriteDescriptor]:
        return super().getWriters() + list(self.__eager)

    def removeAll(self) -> list[Any]:
        eager = list(self.__eager)
        self.__eager.clear()
        self.__polled.clear()
        removed = super().removeAll()
        return removed + [w for w in eager if w not in removed]

    def doIteration(self, timeout: float | None) -> None:
        eager = self.__eager
        if eager:
            self.__write_eagerly(eager)
            if eager:  # more writes came of those (a producer resumed): no waiting
                timeout = 0
        self.doPoll(timeout)

    def __write_eagerly(self, eager: set[IWriteDescriptor]) -> None:
        for writer in list(eager):
            if writer not in eager:
                continue  # it stopped writing meanwhile (another's write closed it)
            self.__writing, self.__flushed_all = writer, False
            try:
                why = writer.doWrite()
            except Exception:
                log.failure("while writing to {writer!r}", writer=writer)
                why = sys.exc_info()[1]
            finally:
                self.__writing = None
            if why:
                self.__disconnect(writer, why)
            elif not self.__flushed_all and writer in eager:
                # It did not write all it has: its socket is full. Let epoll
                # say when there is room. (One that wrote all and was given
                # more meanwhile stays here, for the next iteration.)
                eager.discard(writer)
                self.__polled.add(writer)
                try:
                    super().addWriter(writer)
                except Exception:
                    log.failure("while watching {writer!r} for writing", writer=writer)
                    self.__disconnect(writer, sys.exc_info()[1])

    def __disconnect(self, writer: Any, why: object) -> None:
        """What the reactor does with a descriptor whose write ended it."""
        self.removeReader(writer)
        self.removeWriter(writer)
        if not isinstance(why, BaseException):
            why = error.ConnectionLost()
        writer.connectionLost(Failure(why))


def install_unless_chosen() -> bool:
    """
    Install L{EagerWriteReactor} as the global reactor, unless one is
    installed already (C{twistd -r NAME} chose it, or something imported
    the default). Where epoll is missing, the default stays.

    @return: whether it was installed.
    """
    if "twisted.internet.reactor" in sys.modules:
        return False
    from twisted.internet.main import installReactor

    try:
        reactor = EagerWriteReactor()
    except (OSError, AttributeError):  # no epoll here
        return False
    installReactor(reactor)
    return True
