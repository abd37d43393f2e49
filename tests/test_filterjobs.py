"""
L{wasmgate.filterjobs.BatchingRunner}: filter jobs reach a real thread
pool in batches, routes share it fairly, the queue is bounded, and work
for a client that left is not done.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import gatherResults
from twisted.python.threadpool import ThreadPool

from wasmgate.filterjobs import BatchingRunner, QueueFull


@pytest.fixture
def threads4() -> Iterator[ThreadPool]:
    pool = ThreadPool(minthreads=0, maxthreads=4, name="jobs")
    pool.start()
    yield pool
    pool.stop()


@pytest_twisted.inlineCallbacks
def test_results_and_errors_come_back_on_the_reactor_thread(threads4: ThreadPool) -> Any:
    runner = BatchingRunner(reactor, threads4, workers=4)
    where: list[str] = []

    def job(x: int) -> int:
        where.append(threading.current_thread().name)
        if x < 0:
            raise ValueError("negative")
        return x * 2

    results = yield gatherResults([runner.run(job, i) for i in range(20)])
    assert results == [i * 2 for i in range(20)]
    assert threading.current_thread().name not in where
    with pytest.raises(ValueError):
        yield runner.run(job, -1)
    runner.close()


@pytest_twisted.inlineCallbacks
def test_a_slow_route_leaves_a_thread_for_the_others(threads4: ThreadPool) -> Any:
    """40 jobs of 0.2 s on one lane: a job on another lane still runs at once."""
    runner = BatchingRunner(reactor, threads4, workers=4)
    slow = [runner.run(time.sleep, 0.2, lane="slow") for _ in range(40)]
    yield task.deferLater(reactor, 0.05, lambda: None)
    started = time.monotonic()
    yield runner.run(lambda: None, lane="fast")
    assert time.monotonic() - started < 0.15
    for d in slow:
        d.cancel()
    yield gatherResults(slow, consumeErrors=True).addErrback(lambda f: None)
    runner.close()


@pytest_twisted.inlineCallbacks
def test_the_queue_is_bounded_and_cancelled_jobs_never_run(threads4: ThreadPool) -> Any:
    runner = BatchingRunner(reactor, threads4, workers=1, max_queue=5)
    ran: list[int] = []

    def job(i: int) -> None:
        time.sleep(0.05)
        ran.append(i)

    jobs = [runner.run(job, 0)]
    yield task.deferLater(reactor, 0.02, lambda: None)  # it runs
    jobs += [runner.run(job, i) for i in range(1, 6)]  # five wait
    refused = runner.run(job, 99)
    with pytest.raises(QueueFull):
        yield refused
    assert runner.rejected == 1
    for d in jobs[2:]:
        d.cancel()  # their clients left
    yield gatherResults(jobs, consumeErrors=True).addErrback(lambda f: None)
    yield task.deferLater(reactor, 0.1, lambda: None)
    assert sorted(ran) == [0, 1] and runner.dropped == 4
    runner.close()
