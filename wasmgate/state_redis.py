# -*- test-case-name: tests.test_state_redis -*-
"""
Counters shared by a fleet of gateways, in Redis (via txredisapi).

Filters call the store from filter-pool threads in the middle of a wasm
call, so L{RedisCounterStore.incr} and L{RedisCounterStore.get} block; they
hand the command to the reactor thread and wait for its answer, never longer
than C{timeout}. When Redis is away they fail with L{StateError} at once
(no connection) or after C{timeout} (no answer); meanwhile the store keeps
reconnecting in the background, so calls succeed again as soon as Redis is
back, and it says so in the log once per outage rather than once per
attempt.

C{incr} is one round trip: a Lua script (EVALSHA, EVAL when the server does
not know it yet) doing C{INCRBY} and then C{PEXPIRE} only if the key has no
expiry, i.e. Redis' C{PEXPIRE NX}, the TTL semantics of
L{wasmgate.state.CounterStore}. Like the in-memory store, values saturate
at the signed 64-bit range instead of failing.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional, TypeVar

import txredisapi
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread

from wasmgate._redisconn import Factory, Health, RetryingEndpoint, tcp_endpoint
from wasmgate._redisurl import RedisAddress, parse_redis_url
from wasmgate.state import StateError

__all__ = ["RedisAddress", "RedisCounterStore", "parse_redis_url"]

T = TypeVar("T")

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

# KEYS[1] key; ARGV[1] delta, ARGV[2] ttl_ms, ARGV[3] the value to saturate
# at on overflow. GET at the end returns the value as a string: Lua numbers
# are doubles and would round counters above 2**53.
_INCR_SCRIPT = b"""\
local v = redis.pcall('INCRBY', KEYS[1], ARGV[1])
if type(v) == 'table' and v.err then
  if not string.find(v.err, 'overflow') then
    return v
  end
  local pttl = redis.call('PTTL', KEYS[1])
  redis.call('SET', KEYS[1], ARGV[3])
  if pttl > 0 then
    redis.call('PEXPIRE', KEYS[1], pttl)
  end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return redis.call('GET', KEYS[1])
