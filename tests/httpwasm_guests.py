"""
Test guests for the http-wasm handler ABI, as WAT source text.

Each guest imports the whole C{http_handler} module (so the host's types
are checked for every function) and reports what the host told it through
response headers: numbers as 16 hex digits (L{hex_field} decodes them),
NUL-terminated lists with the NULs turned into commas.

Memory layout: strings from the guest's data segments start at 1024; HEX
(16 bytes) at 4096, BUF (scratch) at 8192, ID (a request's id, kept across
phases) at 12288, ACC (a body being read) at 16384.
"""
from __future__ import annotations

IMPORTS = """
  (import "http_handler" "enable_features" (func $enable_features (param i32) (result i32)))
  (import "http_handler" "get_config" (func $get_config (param i32 i32) (result i32)))
  (import "http_handler" "log_enabled" (func $log_enabled (param i32) (result i32)))
  (import "http_handler" "log" (func $log (param i32 i32 i32)))
  (import "http_handler" "get_method" (func $get_method (param i32 i32) (result i32)))
  (import "http_handler" "set_method" (func $set_method (param i32 i32)))
  (import "http_handler" "get_uri" (func $get_uri (param i32 i32) (result i32)))
  (import "http_handler" "set_uri" (func $set_uri (param i32 i32)))
  (import "http_handler" "get_protocol_version" (func $get_protocol_version (param i32 i32) (result i32)))
  (import "http_handler" "get_source_addr" (func $get_source_addr (param i32 i32) (result i32)))
  (import "http_handler" "get_header_names" (func $get_header_names (param i32 i32 i32) (result i64)))
  (import "http_handler" "get_header_values" (func $get_header_values (param i32 i32 i32 i32 i32) (result i64)))
  (import "http_handler" "set_header_value" (func $set_header_value (param i32 i32 i32 i32 i32)))
  (import "http_handler" "add_header_value" (func $add_header_value (param i32 i32 i32 i32 i32)))
  (import "http_handler" "remove_header" (func $remove_header (param i32 i32 i32)))
  (import "http_handler" "read_body" (func $read_body (param i32 i32 i32) (result i64)))
  (import "http_handler" "write_body" (func $write_body (param i32 i32 i32)))
  (import "http_handler" "get_status_code" (func $get_status_code (result i32)))
  (import "http_handler" "set_status_code" (func $set_status_code (param i32)))
"""

HELPERS = """
  (memory (export "memory") 1)
  ;; 16 lower-case hex digits of $v at $dst
  (func $hex (param $v i64) (param $dst i32)
    (local $i i32) (local $d i32)
    (local.set $i (i32.const 15))
    (loop $next
      (local.set $d (i32.wrap_i64 (i64.and (local.get $v) (i64.const 15))))
      (i32.store8 (i32.add (local.get $dst) (local.get $i))
        (i32.add (local.get $d)
          (select (i32.const 48) (i32.const 87) (i32.lt_u (local.get $d) (i32.const 10)))))
      (local.set $v (i64.shr_u (local.get $v) (i64.const 4)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $next (i32.ge_s (local.get $i) (i32.const 0)))))
  ;; response header $name = hex($v)
  (func $report (param $name i32) (param $len i32) (param $v i64)
    (call $hex (local.get $v) (i32.const 4096))
    (call $add_header_value (i32.const 1) (local.get $name) (local.get $len) (i32.const 4096) (i32.const 16)))
  ;; NUL -> ',' in [$p, $p+$n)
  (func $commas (param $p i32) (param $n i32)
    (local $end i32)
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (if (i32.eqz (i32.load8_u (local.get $p)))
          (then (i32.store8 (local.get $p) (i32.const 44))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next))))
"""


class Strings:
    """Places strings in a data segment; C{s("x")} is C{(i32.const ptr) (i32.const len)}."""

    def __init__(self, start: int = 1024) -> None:
        self.next = start
        self.parts: list[tuple[int, bytes]] = []
        self.seen: dict[bytes, int] = {}

    def __call__(self, text: str | bytes) -> str:
        data = text.encode("latin-1") if isinstance(text, str) else text
        off = self.seen.get(data)
        if off is None:
            off = self.seen[data] = self.next
            self.parts.append((off, data))
            self.next += len(data) + 1
            assert self.next < 4096, "string area overflows into HEX"
        return "(i32.const %d) (i32.const %d)" % (off, len(data))

    def segments(self) -> str:
        return "\n".join('  (data (i32.const %d) "%s")' % (off, _wat_bytes(data)) for off, data in self.parts)


