"""
Tests for L{wasmgate.state_redis}, against a real C{redis-server} on a free
loopback port (see L{tests.redis_server}).

The store's C{incr}/C{get} block, and the reactor runs in the test's own
thread, so the tests call them from other threads (C{deferToThread}, a
C{ThreadPool}), as filters do.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.logger import globalLogPublisher
from twisted.python.threadpool import ThreadPool

from tests.redis_server import RedisServer, free_port
from wasmgate.state import CounterStore, StateError
from wasmgate.state_redis import RedisCounterStore, parse_redis_url


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_store() -> Iterator[Callable[..., RedisCounterStore]]:
    stores = []

    def make(url: str, **kwargs: Any) -> RedisCounterStore:
        store = RedisCounterStore(url=url, reactor=reactor, **kwargs)
        stores.append(store)
        return store

    yield make
    for store in stores:
        pytest_twisted.blockon(store.aclose())


def timed(f: Callable[[], Any]) -> Callable[[], tuple[Any, float]]:
    """C{f} made to return (its result or the exception it raised, seconds)."""

    def run() -> tuple[Any, float]:
        start = time.monotonic()
        try:
            result = f()
        except Exception as e:
            result = e
        return result, time.monotonic() - start

    return run


def test_parse_url() -> None:
    a = parse_redis_url("redis://:s%40cret@redis.internal:6390/3")
    assert (a.host, a.port, a.db, a.password, a.username) == ("redis.internal", 6390, 3, "s@cret", None)
    assert a.display == "redis://redis.internal:6390/3"
    b = parse_redis_url("rediss://user:pw@[::1]")
    assert (b.host, b.port, b.db, b.tls, b.username) == ("::1", 6379, 0, True, "user")
    assert b.display == "rediss://[::1]:6379/0"
    for bad, message in [
        ("http://127.0.0.1:6379/0", "redis://"),
        ("redis://127.0.0.1:6379/x", "database number"),
        ("redis://127.0.0.1:port/0", "bad redis URL"),
        ("redis:///0", "no host"),
        ("redis://127.0.0.1:6379/0?password=x", "query"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_redis_url(bad)


@pytest_twisted.inlineCallbacks
def test_incr_get_ttl(redis: RedisServer, make_store: Callable[..., RedisCounterStore]) -> Any:
    """
    incr/get round trip; the TTL is set when the key is created and later
    increments (even with another TTL) do not extend it.
    """
    store = make_store(redis.url)
    assert isinstance(store, CounterStore)
    yield store.connect()

    def work() -> tuple[int, ...]:
        return (
            store.get("a"),
            store.incr("a", 1, 5000),
            store.incr("a", 5, 60_000),
            store.incr("a", -2, 60_000),
            store.get("a"),
            store.incr("forever", 1, 0),
        )

    assert (yield deferToThread(work)) == (0, 1, 6, 4, 4, 1)
    assert redis.command("GET", "wasmgate:a") == "4"
    assert 0 < redis.command("PTTL", "wasmgate:a") <= 5000  # type: ignore[operator]
    assert redis.command("PTTL", "wasmgate:forever") == -1
    assert redis.command("EXISTS", "a") == 0

    # An expired key starts over, with a fresh TTL.
    yield deferToThread(store.incr, "short", 7, 50)
    yield deferLater(reactor, 0.15, lambda: None)
    assert (yield deferToThread(store.get, "short")) == 0
    assert (yield deferToThread(store.incr, "short", 1, 5000)) == 1
    assert 1000 < redis.command("PTTL", "wasmgate:short") <= 5000  # type: ignore[operator]


@pytest_twisted.inlineCallbacks
def test_values_saturate_and_non_integers_fail(
    redis: RedisServer, make_store: Callable[..., RedisCounterStore]
) -> Any:
    """Like the memory store: i64 saturation; a foreign non-integer is an error."""
    store = make_store(redis.url)
    yield store.connect()
    big = 1 << 62
    assert (yield store.incr_async("n", big, 10_000)) == big
    assert (yield store.incr_async("n", big, 0)) == (1 << 63) - 1
    assert (yield store.incr_async("n", -1, 0)) == (1 << 63) - 2
    assert 0 < redis.command("PTTL", "wasmgate:n") <= 10_000  # type: ignore[operator]
    assert (yield store.incr_async("m", -big, 0)) == -big
    assert (yield store.incr_async("m", -big - 1, 0)) == -(1 << 63)

    redis.command("SET", "wasmgate:text", "hello")
    for call in (lambda: store.incr("text", 1, 0), lambda: store.get("text")):
        error, _ = yield deferToThread(timed(call))
        assert isinstance(error, StateError)
        assert "integer" in str(error)


@pytest_twisted.inlineCallbacks
def test_key_prefix_db_and_password(tmp_path: Path, make_store: Callable[..., RedisCounterStore]) -> Any:
    """Keys go under the prefix, in the URL's database, with its password."""
    server = RedisServer(tmp_path / "pw", password="s3 cret")
    server.start()
    try:
        store = make_store(f"redis://:s3%20cret@127.0.0.1:{server.port}/2", key_prefix="edge-eu:")
        yield store.connect()
        assert (yield deferToThread(store.incr, "k", 3, 0)) == 3
        assert server.command("GET", "edge-eu:k", db=2) == "3"
        assert server.command("EXISTS", "edge-eu:k") == 0

        wrong = make_store(f"redis://:nope@127.0.0.1:{server.port}/0")
        with pytest.raises(StateError) as info:
            yield wrong.connect()
        message = str(info.value)
        assert message.startswith(f"redis at redis://127.0.0.1:{server.port}/0 unreachable: ")
        assert "auth" in message
        assert "nope" not in message and "s3" not in message
    finally:
        server.stop()


