// test-case-name: tests.test_bundled_filters_unit
//
// The host functions of module "wasmgate" (the only imports a filter may
// have), wrapped so filters pass strings instead of pointers. An import is
// only emitted when a filter actually uses it.

import { ByteBuilder } from "./bytes";

@external("wasmgate", "now_ms")
declare function _now_ms(): i64;

@external("wasmgate", "log")
declare function _log(level: i32, ptr: usize, len: i32): void;

@external("wasmgate", "counter_incr")
declare function _counter_incr(keyPtr: usize, keyLen: i32, delta: i64, ttlMs: i64): i64;

@external("wasmgate", "counter_get")
declare function _counter_get(keyPtr: usize, keyLen: i32): i64;

export const LOG_DEBUG: i32 = 0;
export const LOG_INFO: i32 = 1;
export const LOG_WARN: i32 = 2;
export const LOG_ERROR: i32 = 3;

/** Milliseconds since the Unix epoch, from the host's clock. */
export function nowMs(): i64 {
  return _now_ms();
}

/** Log `message` through the gateway's log at `level` (LOG_*). */
export function log(level: i32, message: string): void {
  const buf = String.UTF8.encode(message);
  _log(level, changetype<usize>(buf), buf.byteLength);
}

export function logDebug(message: string): void { log(LOG_DEBUG, message); }
export function logInfo(message: string): void { log(LOG_INFO, message); }
export function logWarn(message: string): void { log(LOG_WARN, message); }
export function logError(message: string): void { log(LOG_ERROR, message); }

/**
 * Atomically add `delta` to the shared counter `key` and return the new
 * value. `ttlMs` is applied when the key is created. The host namespaces
 * keys per plugin, and traps the guest if its state store is unreachable.
 */
export function counterIncr(key: string, delta: i64, ttlMs: i64): i64 {
  const buf = String.UTF8.encode(key);
  return _counter_incr(changetype<usize>(buf), buf.byteLength, delta, ttlMs);
}

/** The shared counter `key`, 0 when absent or expired. */
export function counterGet(key: string): i64 {
  const buf = String.UTF8.encode(key);
  return _counter_get(changetype<usize>(buf), buf.byteLength);
}

/** `counterIncr` with the key's UTF-8 bytes in `key` (built without allocating). */
export function counterIncrBytes(key: ByteBuilder, delta: i64, ttlMs: i64): i64 {
  return _counter_incr(key.dataStart, key.length, delta, ttlMs);
}

/** `counterGet` with the key's UTF-8 bytes in `key`. */
export function counterGetBytes(key: ByteBuilder): i64 {
  return _counter_get(key.dataStart, key.length);
}
