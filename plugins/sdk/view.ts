// test-case-name: tests.test_bundled_filters_unit
//
// Reading JSON in place: the input stays UTF-8 bytes in the input buffer,
// one pass checks it is valid JSON, and only the members a filter asks for
// are found (by scanning) and decoded. A request payload is a few hundred
// bytes of which a filter needs a field or two, so this is much cheaper than
// decoding it all to UTF-16 and building a `Json` tree of it.
//
// Positions are addresses in linear memory: a value is the bytes
// [start, end); 0 means "absent" (the input buffer never lives at 0).

import { Json, JsonParser } from "./json";

/** Nesting deeper than this is refused, as `JsonParser` refuses it. */
const MAX_DEPTH = 64;

const QUOTE: u8 = 0x22;
const BACKSLASH: u8 = 0x5c;

@inline function isWs(c: u32): bool {
  return c == 0x20 || c == 0x0a || c == 0x0d || c == 0x09;
}

@inline function isDigit(c: u32): bool {
  return c - 0x30 < 10;
}

function isHex(c: u32): bool {
  return c - 0x30 < 10 || (c | 0x20) - 0x61 < 6;
}

/** The first position at or after `p` that is not JSON whitespace. */
export function skipWs(p: usize, end: usize): usize {
  while (p < end && isWs(load<u8>(p))) p++;
  return p;
}

/**
 * The end of the string literal whose opening quote is at `p`, or 0 when it
 * is not a valid one (control character, bad escape, unterminated).
 */
export function skipString(p: usize, end: usize): usize {
  p++;
  while (p < end) {
    const c = <u32>load<u8>(p);
    if (c == QUOTE) return p + 1;
    if (c < 0x20) return 0;
    if (c != BACKSLASH) {
      p++;
      continue;
    }
    if (p + 1 >= end) return 0;
    const e = <u32>load<u8>(p + 1);
    if (e == 0x75) {
      // \uXXXX
      if (p + 6 > end) return 0;
      for (let k: usize = 2; k < 6; k++) {
        if (!isHex(load<u8>(p + k))) return 0;
      }
      p += 6;
    } else if (
      e == QUOTE || e == BACKSLASH || e == 0x2f || e == 0x62 ||
      e == 0x66 || e == 0x6e || e == 0x72 || e == 0x74
    ) {
      p += 2;
    } else {
      return 0;
    }
  }
  return 0;
}

function skipNumber(p: usize, end: usize): usize {
  if (p < end && load<u8>(p) == 0x2d) p++;
  const intStart = p;
  while (p < end && isDigit(load<u8>(p))) p++;
  if (p == intStart) return 0;
  if (p - intStart > 1 && load<u8>(intStart) == 0x30) return 0; // leading zero
  if (p < end && load<u8>(p) == 0x2e) {
    const f = ++p;
    while (p < end && isDigit(load<u8>(p))) p++;
    if (p == f) return 0;
  }
  if (p < end && (load<u8>(p) | 0x20) == 0x65) {
    p++;
    if (p < end && (load<u8>(p) == 0x2b || load<u8>(p) == 0x2d)) p++;
    const e = p;
    while (p < end && isDigit(load<u8>(p))) p++;
    if (p == e) return 0;
  }
  return p;
}

function skipLiteral(p: usize, end: usize, word: string): usize {
  const n = <usize>word.length;
  if (p + n > end) return 0;
  const chars = changetype<usize>(word);
  for (let i: usize = 0; i < n; i++) {
    if (<u32>load<u8>(p + i) != <u32>load<u16>(chars + (i << 1))) return 0;
  }
  return p + n;
}

/**
 * The end of the JSON value starting at `p` (no leading whitespace), or 0
 * when it is not valid JSON. The rules are `JsonParser`'s.
 */
export function skipValue(p: usize, end: usize, depth: i32 = 0): usize {
  if (depth > MAX_DEPTH || p >= end) return 0;
  const c = <u32>load<u8>(p);
  if (c == QUOTE) return skipString(p, end);
  if (c == 0x7b || c == 0x5b) {
    const close: u32 = c + 2; // '}' or ']'
    const isObject = c == 0x7b;
    p = skipWs(p + 1, end);
    if (p < end && <u32>load<u8>(p) == close) return p + 1;
    while (true) {
      if (isObject) {
        if (p >= end || load<u8>(p) != QUOTE) return 0;
        p = skipString(p, end);
        if (p == 0) return 0;
        p = skipWs(p, end);
        if (p >= end || load<u8>(p) != 0x3a) return 0;
        p = skipWs(p + 1, end);
      }
      p = skipValue(p, end, depth + 1);
      if (p == 0) return 0;
      p = skipWs(p, end);
      if (p >= end) return 0;
      const d = <u32>load<u8>(p);
      if (d == close) return p + 1;
      if (d != 0x2c) return 0;
      p = skipWs(p + 1, end);
    }
  }
  if (c == 0x74) return skipLiteral(p, end, "true");
  if (c == 0x66) return skipLiteral(p, end, "false");
  if (c == 0x6e) return skipLiteral(p, end, "null");
  if (c == 0x2d || isDigit(c)) return skipNumber(p, end);
  return 0;
}

