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
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread
from zope.interface import implementer

from wasmgate.state import StateError

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


@dataclass(frozen=True)
class RedisAddress:
    """Where a C{redis://[[user]:password@]host[:port][/db]} URL points."""

    host: str
    port: int
    db: int
    tls: bool = False
    username: Optional[str] = None
    password: Optional[str] = None

    @property
    def display(self) -> str:
        """The URL without credentials, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """
    Parse a Redis URL; C{ValueError} says what is wrong with it (without
    repeating a password it may contain).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"bad redis URL: {e}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"redis URL must start with redis:// or rediss://, not {parts.scheme or 'nothing'}")
    if not parts.hostname:
        raise ValueError("redis URL has no host")
    if parts.query or parts.fragment:
        raise ValueError("redis URL must not have a query or fragment")
    path = parts.path.strip("/")
    if not path:
        db = 0
    elif path.isdigit():
        db = int(path)
    else:
        raise ValueError(f"redis URL path must be a database number, not {path!r}")
    return RedisAddress(
        host=parts.hostname,
        port=port if port is not None else 6379,
        db=db,
        tls=parts.scheme == "rediss",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


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
        self._health = _Health(
            url=self.url, reactor=reactor, log=self._log, log_interval=log_interval
        )

        address = self.address
        endpoint = _tcp_endpoint(reactor, address.host, address.port, connect_timeout)
        if address.tls:
            trust = None
            if tls_ca_file is not None:
                with open(tls_ca_file, "rb") as f:
                    trust = Certificate.loadPEM(f.read())
            endpoint = wrapClientTLS(optionsForClientTLS(address.host, trustRoot=trust), endpoint)
        elif tls_ca_file is not None:
            raise ValueError("tls_ca_file needs a rediss:// URL")
        factory = _Factory(
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
        # After a lost connection, try again soon; _RetryingEndpoint does the
        # backing off (and keeps ClientService from logging every attempt).
        factory.initialDelay = 0.05
        factory.maxDelay = reconnect_max_delay
        # Fires when the pool is first complete, or fails on the first
        # refusal, which _Factory.connectionError reports anyway.
        factory.deferred.addErrback(lambda _: None)
        self._factory = factory
        self._client = factory.handler
        factory.startConnecting(
            _RetryingEndpoint(
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


def _tcp_endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    # HostnameEndpoint reports a refused connection only after its 0.3 s
    # attempt delay; an address needs no resolving nor racing.
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return HostnameEndpoint(reactor, host, port, timeout=timeout)


def _as_int(value: Any) -> int:
    if value is None:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StateError(f"redis key does not hold an integer: {value!r:.40}") from None


class _Health:
    """
    What the store knows about reaching Redis: why it last failed, for error
    messages, and the log lines, one per outage (then one per
    C{log_interval} while it lasts) instead of one per attempt.
    """

    def __init__(self, *, url: str, reactor: Any, log: Logger, log_interval: float) -> None:
        self.url = url
        self._reactor = reactor
        self._log = log
        self._log_interval = log_interval
        self.last_error: Optional[str] = None
        # Redis said no (wrong password or database, TLS failure): retry slowly.
        self.refusing = False
        self.down = False
        self._down_since = 0.0
        self._failures = 0
        self._logged_at = 0.0
        self._lost_in_handshake = False
        self.waiters: list[Deferred[None]] = []

    def unreachable(self, why: Optional[str] = None) -> StateError:
        why = why or self.last_error or "no connection (reconnecting)"
        return StateError(f"redis at {self.url} unreachable: {why}")

    def attempt_failed(self, f: Failure) -> None:
        """A connection attempt failed (refused, timed out, no route...)."""
        self.failed(f.getErrorMessage())

    def connection_lost(self, why: Failure, *, usable: bool) -> None:
        if usable:
            # Reconnecting at once; if that fails, attempt_failed logs it.
            self.last_error = f"connection lost ({why.getErrorMessage()})"
        elif not self.refusing:
            # Connected but lost before Redis answered: TLS refused, server
            # going away. Retry slowly, like a refusal. txredisapi reports
            # this again as a handshake error, without the reason;
            # handshake_failed ignores that.
            self._lost_in_handshake = self.refusing = True
            self.failed(why.getErrorMessage())

    def handshake_failed(self, why: str) -> None:
        """txredisapi's AUTH or SELECT failed (C{"Redis error: could not ..."})."""
        if self._lost_in_handshake:
            self._lost_in_handshake = False
            return
        self.refusing = True
        self.failed(why.replace("Redis error: ", ""))

    def connection_usable(self) -> None:
        if self.down:
            self._log.info(
                "redis at {url} reachable again after {seconds:.1f} s",
                url=self.url,
                seconds=self._reactor.seconds() - self._down_since,
            )
        self.down = self.refusing = self._lost_in_handshake = False
        self.last_error = None

    def failed(self, why: str) -> None:
        self.last_error = why = why.rstrip(".")
        now = self._reactor.seconds()
        self._failures += 1
        if not self.down:
            self.down = True
            self._down_since = self._logged_at = now
            self._failures = 1
            self._log.warn(
                "redis at {url} unreachable: {why}; retrying in the background",
                url=self.url,
                why=why,
            )
        elif now - self._logged_at >= self._log_interval:
            self._logged_at = now
            self._log.warn(
                "redis at {url} still unreachable after {failures} attempts: {why}",
                url=self.url,
                failures=self._failures,
                why=why,
            )
        self.waiters, waiting = [], self.waiters
        error = self.unreachable()
        for d in waiting:
            if not d.called:
                d.errback(error)


class _Protocol(txredisapi.RedisProtocol):
    """txredisapi's protocol, telling the store's L{_Health} how it went."""

    factory: "_Factory"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.usable = False
        self.whenConnected().addCallback(self._usable)

    def _usable(self, _: object) -> None:
        self.usable = True
        self.factory.health.connection_usable()

    def connectionLost(self, why: Failure) -> None:  # noqa: N802 (Twisted API)
        # First, so that the calls failed by super() find the reason recorded.
        self.factory.health.connection_lost(why, usable=self.usable)
        super().connectionLost(why)


class _Factory(txredisapi.RedisFactory):
    """
    txredisapi's factory, but it never gives up: txredisapi stops
    reconnecting for good when AUTH or SELECT fails, even when the
    connection merely dropped meanwhile or Redis was briefly at maxclients.
    After a refusal it retries every C{refused_retry_delay} seconds.
    (The store closes through L{disconnect}, which still stops it.)
    """

    protocol = _Protocol
    health: _Health
    refused_retry_delay = 10.0

    def stopTrying(self) -> Deferred[None]:  # noqa: N802 (txredisapi API)
        return defer.succeed(None)

    def connectionError(self, why: str) -> None:  # noqa: N802 (txredisapi API)
        super().connectionError(why)
        self.health.handshake_failed(why)

    def retryDelay(self, attempt: int) -> float:  # noqa: N802 (txredisapi API)
        delay = float(super().retryDelay(attempt))
        return max(delay, self.refused_retry_delay) if self.health.refusing else delay


@implementer(IStreamClientEndpoint)
class _RetryingEndpoint:
    """
    An endpoint whose C{connect} keeps trying (backing off up to
    C{max_delay}) until it succeeds or is cancelled, reporting each failure.

    txredisapi's pool reconnects through C{ClientService}, which logs every
    failed attempt; it only sees this endpoint succeed, so an outage costs
    one log line of ours instead of one of its per attempt.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        reactor: Any,
        *,
        name: str,
        max_delay: float,
        failed: Callable[[Failure], None],
        initial_delay: float = 0.05,
    ) -> None:
        self._endpoint = endpoint
        self._reactor = reactor
        self._name = name
        self._max_delay = max_delay
        self._initial_delay = initial_delay
        self._failed = failed

    def __repr__(self) -> str:
        return f"<redis endpoint {self._name}>"

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        state: dict[str, Any] = {"attempt": None, "retry": None, "cancelled": False, "delay": 0.0}

        def cancel(_: Deferred[Any]) -> None:
            state["cancelled"] = True
            if state["retry"] is not None and state["retry"].active():
                state["retry"].cancel()
            if state["attempt"] is not None:
                state["attempt"].cancel()

        result: Deferred[Any] = Deferred(cancel)

        def attempt() -> None:
            state["retry"] = None
            state["attempt"] = d = self._endpoint.connect(factory)
            d.addCallbacks(connected, failed)

        def connected(protocol: Any) -> None:
            state["attempt"] = None
            result.callback(protocol)

        def failed(f: Failure) -> None:
            state["attempt"] = None
            if state["cancelled"]:
                return
            self._failed(f)
            state["delay"] = min(self._max_delay, max(self._initial_delay, state["delay"] * 2))
            state["retry"] = self._reactor.callLater(state["delay"], attempt)

        attempt()
        return result
