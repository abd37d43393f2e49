"""
Test guests for the wasmgate JSON ABI, as WAT source text.

Shared by the engine tests and the gateway tests: compile with
C{wasmtime.wat2wasm(SOURCE)} (or pass the text to
L{wasmgate.testing.run_filter}, which accepts WAT).

Guests that answer with JSON keep it in a data segment and return the
packed C{(ptr << 32) | len} as a constant; L{respond} builds that, so the
JSON stays readable here.

L{MISBEHAVING} picks a misdeed from the first letter of the request method
(the payload always starts C{{"method":"}, so that letter is at input
offset 11); any other method passes. So a test can make one call fail and
the next succeed on the same filter.
"""
from __future__ import annotations

import base64
import json

ALLOC = """
  ;; bump allocator from 64 KiB up, growing memory as needed (0 = failed)
  (global $heap (mut i32) (i32.const 65536))
  (func (export "wasmgate_alloc") (param $n i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (global.get $heap))
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (block $fits
      (loop $grow
        (br_if $fits (i32.le_u (local.get $end) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))
          (then (return (i32.const 0))))
        (br $grow)))
    (global.set $heap (local.get $end))
    (local.get $p))
"""


def wat_string(data: bytes) -> str:
    """C{data} as a WAT string literal (without the quotes)."""
    out = []
    for b in data:
        c = chr(b)
        if c in '"\\':
            out.append("\\" + c)
        elif not 0x20 <= b < 0x7F:
            out.append("\\%02x" % b)
        else:
            out.append(c)
    return "".join(out)


class Output:
    """A JSON document placed in guest memory at C{offset}."""

    def __init__(self, offset: int, doc: object, *, raw: bytes | None = None) -> None:
        self.offset = offset
        self.data = raw if raw is not None else json.dumps(doc, separators=(",", ":")).encode()
        self.packed = (offset << 32) | len(self.data)

    @property
    def segment(self) -> str:
        return '(data (i32.const %d) "%s")' % (self.offset, wat_string(self.data))

    @property
    def result(self) -> str:
        text = self.data.decode("utf-8", "replace").replace(";)", "; )")
        return "(; %s ;) (i64.const %d)" % (text, self.packed)


def respond(request: object = None, response: object = None, *, extra: str = "") -> str:
    """
    A guest whose handle_request returns C{request} (a JSON-able dict, or
    C{None} for "continue unchanged") and, if C{response} is given, whose
    handle_response returns that.
    """
    parts = ["(module", '  (memory (export "memory") 2)', ALLOC]
    if request is None:
        parts.append('  (func (export "handle_request") (param i32 i32) (result i64) (i64.const 0))')
    else:
        out = Output(1024, request)
        parts.append("  " + out.segment)
        parts.append('  (func (export "handle_request") (param i32 i32) (result i64)\n    %s)' % out.result)
    if response is not None:
        out = Output(8192, response)
        parts.append("  " + out.segment)
        parts.append('  (func (export "handle_response") (param i32 i32) (result i64)\n    %s)' % out.result)
    parts.append(extra)
    parts.append(")")
    return "\n".join(parts)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


PASS_THROUGH = respond(None)

HEADER_REWRITE = respond(
    {
        "headers": {"x-added": "yes", "x-remove-me": None, "x-multi": ["a", "b"]},
        "path": "/rewritten",
        "response_headers": {"x-from-filter": "1"},
    }
)

BLOCK_403 = respond(
    {
        "block": True,
        "status_code": 403,
        "headers": {"content-type": "text/plain"},
        "body": b64(b"blocked by wasm\n"),
    }
)

RATE_LIMITED_429 = respond(
    {
        "block": True,
        "status_code": 429,
        "headers": {"retry-after": "1"},
        "response_headers": {"ratelimit-limit": "10"},
        "body": b64(b"slow down\n"),
    }
)

RESPONSE_HEADER = respond(None, {"headers": {"x-response-filtered": "yes", "server": None}})

RESPONSE_STATUS = respond(None, {"status_code": 418, "body": b64(b"teapot\n")})

_OOB = Output(0, None, raw=b"")
_OOB.packed = (0xFFFF0000 << 32) | 64

_BAD_JSON = Output(1024, None, raw=b"{this is not json")
_BAD_SCHEMA = Output(2048, {"block": True, "status_code": 999})
_BAD_HEADER = Output(3072, {"headers": {"x-evil": "a\r\nb: c"}})
_UNKNOWN_KEY = Output(4096, {"status": 429})

