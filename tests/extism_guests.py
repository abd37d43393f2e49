"""
Extism test plugins as WAT: small, exact exercises of the kernel and host
functions, run on wasmgate and on the reference host (the C{extism} SDK).

Every guest imports what it uses from C{extism:host/env}; C{KERNEL_PROBE}
reports what the kernel answered as 8-byte little-endian numbers (never
raw offsets: the two kernels place blocks differently).
"""
from __future__ import annotations

_ENV = """
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "input_load_u8" (func $input_load_u8 (param i64) (result i32)))
  (import "extism:host/env" "input_load_u64" (func $input_load_u64 (param i64) (result i64)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "free" (func $free (param i64)))
  (import "extism:host/env" "length" (func $length (param i64) (result i64)))
  (import "extism:host/env" "length_unsafe" (func $length_unsafe (param i64) (result i64)))
  (import "extism:host/env" "load_u8" (func $load_u8 (param i64) (result i32)))
  (import "extism:host/env" "load_u64" (func $load_u64 (param i64) (result i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "store_u64" (func $store_u64 (param i64 i64)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (import "extism:host/env" "error_set" (func $error_set (param i64)))
  (import "extism:host/env" "config_get" (func $config_get (param i64) (result i64)))
  (import "extism:host/env" "var_get" (func $var_get (param i64) (result i64)))
  (import "extism:host/env" "var_set" (func $var_set (param i64 i64)))
  (import "extism:host/env" "log_info" (func $log_info (param i64)))
  (import "extism:host/env" "log_warn" (func $log_warn (param i64)))
  (import "extism:host/env" "log_debug" (func $log_debug (param i64)))
  (import "extism:host/env" "log_error" (func $log_error (param i64)))
"""

_HELPERS = """
  (memory (export "memory") 1)
  (global $pos (mut i32) (i32.const 4096))
  ;; append an i64 to the report at 4096..
  (func $put (param $v i64)
    (i64.store (global.get $pos) (local.get $v))
    (global.set $pos (i32.add (global.get $pos) (i32.const 8))))
  ;; a kernel block holding guest bytes [$p, $p+$n)
  (func $block (param $p i32) (param $n i32) (result i64)
    (local $b i64) (local $i i32)
    (local.set $b (call $alloc (i64.extend_i32_u (local.get $n))))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (call $store_u8 (i64.add (local.get $b) (i64.extend_i32_u (local.get $i)))
        (i32.load8_u (i32.add (local.get $p) (local.get $i))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (local.get $b))
  ;; the report as the output
  (func $finish
    (local $n i32) (local $i i32) (local $out i64)
    (local.set $n (i32.sub (global.get $pos) (i32.const 4096)))
    (local.set $out (call $alloc (i64.extend_i32_u (local.get $n))))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (call $store_u64 (i64.add (local.get $out) (i64.extend_i32_u (local.get $i)))
        (i64.load (i32.add (i32.const 4096) (local.get $i))))
      (local.set $i (i32.add (local.get $i) (i32.const 8)))
      (br $next)))
    (call $output_set (local.get $out) (i64.extend_i32_u (local.get $n))))
  ;; the first 8 bytes of a block (0-padded), or -1 for none
  (func $head (param $b i64) (result i64)
    (local $n i64) (local $i i64) (local $v i64)
    (if (i64.eqz (local.get $b)) (then (return (i64.const -1))))
    (local.set $n (call $length (local.get $b)))
    (block $done (loop $next
      (br_if $done (i64.ge_u (local.get $i) (select (local.get $n) (i64.const 8) (i64.lt_u (local.get $n) (i64.const 8)))))
      (local.set $v (i64.or (local.get $v)
        (i64.shl (i64.extend_i32_u (call $load_u8 (i64.add (local.get $b) (local.get $i))))
                 (i64.mul (local.get $i) (i64.const 8)))))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $next)))
    (local.get $v))
"""


def module(body: str, data: str = "") -> str:
    return "(module\n%s%s%s\n%s\n)" % (_ENV, _HELPERS, body, data)


