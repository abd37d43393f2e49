# -*- test-case-name: tests.test_wasm_filter -*-
"""
The host functions every filter may import (module C{wasmgate}).

  - C{now_ms() -> i64}: wall-clock milliseconds since the Unix epoch.
  - C{log(level: i32, ptr: i32, len: i32)}: 0 debug, 1 info, 2 warn,
    3 error (others: info). Goes to twisted.logger with the plugin's name,
    rate-limited per plugin so a chatty guest cannot flood the log.
  - C{counter_incr(key_ptr, key_len, delta: i64, ttl_ms: i64) -> i64} and
    C{counter_get(key_ptr, key_len) -> i64}: the shared L{CounterStore}, keys
    prefixed with C{"<plugin>:"} so plugins cannot read each other's
    counters.

A failing counter store traps the guest; the filter reports kind C{state}.
Host functions run on the filter thread, inside the wasm call.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from twisted.logger import Logger, LogLevel, formatEvent

from wasmgate.state import CounterStore, StateError
from wasmgate.wasm import _raw


class GuestFault(Exception):
    """The guest passed a host function nonsense (e.g. a range outside memory)."""


@dataclass(frozen=True)
class HostFunc:
    """
    One importable host function.

    C{make(ctx)} is called once per instance with its
    L{wasmgate.wasm.filter.InstanceContext} and returns
    C{fn(base, size, *args)} (see L{wasmgate.wasm._raw}).
    """

    params: tuple[str, ...]
    results: tuple[str, ...]
    make: Callable[[Any], _raw.HostFn]


class TokenBucket:
    """A thread-safe token bucket that also counts what it refused."""

    def __init__(self, *, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()
        self._lock = threading.Lock()
        self.refused = 0

    def take(self) -> tuple[bool, int]:
        """C{(allowed, refused since the last allowed take)}."""
        now = self._clock()
        with self._lock:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                refused, self.refused = self.refused, 0
                return True, refused
            self.refused += 1
            return False, 0


filter_request_id: ContextVar[str] = ContextVar("wasmgate_filter_request_id", default="")
"""The request the filter thread is working for: named in what plugins log."""


class LogCapture:
    """
    A plugin's logger that can also note what the plugin logs on this
    thread for a while (L{capturing}): a guest refusing its config or
    failing to start says why only in its log, and that belongs in the
    error the user sees (C{wasmgate check}, start-up, C{run_filter}).
    """

    max_lines = 5
    max_chars = 500

    def __init__(self, target: Logger) -> None:
        self._target = target
        self._local = threading.local()
        self.logger = Logger(namespace=target.namespace, source=target.source, observer=self._observe)

    def _observe(self, event: dict) -> None:
        request_id = filter_request_id.get()
        if request_id:
            event["request_id"] = request_id
            if isinstance(event.get("log_format"), str):
                event["log_format"] += " (request {request_id})"
        lines: Optional[list[str]] = getattr(self._local, "lines", None)
        if lines is not None and len(lines) < self.max_lines:
            text = event.get("message")
            if not isinstance(text, str):
                text = formatEvent(event)
            lines.append(text.strip()[: self.max_chars])
        self._target.observer(event)

    @contextlib.contextmanager
    def capturing(self) -> Iterator[list[str]]:
        """Within: what the plugin logs on this thread is added to the list given."""
        previous = getattr(self._local, "lines", None)
        lines: list[str] = []
        self._local.lines = lines
        try:
            yield lines
        finally:
            self._local.lines = previous


_LEVELS = {0: LogLevel.debug, 1: LogLevel.info, 2: LogLevel.warn, 3: LogLevel.error}
MAX_LOG_MESSAGE = 4096
MAX_KEY = 1024
"""Counter keys longer than this (in bytes) are stored as a digest."""


def long_key(raw: bytes) -> str:
    """
    A fixed-length stand-in for a long counter key. Guests key counters on
    whatever a request carries (a bearer token, a long header); refusing
    those would fail every such request, and storing them whole would let
    one client's headers size the counter store.
    """
    return "sha256:" + hashlib.sha256(raw).hexdigest()


class HostEnv:
    """What a plugin's host functions share: its name, counters and log."""

    def __init__(
        self,
        *,
        plugin: str,
        state: Optional[CounterStore],
        log: Optional[Logger] = None,
        log_rate: float = 20.0,
        log_burst: float = 50.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.plugin = plugin
        self.state = state
        self.log = log if log is not None else Logger(namespace="wasmgate.plugin.%s" % (plugin,))
        self.log_bucket = TokenBucket(rate=log_rate, burst=log_burst)
        self.wall_clock = wall_clock
        self.prefix = plugin + ":"

    def key(self, base: int, size: int, ptr: int, length: int) -> str:
        """
        The store key for the guest's key bytes: namespaced, and for keys
        over L{MAX_KEY} bytes a digest of them (see L{long_key}).
        """
        try:
            raw = _raw.read(base, size, ptr, length)
        except IndexError as e:
            raise GuestFault(str(e)) from None
        if len(raw) > MAX_KEY:
            return self.prefix + long_key(raw)
        return self.prefix + raw.decode("utf-8", "surrogateescape")

    def _store(self) -> CounterStore:
        if self.state is None:
            raise StateError("no counter store configured")
        return self.state

    def now_ms(self, base: int, size: int) -> int:
        return int(self.wall_clock() * 1000)

    def emit_log(self, base: int, size: int, level: int, ptr: int, length: int) -> None:
        allowed, refused = self.log_bucket.take()
        if not allowed:
            return
        n = min(length & 0xFFFFFFFF, MAX_LOG_MESSAGE)
        try:
            text = _raw.read(base, size, ptr, n).decode("utf-8", "replace")
        except IndexError as e:
            raise GuestFault(str(e)) from None
        if refused:
            text += " (%d earlier messages from this plugin suppressed)" % (refused,)
        self.log.emit(
            _LEVELS.get(level, LogLevel.info),
            "plugin {plugin}: {message}",
            plugin=self.plugin,
            message=text,
        )

    def log_text(self, level: LogLevel, text: str) -> None:
        """Log C{text} from the plugin at C{level}, through its rate limit."""
        allowed, refused = self.log_bucket.take()
        if not allowed:
            return
        if refused:
            text += " (%d earlier messages from this plugin suppressed)" % (refused,)
        self.log.emit(level, "plugin {plugin}: {message}", plugin=self.plugin, message=text)

    def counter_incr(self, base: int, size: int, kptr: int, klen: int, delta: int, ttl_ms: int) -> int:
        key = self.key(base, size, kptr, klen)
        try:
            return int(self._store().incr(key, delta, ttl_ms))
        except StateError:
            raise
        except Exception as e:
            raise StateError("counter store failed: %s" % (e,)) from e

    def counter_get(self, base: int, size: int, kptr: int, klen: int) -> int:
        key = self.key(base, size, kptr, klen)
        try:
            return int(self._store().get(key))
        except StateError:
            raise
        except Exception as e:
            raise StateError("counter store failed: %s" % (e,)) from e


def wasmgate_functions(env: HostEnv) -> dict[tuple[str, str], HostFunc]:
    """The C{wasmgate} import module for one plugin."""
    return {
        ("wasmgate", "now_ms"): HostFunc((), ("i64",), lambda ctx: env.now_ms),
        ("wasmgate", "log"): HostFunc(("i32", "i32", "i32"), (), lambda ctx: env.emit_log),
        ("wasmgate", "counter_incr"): HostFunc(
            ("i32", "i32", "i64", "i64"), ("i64",), lambda ctx: env.counter_incr
        ),
        ("wasmgate", "counter_get"): HostFunc(("i32", "i32"), ("i64",), lambda ctx: env.counter_get),
    }
