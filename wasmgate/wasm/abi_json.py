# -*- test-case-name: tests.test_wasm_filter,tests.test_abi_json_bounds -*-
"""
The wasmgate JSON ABI (v1); docs/abi.md is its reference.

Guest exports C{memory}, C{wasmgate_alloc(len) -> ptr},
C{handle_request(ptr, len) -> i64}, and optionally
C{handle_response(ptr, len) -> i64} and C{wasmgate_init(ptr, len) -> i32}.
Results pack C{(out_ptr << 32) | out_len}; 0 means "continue, unchanged".

The host asks C{wasmgate_alloc} once per instance for an input buffer and
reuses it while inputs fit (asking for a bigger one, at least double, when
they do not), so a request costs no allocation call in the guest.

Request output (ResponseAction), every key optional::

  {"block": bool, "status_code": int, "headers": {name: str | [str] | null},
   "body": base64, "path": str, "method": str, "query": str,
   "response_headers": {name: str | [str]}}

With C{block} the filter answers (status defaults to 403, the seed
gateway's choice). Without it, each named header replaces the request's
(C{null} removes it), and body/path/method/query replace theirs;
C{response_headers} are added to the upstream's response later.

Response output: C{{"status_code", "headers", "body"}}, every key optional,
headers merged as above.

Output is checked strictly: unknown keys, wrong types, status outside
100-599, CR/LF/NUL in header names or values, invalid base64, a range
outside memory, an answer over L{MAX_OUTPUT_BYTES} or nested too deeply for
Python's C{json} are all L{BadOutput} (HTTP 500, kind C{bad_output}).
Unknown keys are errors so that a typo like C{"status"} does not silently
turn into a 403. Those rules, and applying an answer that keeps them, are
in L{wasmgate.wasm._json_output}.
"""
from __future__ import annotations

import base64
import json
from typing import Any, Optional, Union

import wasmtime

from wasmgate.wasm import _raw
from wasmgate.wasm._json_output import (
    DEFAULT_BLOCK_STATUS,
    apply_request_action,
    apply_response_action,
    merge_headers,
    parse_headers,
)
from wasmgate.wasm.abi import exports_of, func_sig
from wasmgate.wasm.failures import BadOutput, InitRefused
from wasmgate.wasm.hostfuncs import HostFunc
from wasmgate.wasm.instance import InstanceContext
from wasmgate.wasm.messages import Answer, Continue, FilterRequest, FilterResponse, Headers

__all__ = [
    "ABI",
    "DEFAULT_BLOCK_STATUS",
    "MAX_OUTPUT_BYTES",
    "MIN_BUFFER",
    "JsonAbi",
    "apply_request_action",
    "apply_response_action",
    "headers_to_json",
    "merge_headers",
    "parse_headers",
    "route_suffix",
]

_II_L = (("i32", "i32"), ("i64",))
_REQUIRED = {
    "wasmgate_alloc": (("i32",), ("i32",)),
    "handle_request": _II_L,
}
_OPTIONAL = {
    "handle_response": _II_L,
    "wasmgate_init": (("i32", "i32"), ("i32",)),
    "wasmgate_wants_response": ((), ("i32",)),
}

MIN_BUFFER = 4096

MAX_OUTPUT_BYTES = 4 * 1024 * 1024
"""The largest answer read from a guest, unless twice its input is larger
(a filter may rewrite a body as large as the one it was given). A larger
answer is bad output, refused before it is copied or parsed."""


