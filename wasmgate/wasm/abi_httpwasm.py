# -*- test-case-name: tests.test_abi_httpwasm -*-
"""
The http-wasm HTTP handler ABI (host module C{http_handler}), so middleware
written for Traefik, dapr or the http-wasm examples runs unchanged.

Guest exports: C{memory}, C{handle_request() -> i64} (C{ctx << 32 | next}),
optionally C{handle_response(req_ctx i32, is_error i32)} and
C{_initialize} / C{_start} (run once per instance, before any request).
The specification is https://http-wasm.io/http-handler-abi/; where it leaves
the host a choice, this host does what the reference host (http-wasm-host-go)
does unless noted below.

How it maps onto a wasmgate chain:

  - C{next=1}: L{Continue}; the later filters and the upstream are "the next
    handler". Response headers the guest set in C{handle_request} are added
    to the eventual response (L{Continue.response_headers}). A guest that
    also set the status or wrote a response body there has committed the
    response, as it would have on the reference host (whose writer has sent
    them by then): the result is a L{ContinueWithResponse} whose
    C{response} is that status and body; the client gets them, followed by
    the upstream's body, and the upstream's status and headers are dropped.
  - C{next=0}: L{Answer} with what the guest set (an untouched response is
    an empty 200).
  - C{handle_response} runs in the response phase on the instance that ran
    C{handle_request} (the filter pins it: L{pins_instances}); with
    C{is_error=1} when the request ended without one (L{HttpWasmAbi.abandon}).

Phase rules (a violation traps the guest, like the reference host): request
method/URI/headers/body can be changed only in C{handle_request}; after the
next handler, the response status, headers and body can be changed, and its
body read, only with C{feature_buffer_response}; the request body can be read
there only with C{feature_buffer_request}.

Bodies: wasmgate hands filters whole buffered bodies only when the route's
chain buffers them, which it does when one of its filters has
C{include_body: true} (L{FilterRequest.body} is then bytes, never None). A
guest that enables C{buffer_request} or C{buffer_response} while its first
instance initialises turns C{include_body} on for its filter, so every
chain with it buffers bodies.

C{enable_features} enables, and reports, only what this host can honour at
that moment; the answer depends on nothing but the filter and the request:

  - at start-up: both buffering features for the filter's first instance
    (they turn C{include_body} on, before any chain is built) or when the
    filter has C{include_body}; otherwise neither (a chain built earlier
    would not buffer bodies for a later instance's wish).
  - during a request, in either phase: both buffering features if this
    request's bodies are buffered (the filter has C{include_body}, or the
    request came with a body); otherwise neither, and the result is the
    features enabled so far (a guest that checks it can do without).

A read of the request body in C{handle_request} while C{buffer_request} is
off consumes what it read, as the specification says: unless the guest
writes a new body, the next handler gets only the unread rest. Reads made
with C{buffer_request} on consume nothing. When the request's bodies are
not buffered at all the host has no body to read: C{read_body} traps with a
message saying so. A filter with C{include_body} whose request or response
came without a body reads an empty one.

Logging: C{log_enabled(level)} is 1 exactly for the levels C{log} passes
to the plugin's log (info, warn, error): wasmgate has no per-plugin log
level, and the host drops debug (-1), none (3) and unknown levels alike.

Left out, on purpose: trailers (feature 4 stays off, trailer getters return
nothing and setters trap, as the specification requires of such a host);
per-route C{route_config} (a guest reads its config once, at start-up);
debug logging (C{log_enabled(-1)} is 0). C{get_source_addr} reports the
client's port only when the client is the peer itself: behind a trusted
proxy the address comes from X-Forwarded-For and the port is 0.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Union

import wasmtime
from twisted.logger import LogLevel

from wasmgate.wasm import _raw
from wasmgate.wasm.abi import exports_of, func_sig
from wasmgate.wasm.failures import BadOutput
from wasmgate.wasm.hostfuncs import MAX_LOG_MESSAGE, GuestFault, HostFunc
from wasmgate.wasm.instance import InstanceContext
from wasmgate.wasm.messages import Answer, Continue, FilterRequest, FilterResponse, Headers
from wasmgate.wasm.wasi import WasiExit

MODULE = "http_handler"

FEATURE_BUFFER_REQUEST = 1
FEATURE_BUFFER_RESPONSE = 2
FEATURE_TRAILERS = 4
SUPPORTED_FEATURES = FEATURE_BUFFER_REQUEST | FEATURE_BUFFER_RESPONSE

HEADER_REQUEST, HEADER_RESPONSE, TRAILER_REQUEST, TRAILER_RESPONSE = 0, 1, 2, 3
BODY_REQUEST, BODY_RESPONSE = 0, 1


_LOG_LEVELS = {0: LogLevel.info, 1: LogLevel.warn, 2: LogLevel.error}

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_EOF = 1 << 32

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")
_BAD_URI = re.compile(rb"[\x00-\x20\x7f-\xff#]")

_HANDLE_REQUEST = ((), ("i64",))
_HANDLE_RESPONSE = (("i32", "i32"), ())

_INIT, _REQUEST, _RESPONSE = 0, 1, 2


@dataclass
class ContinueWithResponse(Continue):
    """
    Go on to the next handler, with a response the guest has committed
    before it (see the module docstring): the client gets C{response}'s
    status and body, then the next handler's body; C{response_headers}
    are added as for any L{Continue}.

    (The chain and proxy honour this once L{Continue} itself carries a
    C{response}; until then it continues as a plain L{Continue}.)
    """

    response: Optional[FilterResponse] = None


class _Exchange:
    """One request's state, from C{handle_request} to C{handle_response}."""

    __slots__ = (
        "phase",
        "req",
        "resp",
        "features",
        "req_ctx",
        "req_src",
        "req_read",
        "req_written",
        "req_tail",
        "bodies",
        "resp_src",
        "resp_read",
        "resp_written",
        "committed",
    )

    def __init__(self, req: FilterRequest, features: int, bodies: bool) -> None:
        self.phase = _REQUEST
        self.req = req
        # In the request phase: the response the guest may write itself.
        self.resp = FilterResponse(status=200, headers=[], body=None)
        self.features = features
        self.req_ctx = 0
        # What read_body reads: the body as it was at the first read (a
        # write_body after that starts a new body, it does not move the
        # reader onto it).
        self.req_src: Optional[bytes] = None
        self.req_read = 0
        self.req_written = False
        # Whether req.body is what is left of req_src (a read that
        # consumes trims it; a write_body makes it a body of its own).
        self.req_tail = False
        self.bodies = bodies
        """Whether this request's bodies are buffered (features 1, 2 honoured)."""
        self.resp_src: Optional[bytes] = None
        self.resp_read = 0
        self.resp_written = False
        self.committed = False
        """The guest set the status or wrote the response body before the next handler."""

    def enter_response(self, resp: FilterResponse) -> None:
        self.phase = _RESPONSE
        self.resp = resp
        self.resp_src = None
        self.resp_read = 0
        self.resp_written = False


