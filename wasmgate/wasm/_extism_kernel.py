# -*- test-case-name: tests.test_abi_extism -*-
"""
wasmgate's Extism kernel: the memory-block half of C{extism:host/env}.

Extism plugins keep what they exchange with the host (input, output,
config values, vars, log lines, errors) in "memory blocks" of a memory that
is not theirs, reached byte by byte (C{load_u8}, C{store_u64}, ...). A
Python host function per byte would cost a microsecond each, so those
functions live here, in a small wasm module instantiated into the plugin's
own store: the plugin's imports call it wasm-to-wasm. The Python side
(L{wasmgate.wasm.abi_extism}) handles only what needs the host: input and
output as whole blocks, config, vars, logging.

The semantics follow Extism's reference kernel (blocks, offset 0 as
"none", C{length} 0 for what is no live block, C{free} of the input
clearing its length, C{alloc(0)} = 0, bounds-checked loads and stores that
read 0 / do nothing out of range) with our own layout and allocator: a
bump allocator with first-fit reuse of freed blocks, reset before every
call.

Layout (all integers little-endian):

  - 0..7: never a block (offset 0 means "none").
  - L{OUTPUT_OFFSET}, L{OUTPUT_LENGTH}, L{ERROR_OFFSET}: i64 slots the host
    reads after a call (what C{output_set} / C{error_set} recorded).
  - L{LIMIT}: i64 the host writes before each call: the size in bytes this
    memory may grow to (the plugin's memory cap less its own memory).
  - from L{FIRST_BLOCK}: blocks, each a 16-byte header (i32 status 1 live /
    2 freed, i32 capacity, i64 length) and its data, 8-byte aligned.

C{wasmgate_begin(n)} is the host's entry: reset, then a block of C{n}
bytes made the input (its offset returned, 0 when out of memory).
"""
from __future__ import annotations

import functools

import wasmtime

OUTPUT_OFFSET = 8
OUTPUT_LENGTH = 16
ERROR_OFFSET = 24
LIMIT = 32
FIRST_BLOCK = 128
BLOCK_HEADER = 16

EXTISM_NAMES = (
    "alloc",
    "free",
    "length",
    "length_unsafe",
    "load_u8",
    "load_u64",
    "store_u8",
    "store_u64",
    "input_length",
    "input_offset",
    "input_load_u8",
    "input_load_u64",
    "input_set",
    "output_set",
    "error_set",
    "error_get",
    "reset",
    "memory_bytes",
)
"""The C{extism:host/env} functions the kernel provides (the rest are the host's)."""