def _wat_bytes(data: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F and chr(b) not in '"\\' else "\\%02x" % b for b in data)


def module(s: Strings, body: str, *, imports: str = "") -> str:
    """A guest: the C{http_handler} imports (then C{imports}), L{HELPERS}, C{body}."""
    return "(module\n%s%s%s%s\n%s\n)" % (IMPORTS, imports, HELPERS, body, s.segments())


def hex_field(value: str) -> int:
    """Decode a number a guest reported with L{HELPERS}' C{$report}."""
    return int(value, 16)


# -- rewriting method, URI and headers; response headers in both phases ---

_s = Strings()
REWRITE = module(
    _s,
    f"""
  (func (export "_start")
    ;; buffer the response so handle_response may change its headers
    (drop (call $enable_features (i32.const 2))))
  (func (export "handle_request") (result i64)
    (local $n i32)
    (local.set $n (call $get_method (i32.const 8192) (i32.const 64)))
    (call $set_header_value (i32.const 0) {_s("x-orig-method")} (i32.const 8192) (local.get $n))
    (local.set $n (call $get_uri (i32.const 8192) (i32.const 1024)))
    (call $set_header_value (i32.const 0) {_s("x-orig-uri")} (i32.const 8192) (local.get $n))
    (local.set $n (call $get_protocol_version (i32.const 8192) (i32.const 64)))
    (call $set_header_value (i32.const 0) {_s("x-proto")} (i32.const 8192) (local.get $n))
    (local.set $n (call $get_source_addr (i32.const 8192) (i32.const 64)))
    (call $set_header_value (i32.const 0) {_s("x-source")} (i32.const 8192) (local.get $n))
    (call $set_method {_s("PATCH")})
    (call $set_uri {_s("/rewritten/p%20q?a=1&b=2")})
    (call $add_header_value (i32.const 0) {_s("X-Added")} {_s("one")})
    (call $add_header_value (i32.const 0) {_s("x-added")} {_s("two")})
    (call $remove_header (i32.const 0) {_s("X-Remove-Me")})
    (call $set_header_value (i32.const 0) {_s("x-replace")} {_s("new")})
    (call $add_header_value (i32.const 1) {_s("x-early")} {_s("e1")})
    (call $add_header_value (i32.const 1) {_s("x-early")} {_s("e2")})
    (i64.or (i64.shl (i64.const 7) (i64.const 32)) (i64.const 1)))
  (func (export "handle_response") (param $ctx i32) (param $err i32)
    (call $add_header_value (i32.const 1) {_s("x-late")} {_s("l1")})
    (call $add_header_value (i32.const 1) {_s("X-Late")} {_s("l2")})
    (call $remove_header (i32.const 1) {_s("Server")})
    (call $set_header_value (i32.const 1) {_s("x-replaced")} {_s("by-guest")})
    (call $report {_s("x-ctx")} (i64.extend_i32_u (local.get $ctx)))
    (call $report {_s("x-err")} (i64.extend_i32_u (local.get $err))))
""",
)

# -- answering directly ------------------------------------------------------

_s = Strings()
ANSWER = module(
    _s,
    f"""
  (func (export "handle_request") (result i64)
    ;; x-empty: accept the default response (an empty 200)
    (if (i64.ne (call $get_header_values (i32.const 0) {_s("x-empty")} (i32.const 0) (i32.const 0)) (i64.const 0))
      (then (return (i64.const 0))))
    (call $set_status_code (i32.const 418))
    (call $set_header_value (i32.const 1) {_s("Content-Type")} {_s("text/plain")})
    (call $add_header_value (i32.const 1) {_s("x-a")} {_s("1")})
    (call $add_header_value (i32.const 1) {_s("x-a")} {_s("2")})
    (call $write_body (i32.const 1) {_s("hello ")})
    (call $write_body (i32.const 1) {_s("world")})
    (call $report {_s("x-status-seen")} (i64.extend_i32_u (call $get_status_code)))
    ;; read back what was written so far (the guest's own response body)
    (call $report {_s("x-own-body")} (call $read_body (i32.const 1) (i32.const 8192) (i32.const 64)))
    (i64.const 0))
  (func (export "handle_response") (param i32 i32) unreachable)
""",
)