/** Whether the `len` bytes at `ptr` are exactly one JSON value (with whitespace around). */
export function isValidJson(ptr: usize, len: i32): bool {
  const end = ptr + <usize>len;
  const p = skipValue(skipWs(ptr, end), end);
  return p != 0 && skipWs(p, end) == end;
}

/** The reason `JsonParser` gives for the input at `ptr` not being JSON. */
export function jsonError(ptr: usize, len: i32): string {
  const p = new JsonParser(String.UTF8.decodeUnsafe(ptr, <usize>len));
  p.parse();
  return p.error.length > 0 ? p.error : "invalid JSON";
}

/** The value at [start, end) as a `Json` tree (it must be valid JSON). */
export function parseAt(start: usize, end: usize): Json {
  const v = new JsonParser(String.UTF8.decodeUnsafe(start, end - start)).parse();
  if (v === null) throw new Error("invalid JSON value");
  return v;
}

/** Whether the value at `start` is a string literal. */
@inline export function isStringAt(start: usize): bool {
  return start != 0 && load<u8>(start) == QUOTE;
}

/** Whether the value at `start` is an object. */
@inline export function isObjectAt(start: usize): bool {
  return start != 0 && load<u8>(start) == 0x7b;
}

/** Whether the value at `start` is an array. */
@inline export function isArrayAt(start: usize): bool {
  return start != 0 && load<u8>(start) == 0x5b;
}

/** Whether the string literal at [start, end) has no escapes (its text is its bytes). */
function isPlainString(start: usize, end: usize): bool {
  for (let p = start + 1; p < end - 1; p++) {
    if (load<u8>(p) == BACKSLASH) return false;
  }
  return true;
}

/** The text of the (valid) string literal at [start, end). */
export function stringAt(start: usize, end: usize): string {
  if (isPlainString(start, end)) return String.UTF8.decodeUnsafe(start + 1, end - start - 2);
  return parseAt(start, end).s;
}

/** Whether the `n` bytes at `p` are ASCII without a backslash (a literal that is its own text). */
function isPlainAscii(p: usize, n: i32): bool {
  for (let i = 0; i < n; i++) {
    const c = <u32>load<u8>(p + <usize>i);
    if (c == BACKSLASH || c >= 0x80) return false;
  }
  return true;
}

/** Whether the bytes at `p` are the (ASCII) characters of `s`. */
function bytesEqualAscii(p: usize, s: string): bool {
  const chars = changetype<usize>(s);
  for (let i = 0, n = s.length; i < n; i++) {
    if (<u32>load<u8>(p + <usize>i) != <u32>load<u16>(chars + (<usize>i << 1))) return false;
  }
  return true;
}

/**
 * Whether the (valid) string literal at [start, end) is `s`, without
 * decoding it when it is plain ASCII (the usual case for keys).
 */
export function stringAtEquals(start: usize, end: usize, s: string): bool {
  const n = <i32>(end - start) - 2;
  // Escapes and multi-byte UTF-8 only ever make a literal longer than its text.
  if (n < s.length) return false;
  if (!isPlainAscii(start + 1, n)) return stringAt(start, end) == s;
  return n == s.length && bytesEqualAscii(start + 1, s);
}

/**
 * Walks the members of a JSON object in place, checking their syntax:
 *
 *     const m = new Members(start, end);
 *     while (m.next()) if (m.keyIs("route")) ... m.valueStart, m.valueEnd
 *
 * After the last member `closedAt` is just past the object's `}`, or 0 when
 * the object turned out not to be valid JSON.
 */
export class Members {
  keyStart: usize = 0;
  keyEnd: usize = 0;
  valueStart: usize = 0;
  valueEnd: usize = 0;
  closedAt: usize = 0;
  private pos: usize;
  private end: usize;

  /** `start` is the object's `{`; `end` bounds the input (the object's end or beyond). */
  constructor(start: usize, end: usize) {
    this.end = end;
    this.pos = 0;
    this.reset(start, end);
  }

