# -*- test-case-name: tests.test_abi_extism -*-
"""
The seed gateway's contract for Extism plugins (docs/extism.md): what the
exported function reads as input and how its output changes the request.

Input, a RequestPayload (keys in this order)::

  {"method": "GET", "path": "/v1/x", "headers": {"lower-case name": "first value"},
   "body": "<base64>"}

C{path} has no query string. C{body} is the request body when the plugin
has C{include_body: true}, else C{""}.

Output, a ResponseAction: C{{"block", "status_code", "headers", "body"}},
every key optional, other keys ignored (the seed decoded it with Go's
C{encoding/json}, which ignores them too). No output at all passes the
request on unchanged.

  - C{block: true}: the gateway answers with C{status_code} (403 when
    missing or 0), C{headers} (name -> string, or a list of strings) and
    C{body} (base64).
  - C{block: false} (or absent): the request goes on, changed thus, in this
    order:

      1. a non-empty C{body} must be a RequestPayload (base64 of a JSON
         object, as the seed's redactor returns its edited input): its
         C{method} and C{path} replace the request's when present; its
         C{headers}, when present, are the request's headers from now on
         (a name it leaves out is removed; a name whose value differs from
         the request's first value gets that one value; a name whose value
         is unchanged keeps all its values); its C{body} replaces the
         request body only for a plugin with C{include_body: true} (the
         only ones that were given the body). A body that is no
         RequestPayload is invalid output (500).
      2. the action's own C{headers} set request headers by name (C{null}
         removes one), as the JSON ABI's do.

    C{status_code} means nothing without C{block}.
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Optional, Union

from wasmgate.wasm.abi_json import MAX_OUTPUT_BYTES, apply_request_action, headers_to_json
from wasmgate.wasm.failures import BadOutput
from wasmgate.wasm.messages import Answer, Continue, FilterRequest

DEFAULT_BLOCK_STATUS = 403


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode_request(req: FilterRequest, include_body: bool) -> bytes:
    """C{req} as the seed's RequestPayload JSON (UTF-8)."""
    first: dict[str, str] = {}
    setdefault = first.setdefault
    for name, value in req.headers:
        setdefault(name, value)  # FilterRequest names are lower case already
    body = base64.b64encode(req.body).decode("ascii") if include_body and req.body else ""
    text = _encode({"method": req.method, "path": req.path or "/", "headers": first, "body": body})
    return text.encode("utf-8", "surrogateescape")


def apply_action(
    output: bytes, req: FilterRequest, plugin: str, include_body: bool
) -> Union[Answer, Continue]:
    """Validate the plugin's ResponseAction and apply it to C{req}."""
    # As for JSON-ABI answers: a bound checked before parsing (room for a
    # rewritten body in base64 twice over), and nesting too deep for the
    # parser is bad output, not a traceback.
    bound = max(MAX_OUTPUT_BYTES, 3 * len(req.body or b""))
    if len(output) > bound:
        raise BadOutput("output is %d bytes, over the %d allowed" % (len(output), bound))
    try:
        doc = json.loads(output)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadOutput("output is not valid JSON: %s" % (e,)) from None
    except RecursionError:
        raise BadOutput("output is nested too deeply") from None
    if not isinstance(doc, dict):
        raise BadOutput("output must be a JSON object, not %s" % (type(doc).__name__,))
    block = doc.get("block", False)
    if block is None:
        block = False
    if not isinstance(block, bool):
        raise BadOutput("'block' must be true or false")
    headers = doc.get("headers") or {}
    if block:
        status = doc.get("status_code") or DEFAULT_BLOCK_STATUS
        action: dict[str, Any] = {"block": True, "status_code": status, "headers": headers}
        if doc.get("body"):
            action["body"] = doc["body"]
        return apply_request_action(action, req, plugin)
    change: dict[str, Any] = {}
    body = doc.get("body")
    if body:
        change = _payload_change(body, req, include_body)
    if headers:
        if not isinstance(headers, dict):
            raise BadOutput("'headers' must be an object")
        merged = dict(change.get("headers", {}))
        merged.update({name.lower() if isinstance(name, str) else name: v for name, v in headers.items()})
        change["headers"] = merged
    if not change:
        return Continue(req, changed=False)
    return apply_request_action(change, req, plugin)


def _payload_change(body: Any, req: FilterRequest, include_body: bool) -> dict[str, Any]:
    """The JSON-ABI change a RequestPayload in an action's C{body} stands for."""
    if not isinstance(body, str):
        raise BadOutput("'body' must be a base64 string")
    try:
        payload = json.loads(base64.b64decode(body, validate=True))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise BadOutput(
            "a non-blocking action's 'body' must be a base64 RequestPayload (JSON with method, path, headers)"
        ) from None
    if not isinstance(payload, dict):
        raise BadOutput("a non-blocking action's 'body' must be a RequestPayload object")
    change: dict[str, Any] = {}
    for key in ("method", "path"):
        value = payload.get(key)
        if value is not None and value != getattr(req, key):
            change[key] = value
    new_headers = payload.get("headers")
    if new_headers is not None:
        if not isinstance(new_headers, dict):
            raise BadOutput("the RequestPayload's 'headers' must be an object")
        current = headers_to_json(req.headers)
        wanted = {(k.lower() if isinstance(k, str) else k): v for k, v in new_headers.items()}
        diff: dict[Any, Optional[Any]] = {name: None for name in current if name not in wanted}
        for name, value in wanted.items():
            now = current.get(name)
            first = now[0] if isinstance(now, list) else now
            if value != first:
                diff[name] = value
        if diff:
            change["headers"] = diff
    new_body = payload.get("body")
    if include_body and isinstance(new_body, str):
        old = base64.b64encode(req.body or b"").decode("ascii")
        if new_body != old:
            change["body"] = new_body
    return change