KERNEL_PROBE = module(
    """
  (func (export "handler") (result i32)
    (local $a i64) (local $b i64) (local $k i64) (local $v i64) (local $n i64)
    ;; input
    (local.set $n (call $input_length))
    (call $put (local.get $n))
    (call $put (i64.extend_i32_u (call $input_load_u8 (i64.const 0))))
    (call $put (i64.extend_i32_u (call $input_load_u8 (i64.sub (local.get $n) (i64.const 1)))))
    (call $put (i64.extend_i32_u (call $input_load_u8 (local.get $n))))
    (call $put (call $input_load_u64 (i64.const 0)))
    (call $put (call $input_load_u64 (i64.sub (local.get $n) (i64.const 8))))
    (call $put (call $input_load_u64 (i64.sub (local.get $n) (i64.const 4))))
    ;; blocks
    (local.set $a (call $alloc (i64.const 5)))
    (call $put (i64.extend_i32_u (i64.ne (local.get $a) (i64.const 0))))
    (call $put (call $length (local.get $a)))
    (call $put (call $length_unsafe (local.get $a)))
    (call $put (call $length (i64.const 0)))
    (call $put (call $alloc (i64.const 0)))
    (call $put (call $length (i64.add (local.get $a) (i64.const 1))))
    (call $store_u64 (local.get $a) (i64.const 0x0102030405060708))
    (call $put (call $load_u64 (local.get $a)))
    (call $store_u8 (local.get $a) (i32.const 0xff))
    (call $put (i64.extend_i32_u (call $load_u8 (local.get $a))))
    (call $put (call $load_u64 (local.get $a)))
    (call $free (local.get $a))
    (call $put (call $length (local.get $a)))
    (local.set $b (call $alloc (i64.const 3)))
    (call $put (call $length (local.get $b)))
    (local.set $b (call $alloc (i64.const 70000)))
    (call $put (call $length (local.get $b)))
    (call $store_u8 (i64.add (local.get $b) (i64.const 69999)) (i32.const 7))
    (call $put (i64.extend_i32_u (call $load_u8 (i64.add (local.get $b) (i64.const 69999)))))
    ;; config
    (local.set $v (call $config_get (call $block (i32.const 100) (i32.const 4))))
    (call $put (call $length (local.get $v)))
    (call $put (call $head (local.get $v)))
    (call $put (call $config_get (call $block (i32.const 110) (i32.const 7))))
    ;; vars: "count" holds one byte, bumped by each call
    (local.set $v (call $var_get (call $block (i32.const 120) (i32.const 5))))
    (call $put (call $head (local.get $v)))
    (i32.store8 (i32.const 200)
      (i32.add (i32.const 1) (select (i32.wrap_i64 (call $head (local.get $v))) (i32.const 0) (i64.ne (local.get $v) (i64.const 0)))))
    (call $var_set (call $block (i32.const 120) (i32.const 5)) (call $block (i32.const 200) (i32.const 1)))
    ;; a var removed is gone
    (call $var_set (call $block (i32.const 130) (i32.const 4)) (call $block (i32.const 100) (i32.const 4)))
    (call $put (call $length (call $var_get (call $block (i32.const 130) (i32.const 4)))))
    (call $var_set (call $block (i32.const 130) (i32.const 4)) (i64.const 0))
    (call $put (call $var_get (call $block (i32.const 130) (i32.const 4))))
    ;; the host owns what it is given: a key is freed by config_get
    (local.set $k (call $block (i32.const 100) (i32.const 4)))
    (drop (call $config_get (local.get $k)))
    (call $put (call $length (local.get $k)))
    ;; logging is silent to the guest
    (call $log_info (call $block (i32.const 140) (i32.const 12)))
    (call $log_debug (call $block (i32.const 140) (i32.const 12)))
    (call $finish)
    (i32.const 0))
""",
    """
  (data (i32.const 100) "name")
  (data (i32.const 110) "missing")
  (data (i32.const 120) "count")
  (data (i32.const 130) "temp")
  (data (i32.const 140) "hello, world")
""",
)