"""


class RedisCounterStore:
    """
    A L{wasmgate.state.CounterStore} in Redis, shared by every gateway that
    uses the same server, database and C{key_prefix}.

    Build it on the reactor thread, wait for L{connect} at start-up (so a
    gateway does not start without its counters), call L{incr} and L{get}
    from other threads, L{aclose} at shutdown.

    @param url: C{redis://[[user]:password@]host[:port][/db]} (C{rediss://}
        for TLS, verified against the system's trust roots).
    @param reactor: the reactor that owns the connection. (txredisapi itself
        schedules a few calls on the global reactor; it is the same one in a
        running gateway.)
    @param timeout: seconds a blocking call may take in all, from the
        calling thread's point of view; keep it below the plugins'
        C{timeout_ms}, or a slow Redis shows up as filter timeouts.
    @param key_prefix: put before every key, so several deployments can
        share a Redis.
    @param connect_timeout: bound on one TCP connection attempt and on
        L{connect}.
    @param reconnect_max_delay: the longest wait between reconnection
        attempts while Redis is away, i.e. how late the store may notice
        that it is back.
    @param log_interval: while Redis stays away, repeat the "unreachable"
        log line at most this often.
    @param tls_ca_file: for C{rediss://}, a PEM file of the CA certificate
        that signed the server's, instead of the system's trust roots.
    @param poolsize: connections kept open; commands are pipelined on them,
        so one is plenty for a single-threaded Redis.
    """

    _log = Logger()

    def __init__(
        self,
        *,
        url: str,
        reactor: Any,
        timeout: float = 0.25,
        key_prefix: str = "wasmgate:",
        connect_timeout: float = 2.0,
        reconnect_max_delay: float = 2.0,
        log_interval: float = 60.0,
        tls_ca_file: Optional[str] = None,
        poolsize: int = 1,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.address = parse_redis_url(url)
        self.url = self.address.display
        self.timeout = timeout
        self.key_prefix = key_prefix
        self.connect_timeout = connect_timeout
        self._prefix = key_prefix.encode("utf-8")
        self._reactor = reactor
        self._closed = False
        self._closing: Optional[Deferred[None]] = None
        self._health = Health(
            url=self.url, reactor=reactor, log=self._log, log_interval=log_interval
        )

        address = self.address
        endpoint = tcp_endpoint(reactor, address.host, address.port, connect_timeout)
        if address.tls:
            trust = None
            if tls_ca_file is not None:
                with open(tls_ca_file, "rb") as f:
                    trust = Certificate.loadPEM(f.read())
            endpoint = wrapClientTLS(optionsForClientTLS(address.host, trustRoot=trust), endpoint)
        elif tls_ca_file is not None:
            raise ValueError("tls_ca_file needs a rediss:// URL")
        factory = Factory(
            f"{address.host}:{address.port}",
            # SELECT even database 0: a connection then counts as usable only
            # once Redis has answered (after the TLS handshake, say).
            address.db,
            poolsize,
            isLazy=True,
            handler=txredisapi.ConnectionHandler,
            charset="utf-8",
            password=address.password,
            # Drop a connection that stays silent much longer than a call may
            # wait (half-open TCP, a frozen server) so that it gets replaced.
            replyTimeout=max(5.0, 4 * timeout),
            convertNumbers=False,
            username=address.username,
        )
        factory.health = self._health
        factory.reconnect = True
        # After a lost connection, try again soon; RetryingEndpoint does the
        # backing off (and keeps ClientService from logging every attempt).
        factory.initialDelay = 0.05
        factory.maxDelay = reconnect_max_delay
        # Fires when the pool is first complete, or fails on the first
        # refusal, which Factory.connectionError reports anyway.
        factory.deferred.addErrback(lambda _: None)
        self._factory = factory
        self._client = factory.handler
        factory.startConnecting(
            RetryingEndpoint(
                endpoint,
                reactor,
                name=self.url,
                max_delay=reconnect_max_delay,
                failed=self._health.attempt_failed,
            )
        )

    # -- the blocking CounterStore protocol, for filter threads

    def incr(self, key: str, delta: int, ttl_ms: int) -> int:
        """Add C{delta} to C{key} and return the new value (blocking)."""
        return self._blocking(self._incr, key, int(delta), int(ttl_ms))

    def get(self, key: str) -> int:
        """The value of C{key}, 0 when absent (blocking)."""
        return self._blocking(self._get, key)

    def close(self) -> None:
        """
        Stop using Redis; later calls raise L{StateError}. Safe from any
        thread: on the reactor thread it starts L{aclose} without waiting.
        """
        if isInIOThread():
            self.aclose()
            return
        self._closed = True
        done = threading.Event()

        def start() -> None:
            self.aclose().addBoth(lambda _: done.set())

        self._reactor.callFromThread(start)
        done.wait(self.connect_timeout)

    # -- the same on the reactor thread

    def incr_async(self, key: str, delta: int, ttl_ms: int) -> Deferred[int]:
        """L{incr} for callers on the reactor thread."""
        return self._incr(key, int(delta), int(ttl_ms), self.timeout)

    def get_async(self, key: str) -> Deferred[int]:
        """L{get} for callers on the reactor thread."""
        return self._get(key, self.timeout)

    def connect(self) -> Deferred[None]:
        """
        Fire when Redis answers, or fail with L{StateError} ("redis at URL
        unreachable: why") at the first failed attempt or after
        C{connect_timeout}: a gateway checks this before it starts serving.
        """
        if self._closed:
            return defer.fail(StateError("redis counter store is closed"))
        if not self._factory.size and self._health.down:
            # Already failed once before anybody asked.
            return defer.fail(self._health.unreachable())

        result: Deferred[None] = Deferred()
        ping = self._client.ping()

        def answered(_: object) -> None:
            if not result.called:
                result.callback(None)

        def failed(f: Failure) -> None:
            if result.called:
                return
            if f.check(txredisapi.ConnectionError):
                result.errback(self._health.unreachable())
            else:
                result.errback(self._translate(f, "PING"))

        ping.addCallbacks(answered, failed)
        self._health.waiters.append(result)

        def timed_out(f: Failure) -> Failure:
            if f.check(defer.TimeoutError):
                return Failure(
                    self._health.unreachable(f"no connection within {self.connect_timeout:g} s")
                )
            return f

        def cleanup(r: T) -> T:
            if result in self._health.waiters:
                self._health.waiters.remove(result)
            if not ping.called:
                ping.cancel()
            return r

        result.addTimeout(self.connect_timeout, self._reactor)
        result.addErrback(timed_out)
        result.addBoth(cleanup)
        return result

    def aclose(self) -> Deferred[None]:
        """Close the connections; fires when they are closed."""
        self._closed = True
        if self._closing is None:
            self._closing = self._factory.disconnect()
            self._closing.addErrback(
                lambda f: self._log.failure("closing redis connection", f)
            )
        closing: Deferred[None] = Deferred()

        def closed(result: T) -> T:
            closing.callback(None)
            return result

        self._closing.addBoth(closed)
        return closing

    # -- internals, on the reactor thread

    def _key(self, key: str) -> bytes:
        # Keys may carry surrogate escapes of a guest's non-UTF-8 bytes.
        return self._prefix + key.encode("utf-8", "surrogateescape")

    def _incr(self, key: str, delta: int, ttl_ms: int, timeout: float) -> Deferred[int]:
        saturated = _INT64_MAX if delta > 0 else _INT64_MIN
        return self._command(
            "INCRBY",
            lambda: self._client.eval(
                _INCR_SCRIPT, keys=[self._key(key)], args=[delta, ttl_ms, saturated]
            ),
            timeout,
        ).addCallback(_as_int)

    def _get(self, key: str, timeout: float) -> Deferred[int]:
        return self._command("GET", lambda: self._client.get(self._key(key)), timeout).addCallback(
            _as_int
        )

    def _command(self, what: str, send: Callable[[], Deferred[Any]], timeout: float) -> Deferred[Any]:
        if self._closed:
            return defer.fail(StateError("redis counter store is closed"))
        if not self._factory.size:
            # No connection: fail now rather than queue behind a reconnect.
            return defer.fail(self._health.unreachable())
        if timeout <= 0:
            return defer.fail(StateError(f"redis at {self.url}: no time left for {what}"))
        d = defer.maybeDeferred(send)
        d.addTimeout(timeout, self._reactor)
        return d.addErrback(lambda f: Failure(self._translate(f, what, timeout)))

    def _translate(self, f: Failure, what: str, timeout: Optional[float] = None) -> StateError:
        if f.check(StateError):
            return f.value  # type: ignore[return-value]
        if f.check(defer.TimeoutError):
            waited = self.timeout if timeout is None else timeout
            return StateError(f"redis at {self.url}: no answer to {what} within {waited:.3g} s")
        if f.check(txredisapi.ConnectionError):
            return StateError(f"redis at {self.url}: connection lost during {what}")
        if f.check(txredisapi.ResponseError):
            return StateError(f"redis at {self.url}: {what} failed: {f.getErrorMessage()}")
        if f.check(ValueError):
            return StateError(f"redis at {self.url}: {what}: {f.getErrorMessage()}")
        return StateError(f"redis at {self.url}: {what} failed: {f.type.__name__}: {f.getErrorMessage()}")

    def _blocking(self, call: Callable[..., Deferred[T]], *args: Any) -> T:
        """
        Run C{call(*args, timeout)} on the reactor thread and wait for it;
        the whole thing, reactor queueing included, takes at most
        C{timeout} (plus a little slack should the reactor be stalled).
        """
        if self._closed:
            raise StateError("redis counter store is closed")
        if isInIOThread():
            raise StateError(
                "RedisCounterStore.incr/get block and were called on the reactor "
                "thread; call them from a filter thread, or use incr_async/get_async"
            )
        deadline = time.monotonic() + self.timeout
        done = threading.Event()
        box: list[Any] = []

        def settle(result: object) -> None:
            box.append(result)
            done.set()

        def run() -> None:
            remaining = deadline - time.monotonic()
            try:
                d = call(*args, remaining)
            except BaseException:
                settle(Failure())
            else:
                d.addBoth(settle)

        self._reactor.callFromThread(run)
        if not done.wait(self.timeout + 0.05):
            raise StateError(
                f"redis at {self.url}: no answer within {self.timeout:g} s (reactor busy?)"
            )
        result = box[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result  # type: ignore[no-any-return]


def _as_int(value: Any) -> int:
    if value is None:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StateError(f"redis key does not hold an integer: {value!r:.40}") from None