# -- reading and rewriting the request body ----------------------------------

_s = Strings()
REQUEST_BODY = module(
    _s,
    f"""
  (func (export "_start")
    (drop (call $enable_features (i32.const 3))))
  (func (export "handle_request") (result i64)
    (local $pos i32) (local $r i64) (local $reads i64)
    (local.set $pos (i32.const 16384))
    (block $done
      (loop $more
        (local.set $r (call $read_body (i32.const 0) (local.get $pos) (i32.const 5)))
        (local.set $reads (i64.add (local.get $reads) (i64.const 1)))
        (local.set $pos (i32.add (local.get $pos) (i32.wrap_i64 (local.get $r))))
        (br_if $done (i64.ne (i64.shr_u (local.get $r) (i64.const 32)) (i64.const 0)))
        (br $more)))
    (call $write_body (i32.const 0) {_s("[")})
    (call $write_body (i32.const 0) (i32.const 16384) (i32.sub (local.get $pos) (i32.const 16384)))
    (call $write_body (i32.const 0) {_s("]")})
    (call $hex (local.get $reads) (i32.const 4096))
    (call $set_header_value (i32.const 0) {_s("x-body-reads")} (i32.const 4096) (i32.const 16))
    (i64.const 1))
  (func (export "handle_response") (param $ctx i32) (param $err i32)
    ;; with buffer_request the body may still be read here: the stream goes on
    (call $report {_s("x-req-read-after")} (call $read_body (i32.const 0) (i32.const 8192) (i32.const 64))))
""",
)

# -- reading and rewriting the response body (buffer_response) -----------------

_s = Strings()
RESPONSE_BODY = module(
    _s,
    f"""
  (func (export "_start")
    (drop (call $enable_features (i32.const 2))))
  (func (export "handle_request") (result i64) (i64.const 1))
  (func (export "handle_response") (param $ctx i32) (param $err i32)
    (local $pos i32) (local $r i64)
    (local.set $pos (i32.const 16384))
    (block $done
      (loop $more
        (local.set $r (call $read_body (i32.const 1) (local.get $pos) (i32.const 3)))
        (local.set $pos (i32.add (local.get $pos) (i32.wrap_i64 (local.get $r))))
        (br_if $done (i64.ne (i64.shr_u (local.get $r) (i64.const 32)) (i64.const 0)))
        (br $more)))
    (call $report {_s("x-upstream-status")} (i64.extend_i32_u (call $get_status_code)))
    (call $set_status_code (i32.add (call $get_status_code) (i32.const 1)))
    (call $write_body (i32.const 1) {_s("<")})
    (call $write_body (i32.const 1) (i32.const 16384) (i32.sub (local.get $pos) (i32.const 16384)))
    (call $write_body (i32.const 1) {_s(">")}))
""",
)

# -- header names and values; buffers too small -------------------------------

_s = Strings()
NAMES = module(
    _s,
    f"""
  (func (export "handle_request") (result i64)
    (local $cl i64) (local $n i32)
    (memory.fill (i32.const 8192) (i32.const 35) (i32.const 256))
    ;; too small: only the length comes back, nothing is written
    (local.set $cl (call $get_header_names (i32.const 0) (i32.const 8192) (i32.const 8)))
    (call $report {_s("x-names-small")} (local.get $cl))
    (call $add_header_value (i32.const 1) {_s("x-untouched")} (i32.const 8192) (i32.const 8))
    (local.set $n (i32.wrap_i64 (local.get $cl)))
    (local.set $cl (call $get_header_names (i32.const 0) (i32.const 8192) (local.get $n)))
    (call $report {_s("x-names-cl")} (local.get $cl))
    (call $commas (i32.const 8192) (local.get $n))
    (call $add_header_value (i32.const 1) {_s("x-names")} (i32.const 8192) (local.get $n))
    ;; values, case-insensitive name; first with a 1-byte buffer
    (memory.fill (i32.const 8192) (i32.const 35) (i32.const 256))
    (local.set $cl (call $get_header_values (i32.const 0) {_s("X-Multi")} (i32.const 8192) (i32.const 1)))
    (call $report {_s("x-values-small")} (local.get $cl))
    (call $add_header_value (i32.const 1) {_s("x-untouched")} (i32.const 8192) (i32.const 1))
    (local.set $n (i32.wrap_i64 (local.get $cl)))
    (local.set $cl (call $get_header_values (i32.const 0) {_s("x-multi")} (i32.const 8192) (local.get $n)))
    (call $commas (i32.const 8192) (local.get $n))
    (call $add_header_value (i32.const 1) {_s("x-values")} (i32.const 8192) (local.get $n))
    (call $report {_s("x-absent")}
      (call $get_header_values (i32.const 0) {_s("x-absent")} (i32.const 8192) (i32.const 256)))
    (call $report {_s("x-trailer-names")} (call $get_header_names (i32.const 2) (i32.const 8192) (i32.const 256)))
    (call $report {_s("x-trailer-values")}
      (call $get_header_values (i32.const 3) {_s("grpc-status")} (i32.const 8192) (i32.const 256)))
    (call $report {_s("x-features")} (i64.extend_i32_u (call $enable_features (i32.const 7))))
    (call $report {_s("x-uri-len")} (i64.extend_i32_u (call $get_uri (i32.const 8192) (i32.const 0))))
    (i64.const 0))
""",
)