class JsonAbi:
    """The wasmgate JSON ABI for one filter."""

    name = "json"

    @classmethod
    def detect(cls, module: wasmtime.Module) -> bool:
        names = exports_of(module)
        if "handle_request" in names or "wasmgate_alloc" in names:
            return True
        return any(i.module == "wasmgate" for i in module.imports)

    @classmethod
    def problems(cls, module: wasmtime.Module) -> list[str]:
        names = exports_of(module)
        out = []
        if not isinstance(names.get("memory"), wasmtime.MemoryType):
            out.append("missing export 'memory' (a linear memory)")
        for export, sig in _REQUIRED.items():
            if export not in names:
                out.append("missing export %r (%s)" % (export, _sig_text(sig)))
            elif func_sig(names[export]) != sig:
                out.append("export %r must be %s" % (export, _sig_text(sig)))
        for export, sig in _OPTIONAL.items():
            if export in names and func_sig(names[export]) != sig:
                out.append("export %r must be %s" % (export, _sig_text(sig)))
        return out

    @classmethod
    def speaks_response(cls, module: wasmtime.Module) -> bool:
        return "handle_response" in exports_of(module)

    def __init__(self, filt: Any) -> None:
        self.filter = filt
        self.plugin = filt.name
        self.include_body = filt.include_body
        raw = getattr(filt, "config_bytes", None)
        self.config_json: bytes = (
            raw if raw is not None else json.dumps(filt.config, separators=(",", ":"), default=str).encode("utf-8")
        )
        """C{config_raw:}/C{config_base64:} as given, else C{config:} as JSON."""

    def host_functions(self) -> dict[tuple[str, str], HostFunc]:
        return {}

    # -- instance lifecycle ----------------------------------------------

    def setup(self, ctx: InstanceContext) -> None:
        st = ctx.abi_state
        st["alloc"] = ctx.caller("wasmgate_alloc", ("i32",), ("i32",))
        st["request"] = ctx.caller("handle_request", *_II_L)
        st["buf"] = 0
        st["cap"] = 0
        if ctx.export("handle_response") is not None:
            st["response"] = ctx.caller("handle_response", *_II_L)
        if ctx.export("wasmgate_init") is not None:
            init = ctx.caller("wasmgate_init", ("i32", "i32"), ("i32",))
            ptr = self._put(ctx, self.config_json)
            rc = init(ptr, len(self.config_json))
            if rc != 0:
                raise InitRefused(
                    "wasmgate_init refused the plugin's config (returned %d)" % (rc,)
                )
        if "response" in st and ctx.export("wasmgate_wants_response") is not None:
            # A filter with nothing to do on responses under its config says
            # so, and routes without overrides for it skip that thread hop.
            wants = ctx.caller("wasmgate_wants_response", (), ("i32",))()
            self.filter.response_by_default = bool(wants)

    def _put(self, ctx: InstanceContext, data: bytes) -> int:
        """Write C{data} into the instance's input buffer and return its address."""
        st = ctx.abi_state
        n = len(data)
        if n > st["cap"]:
            want = max(n, MIN_BUFFER, st["cap"] * 2)
            ptr = st["alloc"](want) & 0xFFFFFFFF
            base, size = ctx.span()
            if ptr == 0 or ptr + want > size:
                raise BadOutput("wasmgate_alloc(%d) returned an unusable pointer %d" % (want, ptr))
            st["buf"], st["cap"] = ptr, want
        else:
            base, size = ctx.span()
        _raw.write(base, size, st["buf"], data)
        return st["buf"]  # type: ignore[no-any-return]

    def _call(self, ctx: InstanceContext, fn: Any, data: bytes) -> Optional[dict]:
        ptr = self._put(ctx, data)
        packed = fn(ptr, len(data)) & 0xFFFFFFFFFFFFFFFF
        if packed == 0:
            return None
        out_ptr, out_len = packed >> 32, packed & 0xFFFFFFFF
        bound = max(MAX_OUTPUT_BYTES, 2 * len(data))
        if out_len > bound:
            raise BadOutput("output of %d bytes is over the bound of %d bytes" % (out_len, bound))
        base, size = ctx.span()
        if out_ptr + out_len > size:
            raise BadOutput(
                "output range %d+%d is outside the guest's memory (%d bytes)" % (out_ptr, out_len, size)
            )
        raw = _raw.read(base, size, out_ptr, out_len)
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadOutput("output is not valid JSON: %s" % (e,)) from None
        except RecursionError:
            raise BadOutput("output is nested too deeply to parse") from None
        if not isinstance(doc, dict):
            raise BadOutput("output must be a JSON object, not %s" % (type(doc).__name__,))
        return doc

    # -- request phase ----------------------------------------------------

    def request_prefix(self, req: FilterRequest) -> bytes:
        """
        C{req}'s RequestPayload as JSON without its closing brace: a chain
        encodes a request once and each filter adds its C{route_config}.
        """
        payload: dict[str, Any] = {
            "method": req.method,
            "path": req.path,
            "query": req.query,
            "headers": headers_to_json(req.headers),
            "client_ip": req.client_ip,
            "route": req.route,
        }
        if self.include_body:
            payload["body"] = base64.b64encode(req.body or b"").decode("ascii")
        return _dumps(payload)[:-1]

    def handle_request(
        self,
        ctx: InstanceContext,
        req: FilterRequest,
        route_config: Optional[dict],
        payload: Optional[bytes] = None,
    ) -> Union[Answer, Continue]:
        if payload is None:
            payload = self.request_prefix(req) + route_suffix(route_config)
        doc = self._call(ctx, ctx.abi_state["request"], payload)
        if doc is None:
            return Continue(req, changed=False)
        return apply_request_action(doc, req, self.plugin)

    # -- response phase ---------------------------------------------------

    def handle_response(
        self,
        ctx: InstanceContext,
        req: FilterRequest,
        resp: FilterResponse,
        route_config: Optional[dict],
    ) -> FilterResponse:
        fn = ctx.abi_state.get("response")
        if fn is None:
            return resp
        payload: dict[str, Any] = {
            "status_code": resp.status,
            "headers": headers_to_json(resp.headers),
            "request": {
                "method": req.method,
                "path": req.path,
                "query": req.query,
                "client_ip": req.client_ip,
                "route": req.route,
            },
        }
        if self.include_body:
            payload["body"] = base64.b64encode(resp.body or b"").decode("ascii")
        doc = self._call(ctx, fn, _dumps(payload)[:-1] + route_suffix(route_config))
        if doc is None:
            return resp
        return apply_response_action(doc, resp)


ABI = JsonAbi


def _dumps(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogateescape")


def route_suffix(route_config: Optional[dict]) -> bytes:
    """The end of a payload: its C{route_config} (when the route has one) and the brace."""
    if route_config is None:
        return b"}"
    return b',"route_config":' + _dumps(route_config) + b"}"


def _sig_text(sig: tuple[tuple[str, ...], tuple[str, ...]]) -> str:
    return "(%s) -> (%s)" % (", ".join(sig[0]), ", ".join(sig[1]))


def headers_to_json(headers: Headers) -> dict[str, Union[str, list[str]]]:
    """Lower-case names; a repeated name becomes a list, in order."""
    out: dict[str, Union[str, list[str]]] = {}
    for name, value in headers:
        name = name.lower()
        prev = out.get(name)
        if prev is None:
            out[name] = value
        elif isinstance(prev, list):
            prev.append(value)
        else:
            out[name] = [prev, value]
    return out
