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

The host functions are in L{wasmgate.wasm._httpwasm_host}, a request's
state and the phase rules they check in L{wasmgate.wasm._httpwasm_exchange}.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Union

import wasmtime

from wasmgate.wasm import _raw
from wasmgate.wasm._httpwasm_exchange import (
    BODY_REQUEST,
    BODY_RESPONSE,
    FEATURE_BUFFER_REQUEST,
    FEATURE_BUFFER_RESPONSE,
    FEATURE_TRAILERS,
    HEADER_REQUEST,
    HEADER_RESPONSE,
    RESPONSE,
    SUPPORTED_FEATURES,
    TRAILER_REQUEST,
    TRAILER_RESPONSE,
    U32,
    Current,
    Exchange,
)
from wasmgate.wasm._httpwasm_host import MODULE, HostFunctions
from wasmgate.wasm.abi import exports_of, func_sig
from wasmgate.wasm.failures import BadOutput
from wasmgate.wasm.instance import InstanceContext
from wasmgate.wasm.messages import Answer, Continue, FilterRequest, FilterResponse
from wasmgate.wasm.wasi import WasiExit

__all__ = [
    "ABI",
    "BODY_REQUEST",
    "BODY_RESPONSE",
    "FEATURE_BUFFER_REQUEST",
    "FEATURE_BUFFER_RESPONSE",
    "FEATURE_TRAILERS",
    "HEADER_REQUEST",
    "HEADER_RESPONSE",
    "MODULE",
    "SUPPORTED_FEATURES",
    "TRAILER_REQUEST",
    "TRAILER_RESPONSE",
    "ContinueWithResponse",
    "HttpWasmAbi",
]

_U64 = 0xFFFFFFFFFFFFFFFF

_HANDLE_REQUEST = ((), ("i64",))
_HANDLE_RESPONSE = (("i32", "i32"), ())


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


class HttpWasmAbi(HostFunctions):
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
        cur = st.setdefault("cur", Current())
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
        cur: Current = st["cur"]
        bodies = self.filter.include_body or req.body is not None
        ex = cur.ex = Exchange(req, cur.features, bodies)
        try:
            packed = st["request"]() & _U64
        except BaseException:
            cur.ex = None
            raise
        nxt = packed & U32
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
            ex.phase = RESPONSE
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
        cur: Current = st["cur"]
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


ABI = HttpWasmAbi