# -- logging and config ---------------------------------------------------------

_s = Strings()
LOG_CONFIG = module(
    _s,
    f"""
  (global $config_len (mut i32) (i32.const 0))
  (func (export "_initialize")
    (call $log (i32.const 0) {_s("initialising")})
    ;; ask the length first (buf_limit 0), then read it into place
    (global.set $config_len (call $get_config (i32.const 0) (i32.const 0)))
    (drop (call $get_config (i32.const 16384) (global.get $config_len))))
  (func (export "handle_request") (result i64)
    (i32.store8 (i32.const 8192) (i32.add (i32.const 48) (call $log_enabled (i32.const -1))))
    (i32.store8 (i32.const 8193) (i32.add (i32.const 48) (call $log_enabled (i32.const 0))))
    (i32.store8 (i32.const 8194) (i32.add (i32.const 48) (call $log_enabled (i32.const 1))))
    (i32.store8 (i32.const 8195) (i32.add (i32.const 48) (call $log_enabled (i32.const 2))))
    (i32.store8 (i32.const 8196) (i32.add (i32.const 48) (call $log_enabled (i32.const 3))))
    (call $set_header_value (i32.const 1) {_s("x-log-enabled")} (i32.const 8192) (i32.const 5))
    (call $log (i32.const -1) {_s("a debug line")})
    (call $log (i32.const 0) {_s("an info line")})
    (call $log (i32.const 1) {_s("a warning")})
    (call $log (i32.const 2) {_s("an error")})
    (call $log (i32.const 3) {_s("never logged")})
    ;; a message outside memory is dropped, never a trap
    (call $log (i32.const 0) (i32.const 65530) (i32.const 100))
    (call $write_body (i32.const 1) (i32.const 16384) (global.get $config_len))
    (i64.const 0))
""",
)

# -- per-request state in globals (the instance is pinned) ---------------------

_s = Strings()
STATEFUL = module(
    _s,
    f"""
  (global $seq (mut i32) (i32.const 0))
  (global $id_len (mut i32) (i32.const 0))
  (func (export "_start")
    (drop (call $enable_features (i32.const 2))))
  (func (export "handle_request") (result i64)
    (global.set $seq (i32.add (global.get $seq) (i32.const 1)))
    ;; keep this request's x-id in memory until handle_response
    (global.set $id_len
      (i32.sub (i32.wrap_i64 (call $get_header_values (i32.const 0) {_s("x-id")} (i32.const 12288) (i32.const 64)))
               (i32.const 1)))
    (i64.or (i64.shl (i64.extend_i32_u (global.get $seq)) (i64.const 32)) (i64.const 1)))
  (func (export "handle_response") (param $ctx i32) (param $err i32)
    (if (local.get $err)
      (then (call $log (i32.const 1) (i32.const 12288) (global.get $id_len))))
    (call $set_header_value (i32.const 1) {_s("x-id-echo")} (i32.const 12288) (global.get $id_len))
    (call $report {_s("x-ctx")} (i64.extend_i32_u (local.get $ctx)))
    (call $report {_s("x-err")} (i64.extend_i32_u (local.get $err)))
    (call $report {_s("x-seen-status")} (i64.extend_i32_u (call $get_status_code))))
""",
)