@pytest_twisted.inlineCallbacks
def test_atomic_across_threads(redis: RedisServer, make_store: Callable[..., RedisCounterStore]) -> Any:
    """N threads x M increments, through two stores (two gateways): N*M."""
    first = make_store(redis.url)
    second = make_store(redis.url)
    yield first.connect()
    yield second.connect()
    threads, increments = 8, 150
    pool = ThreadPool(minthreads=threads, maxthreads=threads, name="test-filters")
    pool.start()
    try:

        def work(store: RedisCounterStore) -> int:
            values = [store.incr("shared", 1, 60_000) for _ in range(increments)]
            assert values == sorted(values)
            return values[-1]

        lasts = yield gatherResults(
            [
                deferToThreadPool(reactor, pool, work, first if i % 2 else second)
                for i in range(threads)
            ]
        )
    finally:
        pool.stop()
    assert max(lasts) == threads * increments
    assert (yield deferToThread(first.get, "shared")) == threads * increments
    assert (yield deferToThread(second.get, "shared")) == threads * increments


@pytest_twisted.inlineCallbacks
def test_blocking_call_on_reactor_thread(
    redis: RedisServer, make_store: Callable[..., RedisCounterStore]
) -> Any:
    """A blocking call from the reactor thread fails clearly instead of hanging."""
    store = make_store(redis.url)
    yield store.connect()
    with pytest.raises(StateError, match="reactor thread"):
        store.incr("a", 1, 0)
    with pytest.raises(StateError, match="reactor thread"):
        store.get("a")
    assert (yield store.get_async("a")) == 0


@pytest_twisted.inlineCallbacks
def test_redis_killed_then_back(redis: RedisServer, make_store: Callable[..., RedisCounterStore]) -> Any:
    """
    With Redis gone, calls fail with StateError, without hanging; when it
    comes back on the same address, calls succeed again by themselves. One
    log line says it went away, one that it is back.
    """
    store = make_store(redis.url, timeout=0.25)
    yield store.connect()
    assert (yield deferToThread(store.incr, "c", 1, 0)) == 1

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield deferToThread(redis.kill)
        failures = []
        for _ in range(6):
            error, elapsed = yield deferToThread(timed(lambda: store.incr("c", 1, 0)))
            assert isinstance(error, StateError), error
            assert str(error).startswith(f"redis at {redis.url}")
            assert elapsed < 1.25  # generous: timeout is 0.25 s
            failures.append(str(error))
            yield deferLater(reactor, 0.2, lambda: None)
        assert any("refused" in f for f in failures), failures

        yield deferToThread(redis.start)
        start = time.monotonic()
        while True:
            result, _ = yield deferToThread(timed(lambda: store.incr("c", 1, 0)))
            if not isinstance(result, Exception):
                break
            assert time.monotonic() - start < 8, result
            yield deferLater(reactor, 0.05, lambda: None)
        assert result == 1  # the restarted server is empty
    finally:
        globalLogPublisher.removeObserver(events.append)

    ours = [e for e in events if e.get("log_namespace", "").startswith("wasmgate.state_redis")]
    down = [e for e in ours if "unreachable" in e["log_format"]]
    back = [e for e in ours if "reachable again" in e["log_format"]]
    assert len(down) == 1, ours
    assert len(back) == 1, ours
    # Several reconnection attempts failed meanwhile, but nobody logged each.
    assert len(events) <= 6, [e.get("log_format") for e in events]


