# -*- test-case-name: tests.test_wasm_filter -*-
"""
The JSON ABI's output rules (see L{wasmgate.wasm.abi_json}): a guest's
answer is checked in full, raising L{BadOutput} at the first thing wrong,
and only then applied to the request or response (all or nothing).
"""
from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Optional, Union

from wasmgate.wasm.failures import BadOutput
from wasmgate.wasm.messages import Answer, Continue, FilterRequest, FilterResponse, Headers

DEFAULT_BLOCK_STATUS = 403

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
