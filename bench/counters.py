#!/usr/bin/env python3
"""
What one counter_incr costs in each counter store a gateway's workers can
use: the in-process memory store (one process), the shared-memory table
(several workers), with and without another process incrementing the same
keys meanwhile. Run alone (python3 bench/counters.py) or from bench/run.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from wasmgate.sharedcounters import SharedCounterStore  # noqa: E402
from wasmgate.state import MemoryCounterStore  # noqa: E402

KEYS = [f"rate_limiter:client:10.0.{i // 256}.{i % 256}:{w}" for i in range(64) for w in (0, 1)]

_RIVAL = """
import sys, time
from wasmgate.sharedcounters import SharedCounterStore
s = SharedCounterStore.attach(int(sys.argv[1]))
end = time.monotonic() + float(sys.argv[2])
keys = [f"rate_limiter:client:10.0.{i // 256}.{i % 256}:{w}" for i in range(64) for w in (0, 1)]
while time.monotonic() < end:
    for k in keys:
        s.incr(k, 1, 60_000)
"""


def _per_call(store: Any, seconds: float) -> float:
    calls = 0
    started = time.perf_counter()
    end = started + seconds
    while time.perf_counter() < end:
        for key in KEYS:
            store.incr(key, 1, 60_000)
        calls += len(KEYS)
    return (time.perf_counter() - started) / calls * 1e6


def measure(seconds: float = 2.0) -> dict[str, float]:
    """µs per incr: memory store, shared table alone, shared table with a rival process."""
    out = {"memory_us": _per_call(MemoryCounterStore(), seconds)}
    shared = SharedCounterStore.create()
    out["shared_us"] = _per_call(shared, seconds)
    fd = shared.fileno()
    os.set_inheritable(fd, True)
    rival = subprocess.Popen(
        [sys.executable, "-c", _RIVAL, str(fd), str(seconds + 1)],
        pass_fds=[fd],
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    try:
        time.sleep(0.3)
        out["shared_contended_us"] = _per_call(shared, seconds)
    finally:
        rival.wait(seconds + 10)
        shared.close()
    return {k: round(v, 2) for k, v in out.items()}


if __name__ == "__main__":
    result = measure()
    print("µs per counter_incr:")
    print(f"  memory store (one process):            {result['memory_us']}")
    print(f"  shared-memory table:                   {result['shared_us']}")
    print(f"  shared-memory table, another process:  {result['shared_contended_us']}")