class _Current:
    """Per instance: the features enabled at start-up and the request in flight."""

    __slots__ = ("features", "ex")

    def __init__(self) -> None:
        self.features = 0
        self.ex: Optional[_Exchange] = None


class HttpWasmAbi:
    """The http-wasm handler ABI for one filter."""

    name: ClassVar[str] = "http-wasm"
    pins_instances: ClassVar[bool] = True
    """Guests keep per-request state in globals: one instance per request."""

    @classmethod
    def detect(cls, module: wasmtime.Module) -> bool:
        if any(i.module == MODULE for i in module.imports):
            return True
        return func_sig(exports_of(module).get("handle_request")) == _HANDLE_REQUEST

    @classmethod
    def problems(cls, module: wasmtime.Module) -> list[str]:
        names = exports_of(module)
        out = []
        if not isinstance(names.get("memory"), wasmtime.MemoryType):
            out.append("missing export 'memory' (a linear memory)")
        if "handle_request" not in names:
            out.append("missing export 'handle_request' (() -> (i64))")
        elif func_sig(names["handle_request"]) != _HANDLE_REQUEST:
            out.append("export 'handle_request' must be () -> (i64)")
        if "handle_response" in names and func_sig(names["handle_response"]) != _HANDLE_RESPONSE:
            out.append("export 'handle_response' must be (i32, i32) -> ()")
        for start in ("_initialize", "_start"):
            if start in names and func_sig(names[start]) != ((), ()):
                out.append("export %r must be () -> ()" % (start,))
        return out

    @classmethod
    def speaks_response(cls, module: wasmtime.Module) -> bool:
        return "handle_response" in exports_of(module)

    def __init__(self, filt: Any) -> None:
        self.filter = filt
        self.plugin = filt.name
        self.env = filt.host_env
        raw = getattr(filt, "config_bytes", None)
        self.config_json: bytes = (
            raw if raw is not None else json.dumps(filt.config, separators=(",", ":"), default=str).encode("utf-8")
        )
        """C{config_raw:}/C{config_base64:} as given, else C{config:} as JSON."""
        self.init_features: Optional[int] = None
        """What the guest enabled while initialising (its first instance)."""

    # -- instance lifecycle ----------------------------------------------

    def setup(self, ctx: InstanceContext) -> None:
        st = ctx.abi_state
        cur = st.setdefault("cur", _Current())
        st["request"] = ctx.caller("handle_request", *_HANDLE_REQUEST)
        if ctx.export("handle_response") is not None:
            st["response"] = ctx.caller("handle_response", *_HANDLE_RESPONSE)
        for start in ("_initialize", "_start"):
            if ctx.export(start) is not None:
                try:
                    ctx.caller(start, (), ())()
                except _raw.GuestTrap:
                    # TinyGo 0.35 and later end _start with proc_exit(0)
                    # once main has returned (and registered the handler):
                    # start-up is over, the instance is ready for requests.
                    exited = ctx.host_error
                    if not (isinstance(exited, WasiExit) and exited.code == 0):
                        raise
                    ctx.host_error = None
                break
        if self.init_features is None:
            self.init_features = cur.features
            if cur.features & SUPPORTED_FEATURES and not self.filter.include_body:
                # The guest wants bodies: have the chain buffer them.
                self.filter.include_body = True

    def wants_response(self, ctx: InstanceContext) -> bool:
        """Whether the last request phase left a request to finish (pin it)."""
        return ctx.abi_state["cur"].ex is not None

    # -- request phase ----------------------------------------------------

    def handle_request(
        self, ctx: InstanceContext, req: FilterRequest, route_config: Optional[dict]
    ) -> Union[Answer, Continue]:
        st = ctx.abi_state
        cur: _Current = st["cur"]
        bodies = self.filter.include_body or req.body is not None
        ex = cur.ex = _Exchange(req, cur.features, bodies)
        try:
            packed = st["request"]() & _U64
        except BaseException:
            cur.ex = None
            raise
        nxt = packed & _U32
        if nxt not in (0, 1):
            cur.ex = None
            raise BadOutput("handle_request returned next=%d (must be 0 or 1)" % (nxt,))
        resp = ex.resp
        if nxt == 0:
            cur.ex = None
            return Answer(
                status=resp.status, headers=list(resp.headers), body=resp.body or b"", plugin=self.plugin
            )
        if "response" in st:
            ex.req_ctx = packed >> 32
            ex.phase = _RESPONSE
            # Between the phases the filter pins this instance to req by a
            # weak reference; holding req here would keep it alive forever.
            ex.req = None  # type: ignore[assignment]
            ex.resp = FilterResponse(status=200, headers=[], body=None)
        else:
            cur.ex = None
        if ex.committed:
            return ContinueWithResponse(
                req,
                response_headers=list(resp.headers),
                response=FilterResponse(status=resp.status, headers=[], body=resp.body or b""),
            )
        return Continue(req, response_headers=list(resp.headers))

    # -- response phase ---------------------------------------------------

    def handle_response(
        self,
        ctx: InstanceContext,
        req: FilterRequest,
        resp: FilterResponse,
        route_config: Optional[dict],
    ) -> FilterResponse:
        return self._respond(ctx, req, resp, 0)

    def abandon(self, ctx: InstanceContext, req: FilterRequest) -> None:
        """The request ended without a response phase: C{is_error=1}."""
        self._respond(ctx, req, FilterResponse(status=502, headers=[], body=b""), 1)

    def _respond(self, ctx: InstanceContext, req: FilterRequest, resp: FilterResponse, is_error: int) -> FilterResponse:
        st = ctx.abi_state
        cur: _Current = st["cur"]
        ex = cur.ex
        fn = st.get("response")
        if ex is None or fn is None:
            return resp
        ex.req = req
        ex.enter_response(resp)
        req_ctx = ex.req_ctx
        try:
            fn(req_ctx - (1 << 32) if req_ctx >= 1 << 31 else req_ctx, is_error)
        finally:
            cur.ex = None
        return resp

    # -- host functions ---------------------------------------------------

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
    # the instance's L{_Current}. Raising traps the guest.

    def _enable_features(self, cur: _Current, base: int, size: int, features: int) -> int:
        # Only what the host can honour now: see the module docstring.
        want = features & SUPPORTED_FEATURES
        ex = cur.ex
        if ex is None:
            if self.init_features is None or self.filter.include_body:
                cur.features |= want
            return cur.features
        if ex.bodies:
            ex.features |= want
        return ex.features

    def _get_config(self, cur: _Current, base: int, size: int, buf: int, limit: int) -> int:
        return _put(base, size, buf, limit, self.config_json)

    def _log_enabled(self, cur: _Current, base: int, size: int, level: int) -> int:
        return 1 if level in _LOG_LEVELS else 0

    def _log(self, cur: _Current, base: int, size: int, level: int, ptr: int, length: int) -> None:
        log_level = _LOG_LEVELS.get(level)
        if log_level is None:
            return
        allowed, refused = self.env.log_bucket.take()
        if not allowed:
            return
        try:
            raw = _raw.read(base, size, ptr, min(length & _U32, MAX_LOG_MESSAGE))
        except IndexError:
            return  # the specification: a failed log is ignored, never a trap
        text = raw.decode("utf-8", "replace")
        if refused:
            text += " (%d earlier messages from this plugin suppressed)" % (refused,)
        self.env.log.emit(log_level, "plugin {plugin}: {message}", plugin=self.plugin, message=text)

    def _get_method(self, cur: _Current, base: int, size: int, buf: int, limit: int) -> int:
        return _put(base, size, buf, limit, _need(cur).req.method.encode("latin-1"))

    def _set_method(self, cur: _Current, base: int, size: int, ptr: int, length: int) -> None:
        ex = _before_next(cur, "set the method")
        method = _read(base, size, ptr, length)
        if not _TOKEN.match(method):
            raise GuestFault("invalid HTTP method %r" % (method,))
        ex.req.method = method.decode("ascii")

    def _get_uri(self, cur: _Current, base: int, size: int, buf: int, limit: int) -> int:
        req = _need(cur).req
        uri = (req.path or "/") + ("?" + req.query if req.query else "")
        return _put(base, size, buf, limit, uri.encode("latin-1"))

    def _set_uri(self, cur: _Current, base: int, size: int, ptr: int, length: int) -> None:
        ex = _before_next(cur, "set the URI")
        uri = _read(base, size, ptr, length) or b"/"
        if not uri.startswith(b"/") or _BAD_URI.search(uri):
            raise GuestFault("invalid URI %r (must be an encoded origin-form path)" % (uri[:200],))
        path, _, query = uri.decode("ascii").partition("?")
        ex.req.path = path
        ex.req.query = query

    def _get_protocol_version(self, cur: _Current, base: int, size: int, buf: int, limit: int) -> int:
        protocol = _need(cur).req.protocol or "HTTP/1.1"
        return _put(base, size, buf, limit, protocol.encode("latin-1"))

    def _get_source_addr(self, cur: _Current, base: int, size: int, buf: int, limit: int) -> int:
        req = _need(cur).req
        ip, port = req.client_ip, req.source_port
        addr = ("[%s]:%d" % (ip, port)) if ":" in ip else ("%s:%d" % (ip, port))
        return _put(base, size, buf, limit, addr.encode("latin-1"))

    def _get_header_names(self, cur: _Current, base: int, size: int, kind: int, buf: int, limit: int) -> int:
        headers = _headers(_need(cur), kind)
        if headers is None:
            return 0
        seen: dict[str, None] = {}
        for name, _ in headers:
            seen.setdefault(name.lower(), None)
        return _put_list(base, size, buf, limit, [n.encode("latin-1") for n in seen])

    def _get_header_values(
        self, cur: _Current, base: int, size: int, kind: int, nptr: int, nlen: int, buf: int, limit: int
    ) -> int:
        ex = _need(cur)
        name = _name(base, size, nptr, nlen)
        headers = _headers(ex, kind)
        if headers is None:
            return 0
        values = [v.encode("latin-1") for n, v in headers if n.lower() == name]
        return _put_list(base, size, buf, limit, values)

    def _set_header_value(
        self, cur: _Current, base: int, size: int, kind: int, nptr: int, nlen: int, vptr: int, vlen: int
    ) -> None:
        ex, msg = _mutable_headers(cur, kind, "set")
        name = _name(base, size, nptr, nlen)
        value = _value(base, size, vptr, vlen)
        kept = [(n, v) for n, v in msg.headers if n.lower() != name]
        kept.append((name, value))
        msg.headers = kept

    def _add_header_value(
        self, cur: _Current, base: int, size: int, kind: int, nptr: int, nlen: int, vptr: int, vlen: int
    ) -> None:
        ex, msg = _mutable_headers(cur, kind, "add")
        name = _name(base, size, nptr, nlen)
        value = _value(base, size, vptr, vlen)
        msg.headers = msg.headers + [(name, value)]

    def _remove_header(self, cur: _Current, base: int, size: int, kind: int, nptr: int, nlen: int) -> None:
        ex, msg = _mutable_headers(cur, kind, "remove")
        name = _name(base, size, nptr, nlen)
        msg.headers = [(n, v) for n, v in msg.headers if n.lower() != name]

    def _read_body(self, cur: _Current, base: int, size: int, kind: int, buf: int, limit: int) -> int:
        ex = _need(cur)
        limit &= _U32
        if limit == 0:
            raise GuestFault("read_body with buf_limit 0")
        if kind == BODY_REQUEST:
            _after_next_needs(ex, FEATURE_BUFFER_REQUEST, "read the request body")
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
            _after_next_needs(ex, FEATURE_BUFFER_RESPONSE, "read the response body")
            body = ex.resp_src if ex.resp_src is not None else ex.resp.body
            if body is None:
                if ex.phase == _REQUEST or self.filter.include_body:
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
            _write(base, size, buf, chunk)
        end = start + len(chunk)
        if kind == BODY_REQUEST:
            ex.req_read = end
            if chunk and ex.req_tail and ex.phase == _REQUEST and not ex.features & FEATURE_BUFFER_REQUEST:
                # Read without buffer_request: consumed, the next handler
                # gets only the rest.
                ex.req.body = body[end:]
        else:
            ex.resp_read = end
        return (_EOF if end >= len(body) else 0) | len(chunk)

    def _write_body(self, cur: _Current, base: int, size: int, kind: int, ptr: int, length: int) -> None:
        ex = _need(cur)
        data = _read(base, size, ptr, length)
        if kind == BODY_REQUEST:
            _before_next(cur, "write the request body")
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
            _after_next_needs(ex, FEATURE_BUFFER_RESPONSE, "write the response body")
            resp = ex.resp
            resp.body = (resp.body or b"") + data if ex.resp_written else data
            ex.resp_written = True
            ex.committed = ex.committed or ex.phase == _REQUEST
        else:
            raise GuestFault("unknown body kind %d" % (kind,))

    def _get_status_code(self, cur: _Current, base: int, size: int) -> int:
        return _need(cur).resp.status

    def _set_status_code(self, cur: _Current, base: int, size: int, code: int) -> None:
        ex = _need(cur)
        _after_next_needs(ex, FEATURE_BUFFER_RESPONSE, "set the status code")
        if not 100 <= code <= 599:
            raise GuestFault("invalid status code %d" % (code,))
        ex.resp.status = code
        ex.committed = ex.committed or ex.phase == _REQUEST