# -- buffering asked for per request; request body read without it --------------
#
#   x-enable: enable_features(3) in handle_request (x-features: the result);
#             with buffer_response granted, handle_response wraps the body
#   x-read:   read up to 4 bytes of the request body (x-read: eof_len,
#             x-read-bytes: the bytes)
#   x-write:  after that read, write the request body "new:" and read on

_s = Strings()
PER_REQUEST = module(
    _s,
    f"""
  (global $features (mut i32) (i32.const 0))
  (func $has (param $name i32) (param $len i32) (result i32)
    (i64.ne (call $get_header_values (i32.const 0) (local.get $name) (local.get $len) (i32.const 0) (i32.const 0))
            (i64.const 0)))
  (func (export "handle_request") (result i64)
    (local $r i64)
    (global.set $features (i32.const 0))
    (if (call $has {_s("x-enable")})
      (then (global.set $features (call $enable_features (i32.const 3)))))
    (call $report {_s("x-features")} (i64.extend_i32_u (global.get $features)))
    (if (call $has {_s("x-read")})
      (then
        (local.set $r (call $read_body (i32.const 0) (i32.const 16384) (i32.const 4)))
        (call $report {_s("x-read")} (local.get $r))
        (call $add_header_value (i32.const 1) {_s("x-read-bytes")} (i32.const 16384) (i32.wrap_i64 (local.get $r)))
        (if (call $has {_s("x-write")})
          (then
            (call $write_body (i32.const 0) {_s("new:")})
            (drop (call $read_body (i32.const 0) (i32.const 16384) (i32.const 4)))))))
    (i64.const 1))
  (func (export "handle_response") (param $ctx i32) (param $err i32)
    (local $pos i32) (local $r i64)
    ;; as a careful guest does: touch the response only if buffering was granted
    (if (i32.eqz (i32.and (global.get $features) (i32.const 2)))
      (then (return)))
    (local.set $pos (i32.const 16384))
    (block $done
      (loop $more
        (local.set $r (call $read_body (i32.const 1) (local.get $pos) (i32.const 64)))
        (local.set $pos (i32.add (local.get $pos) (i32.wrap_i64 (local.get $r))))
        (br_if $done (i64.ne (i64.shr_u (local.get $r) (i64.const 32)) (i64.const 0)))
        (br $more)))
    (call $write_body (i32.const 1) {_s("<")})
    (call $write_body (i32.const 1) (i32.const 16384) (i32.sub (local.get $pos) (i32.const 16384)))
    (call $write_body (i32.const 1) {_s(">")}))
""",
)

# -- buffering asked for at start-up by every instance but the first -------------
#
# (the wasmgate counter store tells instances apart). Answers itself with
# x-start-features (what _start was told) and x-features (enable_features(0)
# in handle_request).

_s = Strings()
LATE_START = module(
    _s,
    f"""
  (global $start_features (mut i32) (i32.const 0))
  (func (export "_start")
    (if (i64.gt_s (call $counter_incr {_s("instances")} (i64.const 1) (i64.const 0)) (i64.const 1))
      (then (global.set $start_features (call $enable_features (i32.const 3))))))
  (func (export "handle_request") (result i64)
    (call $report {_s("x-start-features")} (i64.extend_i32_u (global.get $start_features)))
    (call $report {_s("x-features")} (i64.extend_i32_u (call $enable_features (i32.const 0))))
    (i64.const 0))
""",
    imports='''  (import "wasmgate" "counter_incr" (func $counter_incr (param i32 i32 i64 i64) (result i64)))\n''',
)

# -- misbehaviour, chosen by the first letter of the method ----------------------
#
#   M: set_method in handle_response          S: set_status_code in handle_response
#   T: set a trailer                          Z: read_body with buf_limit 0
#   O: set_uri from outside memory            L: loop forever (timeout)
#   N: next=2 (bad output)                    B: read the request body (not buffered)
#   U: set_uri to a non-path                  H: header value with a newline
#   Q: read the response body in handle_response (no buffer_response)
#   W: write a request header in handle_response
#   anything else: pass

