"""
L{wasmgate.sharedcounters.SharedCounterStore}: what only the shared table
does (bad tables refused, exact counts when several processes and threads
increment the same key at once). The semantics it shares with the memory
store are tested on both in C{tests.test_state}.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from wasmgate.sharedcounters import SharedCounterStore
from wasmgate.state import StateError


def test_closed_raises_state_error_and_bad_tables_are_refused() -> None:
    s = SharedCounterStore.create()
    s.incr("a", 1, 0)
    s.close()
    with pytest.raises(StateError):
        s.incr("a", 1, 0)
    with pytest.raises(ValueError):
        SharedCounterStore.create(max_keys=0)
    import os

    r, w = os.pipe()
    os.close(w)
    with open(os.devnull, "rb") as f, pytest.raises(Exception):
        SharedCounterStore.attach(f.fileno())
    os.close(r)


_WORKER = textwrap.dedent(
    """
    import sys, threading
    from wasmgate.sharedcounters import SharedCounterStore
    s = SharedCounterStore.attach(int(sys.argv[1]))
    def work():
        for i in range(2000):
            s.incr("shared", 1, 60_000)
            s.incr("key%d" % (i % 50), 1, 60_000)
    threads = [threading.Thread(target=work) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    """
)


def test_exact_across_processes_and_threads() -> None:
    """Two other processes (three threads each) and this one, on one key."""
    s = SharedCounterStore.create(max_keys=1000)
    fd = s.fileno()
    import os

    os.set_inheritable(fd, True)
    others = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(fd)], pass_fds=[fd]) for _ in range(2)
    ]
    mine = [threading.Thread(target=lambda: [s.incr("shared", 1, 60_000) for _ in range(2000)]) for _ in range(2)]
    for t in mine:
        t.start()
    for t in mine:
        t.join()
    assert [p.wait(60) for p in others] == [0, 0]
    assert s.get("shared") == 2 * 3 * 2000 + 2 * 2000
    assert sum(s.get("key%d" % i) for i in range(50)) == 2 * 3 * 2000
    assert len(s) == 51
