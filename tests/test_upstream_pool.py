# -*- test-case-name: tests.test_upstream_pool -*-
"""
L{UpstreamPool}'s idle bounds, on a memory clock: per target, and in all
(the descriptors idle connections hold are reserved beside the clients').
"""
from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock, StringTransport

from wasmgate.http.upstream import UpstreamConnection, UpstreamPool


class _Target:
    def __init__(self, url: str) -> None:
        self.url = url


def _connection(pool: UpstreamPool, key: str) -> UpstreamConnection:
    conn = UpstreamConnection(pool, key)
    conn.makeConnection(StringTransport())
    return conn


def test_idle_connections_are_bounded_per_target_and_in_all() -> None:
    pool = UpstreamPool(MemoryReactorClock(), idle_timeout=60, max_idle_per_target=3, max_idle=5)
    a = [_connection(pool, "http://a") for _ in range(4)]
    b = [_connection(pool, "http://b") for _ in range(4)]
    for conn in a + b:
        pool.release(conn)
    kept = [c for c in a + b if not c.transport.disconnecting]
    assert kept == a[:3] + b[:2]  # three for a (its bound), then two for b (the pool's)
    assert pool.idle_count() == 5
    assert pool.idle(_Target("http://b")) is b[1]  # the newest idle one first