@pytest_twisted.inlineCallbacks
def test_unreachable_logged_once_per_interval(
    make_store: Callable[..., RedisCounterStore],
) -> Any:
    """While Redis stays away: one line at first, then one per log_interval."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        store = make_store(
            f"redis://127.0.0.1:{free_port()}/0", log_interval=0.5, reconnect_max_delay=0.2
        )
        yield deferLater(reactor, 1.3, lambda: None)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert store.url.endswith("/0")
    lines = [e for e in events if e.get("log_namespace", "").startswith("wasmgate.state_redis")]
    assert 2 <= len(lines) <= 3, lines
    assert "still unreachable" in lines[-1]["log_format"]
    assert lines[-1]["failures"] >= 4  # attempts every <= 0.2 s, logged far fewer times


@pytest_twisted.inlineCallbacks
def test_redis_frozen_times_out(redis: RedisServer, make_store: Callable[..., RedisCounterStore]) -> Any:
    """A server that stops answering: StateError after about timeout; then fine."""
    store = make_store(redis.url, timeout=0.2)
    yield store.connect()
    redis.freeze()
    try:
        error, elapsed = yield deferToThread(timed(lambda: store.incr("f", 1, 0)))
    finally:
        redis.thaw()
    assert isinstance(error, StateError)
    assert "no answer to INCRBY within" in str(error)
    assert 0.15 < elapsed < 1.2
    result, _ = yield deferToThread(timed(lambda: store.incr("f", 1, 0)))
    assert result in (1, 2)  # the timed-out increment may have landed


@pytest_twisted.inlineCallbacks
def test_connect_nothing_listening(make_store: Callable[..., RedisCounterStore]) -> Any:
    """connect() fails fast with a clear message when nobody listens."""
    port = free_port()
    store = make_store(f"redis://127.0.0.1:{port}/0", connect_timeout=2.0)
    start = time.monotonic()
    with pytest.raises(StateError) as info:
        yield store.connect()
    assert time.monotonic() - start < 2.5
    message = str(info.value)
    assert message.startswith(f"redis at redis://127.0.0.1:{port}/0 unreachable: ")
    assert "refused" in message.lower()
    error, _ = yield deferToThread(timed(lambda: store.incr("x", 1, 0)))
    assert isinstance(error, StateError) and "unreachable" in str(error)


@pytest_twisted.inlineCallbacks
def test_close(redis: RedisServer, make_store: Callable[..., RedisCounterStore]) -> Any:
    """After close (from a thread) or aclose, calls fail; closing twice is fine."""
    first = make_store(redis.url)
    second = make_store(redis.url)
    yield first.connect()
    yield second.connect()
    yield deferToThread(first.close)
    error, _ = yield deferToThread(timed(lambda: first.incr("a", 1, 0)))
    assert isinstance(error, StateError) and "closed" in str(error)
    yield second.aclose()
    yield second.aclose()
    with pytest.raises(StateError, match="closed"):
        yield second.incr_async("a", 1, 0)
    with pytest.raises(StateError, match="closed"):
        yield second.connect()


@pytest_twisted.inlineCallbacks
def test_tls(tmp_path: Path, make_store: Callable[..., RedisCounterStore]) -> Any:
    """rediss:// verifies the server against the given CA."""
    from tests.certs import issue, make_ca, write_pair

    ca = make_ca()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    write_pair(issue(ca, ["localhost"]), tmp_path / "cert.pem", tmp_path / "key.pem")
    server = RedisServer(tmp_path / "tls", tls=(tmp_path / "cert.pem", tmp_path / "key.pem"))
    server.start()
    try:
        store = make_store(server.url, tls_ca_file=str(tmp_path / "ca.pem"))
        yield store.connect()
        assert (yield deferToThread(store.incr, "t", 2, 0)) == 2

        other = make_ca("another CA")
        (tmp_path / "other.pem").write_bytes(other.cert_pem)
        untrusting = make_store(server.url, tls_ca_file=str(tmp_path / "other.pem"))
        with pytest.raises(StateError) as info:
            yield untrusting.connect()
        assert str(info.value).startswith(f"redis at {server.url} unreachable: ")
        assert "certificate verify failed" in str(info.value)
    finally:
        server.stop()