KERNEL_WAT = r"""
(module
  (memory (export "memory") 1)
  (global $top (mut i32) (i32.const 128))
  (global $freed (mut i32) (i32.const 0))
  (global $in_off (mut i32) (i32.const 0))
  (global $in_len (mut i64) (i64.const 0))

  (func $mem_bytes (result i64)
    (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))

  ;; The header address of the live block whose data starts at $p, or 0.
  (func $block (param $p i64) (result i32)
    (local $h i32)
    (if (i64.lt_u (local.get $p) (i64.const 144)) (then (return (i32.const 0))))
    (if (i64.ge_u (local.get $p) (i64.extend_i32_u (global.get $top))) (then (return (i32.const 0))))
    (if (i32.wrap_i64 (i64.and (local.get $p) (i64.const 7))) (then (return (i32.const 0))))
    (local.set $h (i32.sub (i32.wrap_i64 (local.get $p)) (i32.const 16)))
    (if (i32.ne (i32.load (local.get $h)) (i32.const 1)) (then (return (i32.const 0))))
    (if (i64.gt_u
          (i64.add (local.get $p) (i64.extend_i32_u (i32.load offset=4 (local.get $h))))
          (i64.extend_i32_u (global.get $top)))
      (then (return (i32.const 0))))
    (local.get $h))

  (func $alloc (export "alloc") (param $n i64) (result i64)
    (local $cap i32) (local $h i32) (local $end i64) (local $have i64)
    (if (i64.eqz (local.get $n)) (then (return (i64.const 0))))
    (if (i64.gt_u (local.get $n) (i64.const 0x7fff0000)) (then (return (i64.const 0))))
    (local.set $cap (i32.and (i32.add (i32.wrap_i64 (local.get $n)) (i32.const 7)) (i32.const -8)))
    ;; First fit among freed blocks (only when some are).
    (if (global.get $freed) (then
      (local.set $h (i32.const 128))
      (block $done (loop $scan
        (br_if $done (i32.ge_u (local.get $h) (global.get $top)))
        (if (i32.and (i32.eq (i32.load (local.get $h)) (i32.const 2))
                     (i32.ge_u (i32.load offset=4 (local.get $h)) (local.get $cap)))
          (then
            (i32.store (local.get $h) (i32.const 1))
            (i64.store offset=8 (local.get $h) (local.get $n))
            (global.set $freed (i32.sub (global.get $freed) (i32.const 1)))
            (return (i64.extend_i32_u (i32.add (local.get $h) (i32.const 16))))))
        (local.set $h (i32.add (local.get $h) (i32.add (i32.const 16) (i32.load offset=4 (local.get $h)))))
        (br $scan)))))
    (local.set $h (global.get $top))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $h))
                             (i64.extend_i32_u (i32.add (local.get $cap) (i32.const 16)))))
    (local.set $have (call $mem_bytes))
    (if (i64.gt_u (local.get $end) (local.get $have)) (then
      (if (i64.gt_u (local.get $end) (i64.load (i32.const 32))) (then (return (i64.const 0))))
      (if (i32.eq
            (memory.grow (i32.wrap_i64 (i64.shr_u (i64.add (i64.sub (local.get $end) (local.get $have))
                                                          (i64.const 65535))
                                                 (i64.const 16))))
            (i32.const -1))
        (then (return (i64.const 0))))))
    (i32.store (local.get $h) (i32.const 1))
    (i32.store offset=4 (local.get $h) (local.get $cap))
    (i64.store offset=8 (local.get $h) (local.get $n))
    (global.set $top (i32.wrap_i64 (local.get $end)))
    (i64.extend_i32_u (i32.add (local.get $h) (i32.const 16))))

  (func (export "free") (param $p i64)
    (local $h i32)
    (local.set $h (call $block (local.get $p)))
    (if (i32.eqz (local.get $h)) (then (return)))
    (i32.store (local.get $h) (i32.const 2))
    (global.set $freed (i32.add (global.get $freed) (i32.const 1)))
    (if (i64.eq (local.get $p) (i64.extend_i32_u (global.get $in_off)))
      (then (global.set $in_len (i64.const 0)))))

  (func $length (export "length") (param $p i64) (result i64)
    (local $h i32)
    (local.set $h (call $block (local.get $p)))
    (if (result i64) (local.get $h)
      (then (i64.load offset=8 (local.get $h)))
      (else (i64.const 0))))

  (func (export "length_unsafe") (param $p i64) (result i64)
    (call $length (local.get $p)))

  (func (export "load_u8") (param $p i64) (result i32)
    (if (result i32) (i64.lt_u (local.get $p) (call $mem_bytes))
      (then (i32.load8_u (i32.wrap_i64 (local.get $p))))
      (else (i32.const 0))))

  (func (export "load_u64") (param $p i64) (result i64)
    (if (result i64) (i64.le_u (i64.add (local.get $p) (i64.const 8)) (call $mem_bytes))
      (then (i64.load (i32.wrap_i64 (local.get $p))))
      (else (i64.const 0))))

  (func (export "store_u8") (param $p i64) (param $v i32)
    (if (i32.and (i64.ge_u (local.get $p) (i64.const 128))
                 (i64.lt_u (local.get $p) (call $mem_bytes)))
      (then (i32.store8 (i32.wrap_i64 (local.get $p)) (local.get $v)))))

  (func (export "store_u64") (param $p i64) (param $v i64)
    (if (i32.and (i64.ge_u (local.get $p) (i64.const 128))
                 (i64.le_u (i64.add (local.get $p) (i64.const 8)) (call $mem_bytes)))
      (then (i64.store (i32.wrap_i64 (local.get $p)) (local.get $v)))))

  (func (export "input_length") (result i64) (global.get $in_len))
  (func (export "input_offset") (result i64) (i64.extend_i32_u (global.get $in_off)))

  (func (export "input_load_u8") (param $o i64) (result i32)
    (if (result i32) (i64.lt_u (local.get $o) (global.get $in_len))
      (then (i32.load8_u (i32.add (global.get $in_off) (i32.wrap_i64 (local.get $o)))))
      (else (i32.const 0))))

  (func (export "input_load_u64") (param $o i64) (result i64)
    (if (result i64) (i32.and (i64.ge_u (global.get $in_len) (i64.const 8))
                              (i64.le_u (local.get $o) (i64.sub (global.get $in_len) (i64.const 8))))
      (then (i64.load (i32.add (global.get $in_off) (i32.wrap_i64 (local.get $o)))))
      (else (i64.const 0))))

  (func (export "input_set") (param $p i64) (param $n i64)
    (if (i32.eqz (call $block (local.get $p))) (then (return)))
    (global.set $in_off (i32.wrap_i64 (local.get $p)))
    (global.set $in_len (local.get $n)))

  (func (export "output_set") (param $p i64) (param $n i64)
    (i64.store (i32.const 8) (local.get $p))
    (i64.store (i32.const 16) (local.get $n)))

  (func (export "error_set") (param $p i64)
    (i64.store (i32.const 24) (local.get $p)))

  (func (export "error_get") (result i64) (i64.load (i32.const 24)))

  (func $reset (export "reset")
    (global.set $top (i32.const 128))
    (global.set $freed (i32.const 0))
    (global.set $in_off (i32.const 0))
    (global.set $in_len (i64.const 0))
    (i64.store (i32.const 8) (i64.const 0))
    (i64.store (i32.const 16) (i64.const 0))
    (i64.store (i32.const 24) (i64.const 0)))

  (func (export "memory_bytes") (result i64) (i64.extend_i32_u (global.get $top)))

  (func (export "wasmgate_begin") (param $n i64) (result i64)
    (local $p i64)
    (call $reset)
    (if (i64.eqz (local.get $n)) (then (return (i64.const 0))))
    (local.set $p (call $alloc (local.get $n)))
    (if (i64.eqz (local.get $p)) (then (return (i64.const 0))))
    (global.set $in_off (i32.wrap_i64 (local.get $p)))
    (global.set $in_len (local.get $n))
    (local.get $p))
)
"""


@functools.lru_cache(maxsize=1)
def kernel_wasm() -> bytes:
    """The kernel as wasm bytes (compiled from L{KERNEL_WAT} once per process)."""
    return bytes(wasmtime.wat2wasm(KERNEL_WAT))
