# -*- test-case-name: tests.test_filterjobs -*-
"""
How filter work reaches the filter thread pool: several jobs to a thread
hop, a fair share of the threads for each route, and a bounded queue.

Handing each job to a L{ThreadPool} on its own costs the reactor ~15 µs
(Twisted's worker team, a queue, a thread wake-up, a C{callFromThread}
back) and, on a busy gateway, a GIL hand-over each way. Here the reactor
queues a job and starts a drain in the pool only when no drain waits for
work and fewer run than the pool has threads; a drain takes jobs until
there have been none for C{linger} seconds, and hands results back to the
reactor in one C{callFromThread} for as many as are done by then. Under
load one hop carries many jobs; each job is still one hop off the reactor
thread (filters never run on it).

Jobs queue by lane (a route's chain): drains take lanes in turn, and a lane
may hold at most all threads but one, so a route whose filter is slow (or a
flood on it) cannot starve the others. Past C{max_queue} waiting jobs a new
one fails at once with L{QueueFull} (the gateway answers 503). A job whose
Deferred was cancelled while it waited (its client left) is never run.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Hashable, Optional, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")
_Job = tuple[Callable[..., Any], tuple[Any, ...], "Deferred[Any]"]


class QueueFull(Exception):
    """C{filters.max_queue} jobs are waiting already: try again later (503)."""


class _Lane:
    __slots__ = ("jobs", "running", "ready")

    def __init__(self) -> None:
        self.jobs: deque[_Job] = deque()
        self.running = 0
        self.ready = False


class BatchingRunner:
    """Runs filter jobs in a thread pool: see the module docstring."""

    linger = 0.05
    """How long a drain waits for more work before it gives its thread back."""
    batch = 8
    """Results handed back together when more jobs are waiting (at most this
    many wait for each other): fewer wake-ups of a busy reactor."""

    def __init__(
        self, reactor: IReactorFromThreads, pool: ThreadPool, *, workers: int, max_queue: int = 1024
    ) -> None:
        self._reactor = reactor
        self._pool = pool
        self.workers = workers
        self.max_queue = max_queue
        self.rejected = 0
        """Jobs refused because the queue was full."""
        self.dropped = 0
        """Jobs not run because their Deferred was cancelled while they waited."""
        self._lanes: dict[Hashable, _Lane] = {}
        self._ready: deque[Hashable] = deque()
        self._queued = 0
        self._cond = threading.Condition(threading.Lock())
        self._draining = 0
        self._waiting = 0
        self._closing = False
        self._done: deque[tuple[Deferred[Any], bool, Any]] = deque()
        self._delivering = False

    def run(self, fn: Callable[..., T], *args: Any, lane: Hashable = None, bounded: bool = True) -> "Deferred[T]":
        """
        Run C{fn(*args)} in the pool; fires on the reactor thread. Clean-up
        that must happen whatever the load (giving back instances a request
        holds) is not C{bounded}: refusing it would keep them held.
        """
        d: Deferred[Any] = Deferred()
        cond = self._cond
        with cond:
            if bounded and self._queued >= self.max_queue:
                self.rejected += 1
                return fail(QueueFull("%d filter jobs are waiting already" % (self._queued,)))
            entry = self._lanes.get(lane)
            if entry is None:
                entry = self._lanes[lane] = _Lane()
            entry.jobs.append((fn, args, d))
            self._queued += 1
            self._mark_ready(lane, entry)
            if self._waiting:
                cond.notify()
            # More waiting jobs than sleeping drains to take them: another drain.
            start = self._queued > self._waiting and self._draining < self.workers
            if start:
                self._draining += 1
        if start:
            self._pool.callInThread(self._drain)
        return d

    def queued(self) -> int:
        """Jobs waiting for a thread."""
        return self._queued

    def close(self) -> None:
        """Let waiting drains go now (before the pool stops), not after C{linger}."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def _lane_cap(self) -> int:
        return max(1, self.workers - 1)

    def _mark_ready(self, key: Hashable, lane: _Lane) -> None:
        if lane.jobs and not lane.ready and lane.running < self._lane_cap():
            lane.ready = True
            self._ready.append(key)

    def _take(self) -> Optional[tuple[Hashable, _Lane, _Job]]:
        """The next job, lanes in turn (lock held); None when there is none."""
        while self._ready:
            key = self._ready.popleft()
            lane = self._lanes[key]
            lane.ready = False
            if not lane.jobs:
                continue
            job = lane.jobs.popleft()
            self._queued -= 1
            lane.running += 1
            self._mark_ready(key, lane)
            return key, lane, job
        return None

    def _drain(self) -> None:
        cond = self._cond
        undelivered = 0
        while True:
            with cond:
                taken = self._take()
                if taken is None:
                    if undelivered:
                        undelivered = 0
                        self._hand_back_locked()
                    if not self._closing:
                        self._waiting += 1
                        cond.wait(self.linger)
                        self._waiting -= 1
                        taken = self._take()
                    if taken is None:
                        self._draining -= 1
                        return
            key, lane, (fn, args, d) = taken
            if d.called:
                self.dropped += 1  # cancelled while it waited: its client is gone
                outcome = None
            else:
                try:
                    outcome = (d, True, fn(*args))
                except BaseException:
                    outcome = (d, False, Failure())
            with cond:
                lane.running -= 1
                self._mark_ready(key, lane)
                if not lane.jobs and not lane.running:
                    del self._lanes[key]
                if outcome is not None:
                    self._done.append(outcome)
                    undelivered += 1
                    if undelivered >= self.batch or not self._queued:
                        undelivered = 0
                        self._hand_back_locked()

    def _hand_back_locked(self) -> None:
        """Have the reactor fire what is done (once, however many are)."""
        if self._delivering:
            return
        self._delivering = True
        self._reactor.callFromThread(self._deliver)

    def _deliver(self) -> None:
        with self._cond:
            self._delivering = False
            done, self._done = self._done, deque()
        for d, ok, value in done:
            if d.called:
                continue
            if ok:
                d.callback(value)
            else:
                d.errback(value)