  /** Start over on the object at `start` (so one walker can serve many lookups). */
  reset(start: usize, end: usize): Members {
    this.end = end;
    this.pos = 0;
    this.closedAt = 0;
    if (start != 0 && start < end && load<u8>(start) == 0x7b) {
      const p = skipWs(start + 1, end);
      if (p < end && load<u8>(p) == 0x7d) this.closedAt = p + 1;
      else this.pos = p;
    }
    return this;
  }

  /** Move to the next member; false after the last one (or at a syntax error). */
  next(): bool {
    const end = this.end;
    let p = this.pos;
    this.pos = 0;
    if (p == 0 || p >= end || load<u8>(p) != QUOTE) return false;
    this.keyStart = p;
    p = skipString(p, end);
    if (p == 0) return false;
    this.keyEnd = p;
    p = skipWs(p, end);
    if (p >= end || load<u8>(p) != 0x3a) return false;
    p = skipWs(p + 1, end);
    this.valueStart = p;
    p = skipValue(p, end, 1);
    if (p == 0) return false;
    this.valueEnd = p;
    p = skipWs(p, end);
    if (p < end) {
      const c = load<u8>(p);
      if (c == 0x2c) this.pos = skipWs(p + 1, end);
      else if (c == 0x7d) this.closedAt = p + 1;
    }
    return true;
  }

  keyIs(key: string): bool {
    return stringAtEquals(this.keyStart, this.keyEnd, key);
  }

  /** Index of this member's key in `keys`, or -1. */
  keyIn(keys: StaticArray<string>): i32 {
    const start = this.keyStart;
    const end = this.keyEnd;
    const n = <i32>(end - start) - 2;
    if (!isPlainAscii(start + 1, n)) {
      const text = stringAt(start, end);
      for (let i = 0, k = keys.length; i < k; i++) {
        if (unchecked(keys[i]) == text) return i;
      }
      return -1;
    }
    for (let i = 0, k = keys.length; i < k; i++) {
      const key = unchecked(keys[i]);
      if (key.length == n && bytesEqualAscii(start + 1, key)) return i;
    }
    return -1;
  }
}

// findMember's walker, reused: lookups are frequent and never nested.
const lookup = new Members(0, 0);

/**
 * Where member `key`'s value starts in the object at `objStart` (0 when the
 * member is absent or that is not an object). The last occurrence of a
 * repeated key wins, as in `JsonParser`.
 */
export function findMember(objStart: usize, end: usize, key: string): usize {
  let found: usize = 0;
  const m = lookup.reset(objStart, end);
  while (m.next()) {
    if (m.keyIs(key)) found = m.valueStart;
  }
  return found;
}

/** The end of the (valid) value at `start`. */
@inline export function valueEnd(start: usize, end: usize): usize {
  return skipValue(start, end, 1);
}

/**
 * One value of the input, read in place: `start` is 0 when it is absent.
 * Nothing is decoded until asked for.
 */
export class Span {
  start: usize;
  end: usize;

  constructor(start: usize = 0, end: usize = 0) {
    this.start = start;
    this.end = start != 0 ? end : 0;
  }

  /** Member `key` of the object at [objStart, objEnd); absent if there is none. */
  static member(objStart: usize, objEnd: usize, key: string): Span {
    const v = findMember(objStart, objEnd, key);
    return v != 0 ? new Span(v, valueEnd(v, objEnd)) : new Span();
  }

  /** Member `key` of this object; absent if there is none or this is not an object. */
  member(key: string): Span {
    return Span.member(this.start, this.end, key);
  }

  get present(): bool { return this.start != 0; }
  get isString(): bool { return isStringAt(this.start); }
  get isObject(): bool { return isObjectAt(this.start); }
  get isArray(): bool { return isArrayAt(this.start); }
  get isNumber(): bool {
    if (this.start == 0) return false;
    const c = <u32>load<u8>(this.start);
    return c == 0x2d || isDigit(c);
  }

  /** The string, or null when absent or not a string. */
  string(): string | null {
    return this.isString ? stringAt(this.start, this.end) : null;
  }

  /** The value as a `Json` tree, or null when absent. */
  json(): Json | null {
    return this.start != 0 ? parseAt(this.start, this.end) : null;
  }

  /** The value's JSON text as sent (e.g. a cache key for a parsed config), or null. */
  text(): string | null {
    return this.start != 0 ? String.UTF8.decodeUnsafe(this.start, this.end - this.start) : null;
  }
}