ABI = HttpWasmAbi


def _binder(method: Any) -> Any:
    """C{make(ctx)} for L{HostFunc}: binds the instance's L{_Current}."""

    def make(ctx: InstanceContext) -> _raw.HostFn:
        cur = ctx.abi_state.get("cur")
        if cur is None:
            cur = ctx.abi_state["cur"] = _Current()
        return functools.partial(method, cur)  # C-level binding: no extra Python frame

    return make


def _need(cur: _Current) -> _Exchange:
    ex = cur.ex
    if ex is None:
        raise GuestFault("called outside handle_request/handle_response")
    return ex


def _before_next(cur: _Current, what: str) -> _Exchange:
    ex = _need(cur)
    if ex.phase != _REQUEST:
        raise GuestFault("can't %s after the next handler" % (what,))
    return ex


def _after_next_needs(ex: _Exchange, feature: int, what: str) -> None:
    if ex.phase == _RESPONSE and not ex.features & feature:
        raise GuestFault(
            "can't %s after the next handler unless feature %s is enabled"
            % (what, {FEATURE_BUFFER_REQUEST: "buffer_request", FEATURE_BUFFER_RESPONSE: "buffer_response"}[feature])
        )


def _headers(ex: _Exchange, kind: int) -> Optional[Headers]:
    if kind == HEADER_REQUEST:
        return ex.req.headers
    if kind == HEADER_RESPONSE:
        return ex.resp.headers
    if kind in (TRAILER_REQUEST, TRAILER_RESPONSE):
        return None  # trailers are not supported: none to read
    raise GuestFault("unknown header kind %d" % (kind,))