_EVIL = "a\nb: c"
_s = Strings()
MISBEHAVING = module(
    _s,
    f"""
  (global $mode (mut i32) (i32.const 0))
  (func (export "handle_request") (result i64)
    (local $m i32)
    (drop (call $get_method (i32.const 8192) (i32.const 64)))
    (local.set $m (i32.load8_u (i32.const 8192)))
    (global.set $mode (local.get $m))
    (if (i32.eq (local.get $m) (i32.const 84)) ;; T
      (then (call $set_header_value (i32.const 2) {_s("grpc-status")} {_s("0")})))
    (if (i32.eq (local.get $m) (i32.const 90)) ;; Z
      (then (drop (call $read_body (i32.const 0) (i32.const 8192) (i32.const 0)))))
    (if (i32.eq (local.get $m) (i32.const 79)) ;; O
      (then (call $set_uri (i32.const 65500) (i32.const 100))))
    (if (i32.eq (local.get $m) (i32.const 76)) ;; L
      (then (loop $forever (br $forever))))
    (if (i32.eq (local.get $m) (i32.const 78)) ;; N
      (then (return (i64.const 2))))
    (if (i32.eq (local.get $m) (i32.const 66)) ;; B
      (then (drop (call $read_body (i32.const 0) (i32.const 8192) (i32.const 64)))))
    (if (i32.eq (local.get $m) (i32.const 85)) ;; U
      (then (call $set_uri {_s("http://elsewhere/")})))
    (if (i32.eq (local.get $m) (i32.const 72)) ;; H
      (then (call $set_header_value (i32.const 0) {_s("x-evil")} {_s(_EVIL)})))
    (i64.const 1))
  (func (export "handle_response") (param $ctx i32) (param $err i32)
    (if (i32.eq (global.get $mode) (i32.const 77)) ;; M
      (then (call $set_method {_s("PUT")})))
    (if (i32.eq (global.get $mode) (i32.const 83)) ;; S
      (then (call $set_status_code (i32.const 201))))
    (if (i32.eq (global.get $mode) (i32.const 81)) ;; Q
      (then (drop (call $read_body (i32.const 1) (i32.const 8192) (i32.const 64)))))
    (if (i32.eq (global.get $mode) (i32.const 87)) ;; W
      (then (call $add_header_value (i32.const 0) {_s("x-late")} {_s("1")}))))
""",
)

# -- the smallest guest: no imports, request phase only ------------------------

MINIMAL = """
(module
  (memory (export "memory") 1)
  (func (export "handle_request") (result i64) (i64.const 1)))
"""

# -- host calls during start-up: get_config from a (start ...) section ---------

_s = Strings()
START_CONFIG = module(
    _s,
    f"""
  (global $config_len (mut i32) (i32.const 0))
  (func $init
    ;; runs while the module is instantiated: memory must be reachable here
    (call $log (i32.const 0) {_s("starting")})
    (global.set $config_len (call $get_config (i32.const 16384) (i32.const 4096))))
  (start $init)
  (func (export "handle_request") (result i64)
    (call $write_body (i32.const 1) (i32.const 16384) (global.get $config_len))
    (i64.const 0))
""",
)

# -- a response committed in handle_request, then next=1 -----------------------

_s = Strings()
COMMIT_THEN_NEXT = module(
    _s,
    f"""
  (func (export "handle_request") (result i64)
    (if (i64.ne (call $get_header_values (i32.const 0) {_s("x-status-only")} (i32.const 0) (i32.const 0)) (i64.const 0))
      (then
        (call $set_status_code (i32.const 203))
        (return (i64.const 1))))
    (call $set_status_code (i32.const 202))
    (call $add_header_value (i32.const 1) {_s("x-early")} {_s("e")})
    (call $write_body (i32.const 1) {_s("early ")})
    (call $write_body (i32.const 1) {_s("body")})
    (i64.const 1))
""",
)

# -- the request's Content-Length, as the guest sees it --------------------------

_s = Strings()
CONTENT_LENGTH = module(
    _s,
    f"""
  (func (export "_start")
    (drop (call $enable_features (i32.const 1))))
  (func (export "handle_request") (result i64)
    (local $n i64)
    (local.set $n (call $get_header_values (i32.const 0) {_s("content-length")} (i32.const 8192) (i32.const 64)))
    (call $set_header_value (i32.const 1) {_s("x-seen-length")} (i32.const 8192)
      (select (i32.sub (i32.wrap_i64 (local.get $n)) (i32.const 1)) (i32.const 0)
              (i64.ne (local.get $n) (i64.const 0))))
    (call $write_body (i32.const 0) {_s("new body!")})
    (i64.const 1))
""",
)
