# -*- test-case-name: tests.test_wasm_filter,tests.test_abi_json_bounds -*-
"""
The wasmgate JSON ABI (v1), see DESIGN.md.

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
turn into a 403.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, Optional, Union

import wasmtime

from wasmgate.wasm import _raw
from wasmgate.wasm.abi import exports_of, func_sig
from wasmgate.wasm.failures import BadOutput, InitRefused
from wasmgate.wasm.hostfuncs import HostFunc
from wasmgate.wasm.instance import InstanceContext
from wasmgate.wasm.messages import Answer, Continue, FilterRequest, FilterResponse, Headers

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
DEFAULT_BLOCK_STATUS = 403

MAX_OUTPUT_BYTES = 4 * 1024 * 1024
"""The largest answer read from a guest, unless twice its input is larger
(a filter may rewrite a body as large as the one it was given). A larger
answer is bad output, refused before it is copied or parsed."""

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
_LATIN_1 = re.compile(r"[\x00-\xff]*\Z")
# A request target is ASCII: anything else must come percent-encoded.
_BAD_TARGET = re.compile(r"[^\x21-\x7e]|#")
_BAD_QUERY = re.compile(r"[^\x21-\x7e]|#")

_REQUEST_KEYS = frozenset(
    {"block", "status_code", "headers", "body", "path", "method", "query", "response_headers"}
)
_RESPONSE_KEYS = frozenset({"status_code", "headers", "body"})


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


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise BadOutput("invalid header name %r" % (name,))
    return name.lower()


def _check_value(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BadOutput("header %r: value must be a string, not %s" % (name, type(value).__name__))
    if _BAD_VALUE.search(value):
        raise BadOutput("header %r: value contains CR, LF or NUL" % (name,))
    if not _LATIN_1.match(value):
        raise BadOutput("header %r: value has characters beyond Latin-1 (send them encoded)" % (name,))
    return value


def parse_headers(obj: Any, *, allow_null: bool, what: str = "headers") -> list[tuple[str, Optional[list[str]]]]:
    """C{[(name, values or None to remove)]}, validated."""
    if not isinstance(obj, dict):
        raise BadOutput("%r must be an object" % (what,))
    out: list[tuple[str, Optional[list[str]]]] = []
    for raw_name, value in obj.items():
        name = _check_name(raw_name)
        if value is None:
            if not allow_null:
                raise BadOutput("%s %r: null is not allowed here" % (what, raw_name))
            out.append((name, None))
        elif isinstance(value, list):
            out.append((name, [_check_value(name, v) for v in value]))
        else:
            out.append((name, [_check_value(name, value)]))
    return out


def merge_headers(headers: Headers, changes: list[tuple[str, Optional[list[str]]]]) -> Headers:
    """Replace each named header (all its occurrences); C{None} removes it."""
    if not changes:
        return headers
    names = {n for n, _ in changes}
    merged = [(n, v) for n, v in headers if n.lower() not in names]
    for name, values in changes:
        if values is not None:
            merged.extend((name, v) for v in values)
    return merged


def _body(doc: dict) -> Optional[bytes]:
    if "body" not in doc or doc["body"] is None:
        return None
    value = doc["body"]
    if not isinstance(value, str):
        raise BadOutput("'body' must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadOutput("'body' is not valid base64") from None


def _status(doc: dict, default: Optional[int]) -> Optional[int]:
    value = doc.get("status_code", None)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
        raise BadOutput("'status_code' must be an integer from 100 to 599, not %r" % (value,))
    return value


def _unknown(doc: dict, allowed: frozenset) -> None:
    extra = set(doc) - allowed
    if extra:
        raise BadOutput("unknown key(s) in output: %s" % ", ".join(sorted(map(repr, extra))))


def _str_field(doc: dict, key: str) -> Optional[str]:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadOutput("%r must be a string" % (key,))
    return value


def apply_request_action(doc: dict, req: FilterRequest, plugin: str) -> Union[Answer, Continue]:
    """Validate a ResponseAction fully, then apply it (all or nothing)."""
    _unknown(doc, _REQUEST_KEYS)
    block = doc.get("block", False)
    if not isinstance(block, bool):
        raise BadOutput("'block' must be true or false")
    status = _status(doc, DEFAULT_BLOCK_STATUS)
    headers = parse_headers(doc.get("headers", {}) or {}, allow_null=True)
    body = _body(doc)
    path = _str_field(doc, "path")
    method = _str_field(doc, "method")
    query = _str_field(doc, "query")
    response_headers = parse_headers(
        doc.get("response_headers", {}) or {}, allow_null=False, what="response_headers"
    )
    if path is not None and (not path.startswith("/") or _BAD_TARGET.search(path)):
        raise BadOutput("'path' must start with '/' and be printable ASCII without spaces (percent-encode the rest)")
    if method is not None and not _TOKEN.match(method):
        raise BadOutput("'method' must be an HTTP token")
    if query is not None and _BAD_QUERY.search(query):
        raise BadOutput("'query' must be printable ASCII without spaces (percent-encode the rest)")
    extra = [(n, v) for n, vs in response_headers for v in (vs or [])]
    if block:
        answer_headers = [(n, v) for n, vs in headers if vs is not None for v in vs]
        return Answer(
            status=status or DEFAULT_BLOCK_STATUS,
            headers=answer_headers + extra,
            body=body or b"",
            plugin=plugin,
        )
    changed = bool(headers) or body is not None or path is not None or method is not None or query is not None
    req.headers = merge_headers(req.headers, headers)
    if body is not None:
        req.body = body
    if path is not None:
        req.path = path
    if method is not None:
        req.method = method
    if query is not None:
        req.query = query
    return Continue(req, response_headers=extra, changed=changed)


def apply_response_action(doc: dict, resp: FilterResponse) -> FilterResponse:
    _unknown(doc, _RESPONSE_KEYS)
    status = _status(doc, resp.status)
    headers = parse_headers(doc.get("headers", {}) or {}, allow_null=True)
    body = _body(doc)
    resp.status = status  # type: ignore[assignment]
    resp.headers = merge_headers(resp.headers, headers)
    if body is not None:
        resp.body = body
    return resp
