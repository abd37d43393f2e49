# -*- test-case-name: tests.test_http_server -*-
"""
Timers for the hot path: a deadline that is cheap to move, and a watch on
a paused producer.

A connection's deadline changes with every request (and a body's with
every read), so it is not rescheduled each time: L{Deadline} keeps one
reactor timer, moved only when the deadline comes sooner; when it fires
early, its callback works out the real deadline and sets it again.
"""
from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer


class Deadline:
    """One reactor timer calling C{callback} at (or before) the time set."""

    __slots__ = ("_clock", "_callback", "_call")

    def __init__(self, clock: IReactorTime, callback: Callable[[], None]) -> None:
        self._clock = clock
        self._callback = callback
        self._call: Optional[IDelayedCall] = None

    def at(self, when: float) -> None:
        """Fire no later than C{when}; the callback must check the time."""
        call = self._call
        delay = max(0.0, when - self._clock.seconds())
        if call is not None and call.active():
            if call.getTime() <= when:
                return
            call.reset(delay)
            return
        self._call = self._clock.callLater(delay, self._fire)

    def cancel(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def close(self) -> None:
        """
        Cancel for good and let go of the callback: it is usually a method
        of the deadline's owner, which holds the deadline, and a closed
        connection should go with its last reference, not wait for the
        (rarely run) garbage collector.
        """
        self.cancel()
        self._callback = _nothing

    def _fire(self) -> None:
        self._call = None
        self._callback()


def _nothing() -> None:
    pass


@implementer(IPushProducer)
class StallWatch:
    """
    A producer as the client's connection sees it: pausing it pauses the
    producer (the upstream body), and a pause longer than C{timeout} (the
    client read nothing meanwhile) stops it and calls C{on_stall}.
    """

    def __init__(
        self,
        producer: IPushProducer,
        *,
        clock: IReactorTime,
        timeout: float,
        on_stall: Callable[[], None],
    ) -> None:
        self._producer = producer
        self._clock = clock
        self._timeout = timeout
        self._on_stall = on_stall
        self._timer: Optional[IDelayedCall] = None

    @property
    def paused(self) -> bool:
        return self._timer is not None

    def pauseProducing(self) -> None:
        self._producer.pauseProducing()
        if self._timer is None:
            self._timer = self._clock.callLater(self._timeout, self._stall)

    def resumeProducing(self) -> None:
        self.cancel()
        self._producer.resumeProducing()

    def stopProducing(self) -> None:
        self.cancel()
        self._producer.stopProducing()

    def cancel(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _stall(self) -> None:
        self._timer = None
        self._producer.stopProducing()
        self._on_stall()
