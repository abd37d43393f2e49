# -*- test-case-name: tests.test_workers -*-
"""
The channel between a supervisor and one of its workers: JSON lines over a
pair of pipes. Either end may call the other (C{{"id", "op", ...}},
answered by C{{"id", "ok", "result" | "error"}}) or tell it of an event
(C{{"event", ...}}). Small and dull on purpose: it carries reloads,
metrics scrapes and readiness, never requests.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

MAX_LINE = 64 * 1024 * 1024
"""A metrics page of a big gateway fits; a runaway peer does not."""


class ControlError(Exception):
    """
    The other end answered a call with an error (its message), or went
    away. C{problems}: the lines of a configuration error, when it was one.
    """

    def __init__(self, message: str, problems: Optional[list[str]] = None) -> None:
        super().__init__(message)
        self.problems = problems


class Control:
    """
    One end of the channel. Feed it what arrives (L{data_received}); it
    writes with C{write}. C{handlers} answer the other end's calls (a
    value or a Deferred); C{on_event} hears its events.
    """

    def __init__(
        self,
        write: Callable[[bytes], None],
        *,
        handlers: Optional[Mapping[str, Callable[..., Any]]] = None,
        on_event: Optional[Callable[[str, dict], None]] = None,
    ) -> None:
        self._write = write
        self._handlers = dict(handlers or {})
        self._on_event = on_event
        self._buffer = b""
        self._next_id = 0
        self._pending: dict[int, defer.Deferred[Any]] = {}
        self.closed = False

    def call(self, op: str, **args: Any) -> "defer.Deferred[Any]":
        """Ask the other end to do C{op}; fires with its result, or fails with L{ControlError}."""
        if self.closed:
            return defer.fail(ControlError("the channel is closed"))
        self._next_id += 1
        call_id = self._next_id
        d: defer.Deferred[Any] = defer.Deferred(lambda _: self._pending.pop(call_id, None))
        self._pending[call_id] = d
        self._send({"id": call_id, "op": op, **args})
        return d

    def event(self, name: str, **args: Any) -> None:
        if not self.closed:
            self._send({"event": name, **args})

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if line.strip():
                self._message(line)
        if len(self._buffer) > MAX_LINE:
            log.error("control channel: a line over {n} bytes, dropped", n=MAX_LINE)
            self._buffer = b""

    def lost(self, why: str = "the other end went away") -> None:
        """The pipes closed: every call waiting fails."""
        self.closed = True
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(ControlError(why))

    def _send(self, message: dict) -> None:
        self._write(json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n")

    def _message(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            log.error("control channel: not JSON: {line!r}", line=line[:200])
            return
        if "event" in message:
            if self._on_event is not None:
                self._on_event(message.pop("event"), message)
        elif "op" in message:
            self._answer(message)
        else:
            d = self._pending.pop(message.get("id"), None)
            if d is None:
                return
            if message.get("ok"):
                d.callback(message.get("result"))
            else:
                d.errback(ControlError(message.get("error") or "failed", message.get("problems")))

    def _answer(self, message: dict) -> None:
        call_id = message.pop("id", None)
        handler = self._handlers.get(message.pop("op"))

        def ok(result: Any) -> None:
            if not self.closed:
                self._send({"id": call_id, "ok": True, "result": result})

        def failed(reason: Failure) -> None:
            if self.closed:
                return
            answer = {"id": call_id, "ok": False, "error": reason.getErrorMessage()}
            problems = getattr(reason.value, "problems", None)
            if isinstance(problems, list):
                answer["problems"] = [str(p) for p in problems]
            self._send(answer)

        if handler is None:
            failed(Failure(ControlError("no such operation")))
            return
        defer.maybeDeferred(handler, **message).addCallbacks(ok, failed)
