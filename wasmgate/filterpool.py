# -*- test-case-name: tests.test_ops -*-
"""
The thread pool filters run in.

Its threads are scheduled C{SCHED_BATCH} on Linux. A filter thread woken
with a job would otherwise preempt the reactor thread at once (the kernel
favours a task that just woke), and on a busy core each such switch comes
with a fight for the GIL: measured with two filters on one core, the
reactor was preempted 2.5 times a request, 5.3 context switches a request
in all. As batch tasks the filter threads still get their fair share of
the CPU, but they run when the reactor waits for I/O or its time slice
ends, several jobs in a row: 0.6 switches a request, 17% more requests
per second at 15% less CPU each. On an idle core nothing waits: the
reactor is asleep in C{epoll}.
"""
from __future__ import annotations

import os
import queue
import threading
from collections import deque
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


def batch_scheduling() -> bool:
    """
    Make the calling thread a C{SCHED_BATCH} task (Linux; nothing
    elsewhere). Needs no privilege: it only gives up wake-up preemption.
    """
    setter = getattr(os, "sched_setscheduler", None)
    policy = getattr(os, "SCHED_BATCH", None)
    if setter is None or policy is None:
        return False
    try:
        setter(0, policy, os.sched_param(0))
    except OSError:
        return False
    return True


class _BatchThread(threading.Thread):
    def run(self) -> None:
        batch_scheduling()
        super().run()


class FilterThreadPool(ThreadPool):
    """A L{ThreadPool} whose threads are batch-scheduled (see the module)."""

    threadFactory = _BatchThread


class BatchingRunner:
    """
    Runs filter jobs in a L{ThreadPool}, several to a thread hop.

    Handing each job to the pool on its own costs the reactor ~15 µs
    (Twisted's worker team, a queue, a thread wake-up, and a
    C{callFromThread} back) and, on a busy gateway, a GIL hand-over each
    way (measured: bench/README.md). Here the reactor puts a job on a queue
    and starts a drain in the pool only when no drain waits for work and
    fewer run than the pool has threads; a drain takes jobs until the queue
    has been empty for C{linger} seconds, and results go back to the reactor
    in one C{callFromThread} for as many as are done by then. Under load one
    hop carries many jobs; each job is still one hop off the reactor thread
    (filters never run on it).

    A job whose Deferred was cancelled before a drain took it is not run.
    """

    linger = 0.05
    """How long a drain waits for more work before it gives its thread back."""
    batch = 8
    """Results handed back together when more jobs are waiting (at most this
    many wait for each other): fewer wake-ups of a busy reactor."""

    def __init__(self, reactor: IReactorFromThreads, pool: ThreadPool, *, workers: int) -> None:
        self._reactor = reactor
        self._pool = pool
        self.workers = workers
        self._jobs: "queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]]" = (
            queue.SimpleQueue()
        )
        self._done: "deque[tuple[Deferred[Any], bool, Any]]" = deque()
        self._lock = threading.Lock()
        self._draining = 0
        self._waiting = 0
        self._delivering = False

    def run(self, fn: Callable[..., T], *args: Any) -> "Deferred[T]":
        """Run C{fn(*args)} in the pool; fires on the reactor thread."""
        d: Deferred[Any] = Deferred()
        jobs = self._jobs
        jobs.put((fn, args, d))
        with self._lock:
            start = jobs.qsize() > self._waiting and self._draining < self.workers
            if start:
                self._draining += 1
        if start:
            self._pool.callInThread(self._drain)
        return d

    def queued(self) -> int:
        """Jobs waiting for a thread."""
        return self._jobs.qsize()

    def close(self) -> None:
        """Let waiting drains go now (before the pool stops), not after C{linger}."""
        with self._lock:
            waiting = self._waiting
        for _ in range(waiting):
            self._jobs.put(None)  # type: ignore[arg-type]

    def _drain(self) -> None:
        jobs = self._jobs
        lock = self._lock
        undelivered = 0
        while True:
            try:
                job = jobs.get_nowait()
            except queue.Empty:
                if undelivered:
                    undelivered = 0
                    self._hand_back()
                with lock:
                    self._waiting += 1
                try:
                    job = jobs.get(timeout=self.linger)
                except queue.Empty:
                    job = None
                with lock:
                    self._waiting -= 1
            if job is None:  # idle for a while, or closed
                with lock:
                    if jobs.empty():  # (a job put meanwhile saw this drain waiting)
                        self._draining -= 1
                        return
                continue
            fn, args, d = job
            if d.called:
                continue  # cancelled while it waited
            try:
                outcome = (d, True, fn(*args))
            except BaseException:
                outcome = (d, False, Failure())
            self._done.append(outcome)
            undelivered += 1
            if undelivered >= self.batch or jobs.empty():
                undelivered = 0
                self._hand_back()

    def _hand_back(self) -> None:
        """Have the reactor fire what is done (once, however many are)."""
        with self._lock:
            if self._delivering:
                return
            self._delivering = True
        self._reactor.callFromThread(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            self._delivering = False
        done = self._done
        while done:
            d, ok, value = done.popleft()
            if d.called:
                continue
            if ok:
                d.callback(value)
            else:
                d.errback(value)