def _mutable_headers(cur: _Current, kind: int, op: str) -> tuple[_Exchange, Any]:
    ex = _need(cur)
    if kind == HEADER_REQUEST:
        _before_next(cur, op + " a request header")
        return ex, ex.req
    if kind == HEADER_RESPONSE:
        _after_next_needs(ex, FEATURE_BUFFER_RESPONSE, op + " a response header")
        return ex, ex.resp
    if kind in (TRAILER_REQUEST, TRAILER_RESPONSE):
        raise GuestFault("can't %s a trailer: this host does not support trailers" % (op,))
    raise GuestFault("unknown header kind %d" % (kind,))


def _read(base: int, size: int, ptr: int, length: int) -> bytes:
    try:
        return _raw.read(base, size, ptr, length)
    except IndexError as e:
        raise GuestFault(str(e)) from None


def _write(base: int, size: int, ptr: int, data: bytes) -> None:
    try:
        _raw.write(base, size, ptr, data)
    except IndexError as e:
        raise GuestFault(str(e)) from None


def _name(base: int, size: int, ptr: int, length: int) -> str:
    if not length & _U32:
        raise GuestFault("HTTP header name cannot be empty")
    raw = _read(base, size, ptr, length)
    if not _TOKEN.match(raw):
        raise GuestFault("invalid header name %r" % (raw[:200],))
    return raw.decode("ascii").lower()


def _value(base: int, size: int, ptr: int, length: int) -> str:
    raw = _read(base, size, ptr, length)
    if _BAD_VALUE.search(raw):
        raise GuestFault("header value contains CR, LF or NUL")
    return raw.decode("latin-1")


def _put(base: int, size: int, buf: int, limit: int, data: bytes) -> int:
    """Write C{data} at C{buf} only if it fits C{limit}; its length either way."""
    n = len(data)
    if n and n <= limit & _U32:
        _write(base, size, buf, data)
    return n


def _put_list(base: int, size: int, buf: int, limit: int, items: list[bytes]) -> int:
    """NUL-terminated C{items} at C{buf} if they fit; C{count << 32 | len}."""
    if not items:
        return 0
    data = b"\0".join(items) + b"\0"
    n = len(data)
    if n <= limit & _U32:
        _write(base, size, buf, data)
    return (len(items) << 32) | n