FAILS = module(
    """
  ;; input "error": set an error and return 1; "code": return 7 without one;
  ;; "trap": set an error, then trap; else: set an error, return 0
  (func (export "handler") (result i32)
    (local $c i32)
    (local.set $c (call $input_load_u8 (i64.const 0)))
    (if (i32.eq (local.get $c) (i32.const 99)) (then (return (i32.const 7))))
    (call $error_set (call $block (i32.const 100) (i32.const 13)))
    (if (i32.eq (local.get $c) (i32.const 116)) (then unreachable))
    (i32.eq (local.get $c) (i32.const 101)))
""",
    '  (data (i32.const 100) "it went wrong")',
)


def echo(action: str = "") -> str:
    """A plugin that outputs C{action} (a ResponseAction) whatever its input."""
    data = action.encode("utf-8")
    escaped = "".join("\\%02x" % b for b in data)
    return module(
        f"""
  (func (export "handler") (result i32)
    (drop (call $input_length))
    (if (i32.eqz (i32.const {len(data)})) (then (return (i32.const 0))))
    (call $output_set (call $block (i32.const 1024) (i32.const {len(data)})) (i64.const {len(data)}))
    (i32.const 0))
""",
        f'  (data (i32.const 1024) "{escaped}")',
    )


ROUND_TRIP = module(
    """
  ;; reads the whole input (8 bytes at a time, as the PDKs do) and writes it
  ;; back as the output: a kernel round trip of the payload
  (func (export "handler") (result i32)
    (local $n i64) (local $i i64) (local $out i64)
    (local.set $n (call $input_length))
    ;; room for it in our own memory, from 8192
    (drop (memory.grow (i32.sub
      (i32.wrap_i64 (i64.shr_u (i64.add (local.get $n) (i64.const 73727)) (i64.const 16)))
      (memory.size))))
    (block $done (loop $next
      (br_if $done (i64.gt_u (i64.add (local.get $i) (i64.const 8)) (local.get $n)))
      (i64.store (i32.add (i32.const 8192) (i32.wrap_i64 (local.get $i))) (call $input_load_u64 (local.get $i)))
      (local.set $i (i64.add (local.get $i) (i64.const 8)))
      (br $next)))
    (block $done (loop $next
      (br_if $done (i64.ge_u (local.get $i) (local.get $n)))
      (i32.store8 (i32.add (i32.const 8192) (i32.wrap_i64 (local.get $i))) (call $input_load_u8 (local.get $i)))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $next)))
    (local.set $out (call $alloc (local.get $n)))
    (local.set $i (i64.const 0))
    (block $done (loop $next
      (br_if $done (i64.gt_u (i64.add (local.get $i) (i64.const 8)) (local.get $n)))
      (call $store_u64 (i64.add (local.get $out) (local.get $i)) (i64.load (i32.add (i32.const 8192) (i32.wrap_i64 (local.get $i)))))
      (local.set $i (i64.add (local.get $i) (i64.const 8)))
      (br $next)))
    (block $done (loop $next
      (br_if $done (i64.ge_u (local.get $i) (local.get $n)))
      (call $store_u8 (i64.add (local.get $out) (local.get $i)) (i32.load8_u (i32.add (i32.const 8192) (i32.wrap_i64 (local.get $i)))))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $next)))
    (call $output_set (local.get $out) (local.get $n))
    (i32.const 0))
""",
)

SPIN = module('  (func (export "handler") (result i32) (loop $l (br $l)) (i32.const 0))')

GROW = module(
    """
  ;; grows its own memory by the input's first byte in MiB, then outputs nothing
  (func (export "handler") (result i32)
    (if (i32.eq (memory.grow (i32.mul (call $input_load_u8 (i64.const 0)) (i32.const 16))) (i32.const -1))
      (then unreachable))
    (i32.const 0))
"""
)

FILL_VARS = module(
    """
  ;; sets var "v<input byte>" to 64 KiB
  (func (export "handler") (result i32)
    (i32.store8 (i32.const 101) (call $input_load_u8 (i64.const 0)))
    (call $var_set (call $block (i32.const 100) (i32.const 2)) (call $alloc (i64.const 65536)))
    (i32.const 0))
""",
    '  (data (i32.const 100) "v")',
)

HTTP = """(module
  (import "extism:host/env" "http_request" (func $http (param i64 i64) (result i64)))
  (memory (export "memory") 1)
  (func (export "handler") (result i32) (drop (call $http (i64.const 0) (i64.const 0))) (i32.const 0)))"""
