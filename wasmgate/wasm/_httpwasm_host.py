# -*- test-case-name: tests.test_abi_httpwasm -*-
"""
The http-wasm host functions (module C{http_handler}): what a guest calls
to read and change the request and response, its config and the log. The
phase and feature rules are in L{wasmgate.wasm.abi_httpwasm}'s docstring;
a call that breaks them traps the guest.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Optional

from twisted.logger import LogLevel

from wasmgate.wasm import _raw
from wasmgate.wasm._httpwasm_exchange import (
    BODY_REQUEST,
    BODY_RESPONSE,
    FEATURE_BUFFER_REQUEST,
    FEATURE_BUFFER_RESPONSE,
    REQUEST,
    SUPPORTED_FEATURES,
    TOKEN,
    U32,
    Current,
    after_next_needs,
    before_next,
    header_name,
    header_value,
    headers_of,
    mutable_headers,
    need,
    put,
    put_list,
    read_guest,
    write_guest,
)
from wasmgate.wasm.hostfuncs import MAX_LOG_MESSAGE, GuestFault, HostEnv, HostFunc
from wasmgate.wasm.instance import InstanceContext

MODULE = "http_handler"

_LOG_LEVELS = {0: LogLevel.info, 1: LogLevel.warn, 2: LogLevel.error}

_EOF = 1 << 32

_BAD_URI = re.compile(rb"[\x00-\x20\x7f-\xff#]")


class HostFunctions:
    """
    The host functions of one http-wasm filter, as methods of its ABI
    object (L{wasmgate.wasm.abi_httpwasm.HttpWasmAbi} mixes this in), which
    provides the attributes below.
    """

    filter: Any
    plugin: str
    env: HostEnv
    config_json: bytes
    init_features: Optional[int]

    def host_functions(self) -> dict[tuple[str, str], HostFunc]:
        i32, i64 = "i32", "i64"
        table = {
            "enable_features": ((i32,), (i32,), self._enable_features),
            "get_config": ((i32, i32), (i32,), self._get_config),
            "log_enabled": ((i32,), (i32,), self._log_enabled),
            "log": ((i32, i32, i32), (), self._log),
            "get_method": ((i32, i32), (i32,), self._get_method),
            "set_method": ((i32, i32), (), self._set_method),
            "get_uri": ((i32, i32), (i32,), self._get_uri),
            "set_uri": ((i32, i32), (), self._set_uri),
            "get_protocol_version": ((i32, i32), (i32,), self._get_protocol_version),
            "get_source_addr": ((i32, i32), (i32,), self._get_source_addr),
            "get_header_names": ((i32, i32, i32), (i64,), self._get_header_names),
            "get_header_values": ((i32, i32, i32, i32, i32), (i64,), self._get_header_values),
            "set_header_value": ((i32, i32, i32, i32, i32), (), self._set_header_value),
            "add_header_value": ((i32, i32, i32, i32, i32), (), self._add_header_value),
            "remove_header": ((i32, i32, i32), (), self._remove_header),
            "read_body": ((i32, i32, i32), (i64,), self._read_body),
            "write_body": ((i32, i32, i32), (), self._write_body),
            "get_status_code": ((), (i32,), self._get_status_code),
            "set_status_code": ((i32,), (), self._set_status_code),
        }
        return {
            (MODULE, name): HostFunc(params, results, _binder(method))
            for name, (params, results, method) in table.items()
        }

    # Each host function is C{method(cur, base, size, *args)}; C{cur} is
    # the instance's L{Current}. Raising traps the guest.

    def _enable_features(self, cur: Current, base: int, size: int, features: int) -> int:
        # Only what the host can honour now: see abi_httpwasm's docstring.
        want = features & SUPPORTED_FEATURES
        ex = cur.ex
        if ex is None:
            if self.init_features is None or self.filter.include_body:
                cur.features |= want
            return cur.features
        if ex.bodies:
            ex.features |= want
        return ex.features

    def _get_config(self, cur: Current, base: int, size: int, buf: int, limit: int) -> int:
        return put(base, size, buf, limit, self.config_json)

    def _log_enabled(self, cur: Current, base: int, size: int, level: int) -> int:
        return 1 if level in _LOG_LEVELS else 0

    def _log(self, cur: Current, base: int, size: int, level: int, ptr: int, length: int) -> None:
        log_level = _LOG_LEVELS.get(level)
        if log_level is None:
            return
        allowed, refused = self.env.log_bucket.take()
        if not allowed:
            return
        try:
            raw = _raw.read(base, size, ptr, min(length & U32, MAX_LOG_MESSAGE))
        except IndexError:
            return  # the specification: a failed log is ignored, never a trap
        text = raw.decode("utf-8", "replace")
        if refused:
            text += " (%d earlier messages from this plugin suppressed)" % (refused,)
        self.env.log.emit(log_level, "plugin {plugin}: {message}", plugin=self.plugin, message=text)

    def _get_method(self, cur: Current, base: int, size: int, buf: int, limit: int) -> int:
        return put(base, size, buf, limit, need(cur).req.method.encode("latin-1"))

    def _set_method(self, cur: Current, base: int, size: int, ptr: int, length: int) -> None:
        ex = before_next(cur, "set the method")
        method = read_guest(base, size, ptr, length)
        if not TOKEN.match(method):
            raise GuestFault("invalid HTTP method %r" % (method,))
        ex.req.method = method.decode("ascii")

    def _get_uri(self, cur: Current, base: int, size: int, buf: int, limit: int) -> int:
        req = need(cur).req
        uri = (req.path or "/") + ("?" + req.query if req.query else "")
        return put(base, size, buf, limit, uri.encode("latin-1"))

    def _set_uri(self, cur: Current, base: int, size: int, ptr: int, length: int) -> None:
        ex = before_next(cur, "set the URI")
        uri = read_guest(base, size, ptr, length) or b"/"
        if not uri.startswith(b"/") or _BAD_URI.search(uri):
            raise GuestFault("invalid URI %r (must be an encoded origin-form path)" % (uri[:200],))
        path, _, query = uri.decode("ascii").partition("?")
        ex.req.path = path
        ex.req.query = query

    def _get_protocol_version(self, cur: Current, base: int, size: int, buf: int, limit: int) -> int:
        protocol = need(cur).req.protocol or "HTTP/1.1"
        return put(base, size, buf, limit, protocol.encode("latin-1"))

    def _get_source_addr(self, cur: Current, base: int, size: int, buf: int, limit: int) -> int:
        req = need(cur).req
        ip, port = req.client_ip, req.source_port
        addr = ("[%s]:%d" % (ip, port)) if ":" in ip else ("%s:%d" % (ip, port))
        return put(base, size, buf, limit, addr.encode("latin-1"))

    def _get_header_names(self, cur: Current, base: int, size: int, kind: int, buf: int, limit: int) -> int:
        headers = headers_of(need(cur), kind)
        if headers is None:
            return 0
        seen: dict[str, None] = {}
        for name, _ in headers:
            seen.setdefault(name.lower(), None)
        return put_list(base, size, buf, limit, [n.encode("latin-1") for n in seen])

    def _get_header_values(
        self, cur: Current, base: int, size: int, kind: int, nptr: int, nlen: int, buf: int, limit: int
    ) -> int:
        ex = need(cur)
        name = header_name(base, size, nptr, nlen)
        headers = headers_of(ex, kind)
        if headers is None:
            return 0
        values = [v.encode("latin-1") for n, v in headers if n.lower() == name]
        return put_list(base, size, buf, limit, values)

    def _set_header_value(
        self, cur: Current, base: int, size: int, kind: int, nptr: int, nlen: int, vptr: int, vlen: int
    ) -> None:
        ex, msg = mutable_headers(cur, kind, "set")
        name = header_name(base, size, nptr, nlen)
        value = header_value(base, size, vptr, vlen)
        kept = [(n, v) for n, v in msg.headers if n.lower() != name]
        kept.append((name, value))
        msg.headers = kept

    def _add_header_value(
        self, cur: Current, base: int, size: int, kind: int, nptr: int, nlen: int, vptr: int, vlen: int
    ) -> None:
        ex, msg = mutable_headers(cur, kind, "add")
        name = header_name(base, size, nptr, nlen)
        value = header_value(base, size, vptr, vlen)
        msg.headers = msg.headers + [(name, value)]

    def _remove_header(self, cur: Current, base: int, size: int, kind: int, nptr: int, nlen: int) -> None:
        ex, msg = mutable_headers(cur, kind, "remove")
        name = header_name(base, size, nptr, nlen)
        msg.headers = [(n, v) for n, v in msg.headers if n.lower() != name]

    def _read_body(self, cur: Current, base: int, size: int, kind: int, buf: int, limit: int) -> int:
        ex = need(cur)
        limit &= U32
        if limit == 0:
            raise GuestFault("read_body with buf_limit 0")
        if kind == BODY_REQUEST:
            after_next_needs(ex, FEATURE_BUFFER_REQUEST, "read the request body")
            body = ex.req_src
            if body is None:
                body = ex.req.body
                if body is None:
                    if not self.filter.include_body:
                        raise GuestFault(
                            "the request body was not buffered for this plugin: set include_body: true "
                            "in its config, or enable feature buffer_request when the guest starts"
                        )
                    body = b""
                ex.req_src = body
                ex.req_tail = True
            start = ex.req_read
        elif kind == BODY_RESPONSE:
            after_next_needs(ex, FEATURE_BUFFER_RESPONSE, "read the response body")
            body = ex.resp_src if ex.resp_src is not None else ex.resp.body
            if body is None:
                if ex.phase == REQUEST or self.filter.include_body:
                    body = b""
                else:
                    raise GuestFault(
                        "the response body was not buffered for this plugin: enable feature "
                        "buffer_response when the guest starts (or set include_body: true)"
                    )
            ex.resp_src = body
            start = ex.resp_read
        else:
            raise GuestFault("unknown body kind %d" % (kind,))
        chunk = body[start : start + limit]
        if chunk:
            write_guest(base, size, buf, chunk)
        end = start + len(chunk)
        if kind == BODY_REQUEST:
            ex.req_read = end
            if chunk and ex.req_tail and ex.phase == REQUEST and not ex.features & FEATURE_BUFFER_REQUEST:
                # Read without buffer_request: consumed, the next handler
                # gets only the rest.
                ex.req.body = body[end:]
        else:
            ex.resp_read = end
        return (_EOF if end >= len(body) else 0) | len(chunk)

    def _write_body(self, cur: Current, base: int, size: int, kind: int, ptr: int, length: int) -> None:
        ex = need(cur)
        data = read_guest(base, size, ptr, length)
        if kind == BODY_REQUEST:
            before_next(cur, "write the request body")
            req = ex.req
            req.body = (req.body or b"") + data if ex.req_written else data
            ex.req_written = True
            ex.req_tail = False
            if any(n == "content-length" for n, _ in req.headers):
                # Later filters see the length of the body they will get
                # (the proxy frames the upstream request itself).
                req.headers = [(n, v) for n, v in req.headers if n != "content-length"]
                req.headers.append(("content-length", str(len(req.body))))
        elif kind == BODY_RESPONSE:
            after_next_needs(ex, FEATURE_BUFFER_RESPONSE, "write the response body")
            resp = ex.resp
            resp.body = (resp.body or b"") + data if ex.resp_written else data
            ex.resp_written = True
            ex.committed = ex.committed or ex.phase == REQUEST
        else:
            raise GuestFault("unknown body kind %d" % (kind,))

    def _get_status_code(self, cur: Current, base: int, size: int) -> int:
        return need(cur).resp.status

    def _set_status_code(self, cur: Current, base: int, size: int, code: int) -> None:
        ex = need(cur)
        after_next_needs(ex, FEATURE_BUFFER_RESPONSE, "set the status code")
        if not 100 <= code <= 599:
            raise GuestFault("invalid status code %d" % (code,))
        ex.resp.status = code
        ex.committed = ex.committed or ex.phase == REQUEST


def _binder(method: Any) -> Any:
    """C{make(ctx)} for L{HostFunc}: binds the instance's L{Current}."""

    def make(ctx: InstanceContext) -> _raw.HostFn:
        cur = ctx.abi_state.get("cur")
        if cur is None:
            cur = ctx.abi_state["cur"] = Current()
        return functools.partial(method, cur)  # C-level binding: no extra Python frame

    return make