MISBEHAVING = """
(module
  (memory (export "memory") 2)
  %(alloc)s
  %(bad_json)s
  %(bad_schema)s
  %(bad_header)s
  %(unknown_key)s
  (func (export "handle_request") (param $ptr i32) (param $len i32) (result i64)
    (local $m i32)
    (local.set $m (i32.load8_u offset=11 (local.get $ptr)))  ;; first letter of the method
    ;; L: loop forever
    (if (i32.eq (local.get $m) (i32.const 76)) (then (loop $forever (br $forever))))
    ;; M: grow memory until refused, then trap
    (if (i32.eq (local.get $m) (i32.const 77))
      (then
        (loop $more
          (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
        unreachable))
    ;; T: trap
    (if (i32.eq (local.get $m) (i32.const 84)) (then unreachable))
    ;; J: output that is not JSON
    (if (i32.eq (local.get $m) (i32.const 74)) (then (return %(bad_json_result)s)))
    ;; O: output pointer outside memory
    (if (i32.eq (local.get $m) (i32.const 79)) (then (return (i64.const %(oob)d))))
    ;; V: status 999
    (if (i32.eq (local.get $m) (i32.const 86)) (then (return %(bad_schema_result)s)))
    ;; H: header value with CR/LF
    (if (i32.eq (local.get $m) (i32.const 72)) (then (return %(bad_header_result)s)))
    ;; K: unknown key
    (if (i32.eq (local.get $m) (i32.const 75)) (then (return %(unknown_key_result)s)))
    (i64.const 0))
)
""" % {
    "alloc": ALLOC,
    "bad_json": _BAD_JSON.segment,
    "bad_json_result": _BAD_JSON.result,
    "bad_schema": _BAD_SCHEMA.segment,
    "bad_schema_result": _BAD_SCHEMA.result,
    "bad_header": _BAD_HEADER.segment,
    "bad_header_result": _BAD_HEADER.result,
    "unknown_key": _UNKNOWN_KEY.segment,
    "unknown_key_result": _UNKNOWN_KEY.result,
    "oob": _OOB.packed - (1 << 64) if _OOB.packed >= (1 << 63) else _OOB.packed,
}

COUNTER = """
(module
  (import "wasmgate" "counter_incr" (func $incr (param i32 i32 i64 i64) (result i64)))
  (import "wasmgate" "counter_get" (func $get (param i32 i32) (result i64)))
  (memory (export "memory") 2)
  %(alloc)s
  (data (i32.const 1024) "hits")
  ;; every request adds 1 to counter "hits" (no expiry)
  (func (export "handle_request") (param i32 i32) (result i64)
    (drop (call $incr (i32.const 1024) (i32.const 4) (i64.const 1) (i64.const 0)))
    (i64.const 0))
  (func (export "read_hits") (result i64)
    (call $get (i32.const 1024) (i32.const 4)))
)
""" % {"alloc": ALLOC}

ECHO_LOG = """
(module
  (import "wasmgate" "log" (func $log (param i32 i32 i32)))
  (import "wasmgate" "now_ms" (func $now (result i64)))
  (memory (export "memory") 2)
  %(alloc)s
  (global (export "last_now") (mut i64) (i64.const 0))
  ;; log the input (level info) so tests can see exactly what the host sent
  (func (export "handle_request") (param $ptr i32) (param $len i32) (result i64)
    (global.set 1 (call $now))
    (call $log (i32.const 1) (local.get $ptr) (local.get $len))
    (i64.const 0))
  (func (export "handle_response") (param $ptr i32) (param $len i32) (result i64)
    (call $log (i32.const 2) (local.get $ptr) (local.get $len))
    (i64.const 0))
  (func (export "wasmgate_init") (param $ptr i32) (param $len i32) (result i32)
    (call $log (i32.const 0) (local.get $ptr) (local.get $len))
    (i32.const 0))
)
""" % {"alloc": ALLOC}

INIT_REFUSES = """
(module
  (memory (export "memory") 2)
  %(alloc)s
  (func (export "handle_request") (param i32 i32) (result i64) (i64.const 0))
  (func (export "wasmgate_init") (param i32 i32) (result i32) (i32.const 1))
)
""" % {"alloc": ALLOC}

MISSING_HANDLE_REQUEST = """
(module
  (memory (export "memory") 2)
  %(alloc)s
)
""" % {"alloc": ALLOC}

UNKNOWN_IMPORT = """
(module
  (import "env" "launch_missiles" (func (param i32)))
  (memory (export "memory") 2)
  %(alloc)s
  (func (export "handle_request") (param i32 i32) (result i64) (i64.const 0))
)
""" % {"alloc": ALLOC}

WRONG_IMPORT_TYPE = """
(module
  (import "wasmgate" "now_ms" (func (result i32)))
  (memory (export "memory") 2)
  %(alloc)s
  (func (export "handle_request") (param i32 i32) (result i64) (i64.const 0))
)
""" % {"alloc": ALLOC}

NO_MEMORY = """
(module
  (func (export "wasmgate_alloc") (param i32) (result i32) (i32.const 0))
  (func (export "handle_request") (param i32 i32) (result i64) (i64.const 0))
)
"""

TOO_MUCH_MEMORY = """
(module
  (memory (export "memory") 512)  ;; 32 MiB up front
  %(alloc)s
  (func (export "handle_request") (param i32 i32) (result i64) (i64.const 0))
)
""" % {"alloc": ALLOC}

NOT_A_FILTER = """
(module
  (func (export "add") (param i32 i32) (result i32)
    (i32.add (local.get 0) (local.get 1)))
)
"""
