// test-case-name: tests.test_bundled_filters_unit
//
// JSON bodies. Every string, keys included, is decoded (`\u0040`, `\"`,
// `\/`, surrogate pairs) before the detectors see it, and written back
// escaped only when something in it was masked; a number that is a card
// becomes the string "[REDACTED_CARD]" and one a pattern matches becomes a
// string of its masked text, so the document stays valid JSON. Everything
// else is copied byte-for-byte.
//
// The body must be valid JSON (RFC 8259; a leading UTF-8 BOM and the NaN,
// Infinity, -Infinity that Python writes are allowed): for anything else we
// cannot know how the reader at the other end decodes it (`\x40`,
// single-quoted strings), so the caller is told and refuses it.

import { ByteBuilder } from "../sdk";
import { CARD_DIGITS, Detectors, MAY_CARD, MAY_EMAIL } from "./detect";
import { Rewriter } from "./rewriter";
import { CARD_MASK, isCardNumber, isDigit } from "./scan";

const JSON_CARD_MASK = "\"" + CARD_MASK + "\"";
const HEX = "0123456789abcdef";

// What the walker expects next.
const VALUE: i32 = 0; // top level, after ':', after ',' in an array
const VALUE_OR_CLOSE: i32 = 1; // after '['
const KEY: i32 = 2; // after ',' in an object
const KEY_OR_CLOSE: i32 = 3; // after '{'
const COLON: i32 = 4;
const COMMA_OR_CLOSE: i32 = 5;
const END: i32 = 6; // after the top-level value

// Scratch reused by every call; dropped after a body that grew it past KEEP.
const KEEP: i32 = 64 * 1024;
const rw = new Rewriter();
let decoded = new Uint8Array(256);
let open = new Uint8Array(64); // the '{' or '[' open at each depth

export class JsonRedaction {
  /** False when the body is not valid JSON (then `body` is null). */
  valid: bool = true;
  /** The rewritten body, or null when nothing was masked. */
  body: Uint8Array | null = null;
}

export function redactJson(b: Uint8Array, det: Detectors): JsonRedaction {
  const r = new JsonRedaction();
  rw.begin(b, 0, b.length);
  r.valid = walk(b, det);
  const out = rw.finish();
  if (r.valid) r.body = out;
  if (decoded.length > KEEP) decoded = new Uint8Array(256);
  if (open.length > KEEP) open = new Uint8Array(64);
  return r;
}

@inline function isSpace(c: u8): bool {
  return c == 0x20 || c == 0x0a || c == 0x0d || c == 0x09;
}

/** Check `b` and rewrite it into `rw`; false when it is not valid JSON. */
function walk(b: Uint8Array, det: Detectors): bool {
  const n = b.length;
  let depth = 0;
  let expect = VALUE;
  let i = n >= 3 && b[0] == 0xef && b[1] == 0xbb && b[2] == 0xbf ? 3 : 0;
  while (true) {
    while (i < n && isSpace(unchecked(b[i]))) i++;
    if (i >= n) return expect == END;
    const c = unchecked(b[i]);
    const valueHere = expect == VALUE || expect == VALUE_OR_CLOSE;
    if (c == 0x22) {
      if (expect == KEY || expect == KEY_OR_CLOSE) {
        expect = COLON;
      } else if (valueHere) {
        expect = depth == 0 ? END : COMMA_OR_CLOSE;
      } else {
        return false;
      }
      i = redactString(b, i, det);
      if (i < 0) return false;
    } else if (c == 0x7b || c == 0x5b) {
      if (!valueHere) return false;
      if (depth == open.length) {
        const grown = new Uint8Array(depth * 2);
        grown.set(open);
        open = grown;
      }
      open[depth++] = c;
      expect = c == 0x7b ? KEY_OR_CLOSE : VALUE_OR_CLOSE;
      i++;
    } else if (c == 0x7d || c == 0x5d) {
      const opener: u8 = c == 0x7d ? 0x7b : 0x5b;
      const empty = c == 0x7d ? KEY_OR_CLOSE : VALUE_OR_CLOSE;
      if ((expect != COMMA_OR_CLOSE && expect != empty) || depth == 0 || open[depth - 1] != opener) return false;
      depth--;
      expect = depth == 0 ? END : COMMA_OR_CLOSE;
      i++;
    } else if (c == 0x2c) {
      if (expect != COMMA_OR_CLOSE) return false;
      expect = open[depth - 1] == 0x7b ? KEY : VALUE;
      i++;
    } else if (c == 0x3a) {
      if (expect != COLON) return false;
      expect = VALUE;
      i++;
    } else {
      if (!valueHere) return false;
      i = c == 0x2d || isDigit(c) ? redactNumber(b, i, det) : literalEnd(b, i);
      if (i < 0) return false;
      expect = depth == 0 ? END : COMMA_OR_CLOSE;
    }
  }
}

/** Whether b[i:] starts with `word` (ASCII). */
function startsWith(b: Uint8Array, i: i32, word: string): bool {
  if (i + word.length > b.length) return false;
  for (let k = 0; k < word.length; k++) if (<i32>b[i + k] != word.charCodeAt(k)) return false;
  return true;
}

/** End of the literal at `i` (true, false, null, NaN, Infinity), or -1. */
function literalEnd(b: Uint8Array, i: i32): i32 {
  const c = b[i];
  let word = "";
  if (c == 0x74) word = "true";
  else if (c == 0x66) word = "false";
  else if (c == 0x6e) word = "null";
  else if (c == 0x4e) word = "NaN";
  else if (c == 0x49) word = "Infinity";
  else return -1;
  return startsWith(b, i, word) ? i + word.length : -1;
}

/**
 * The number at `i` (a digit or '-'), masked when it is a card or a pattern
 * matches it; returns where it ends, or -1 when it is no JSON number.
 */
function redactNumber(b: Uint8Array, i: i32, det: Detectors): i32 {
  const n = b.length;
  let p = i;
  if (b[p] == 0x2d) {
    p++;
    if (p < n && b[p] == 0x49) return literalEnd(b, p); // -Infinity
  }
  if (p >= n || !isDigit(b[p])) return -1;
  const ds = p;
  if (b[p] == 0x30) {
    p++;
  } else {
    while (p < n && isDigit(b[p])) p++;
  }
  const de = p;
  let integer = true;
  if (p < n && b[p] == 0x2e) {
    p++;
    if (p >= n || !isDigit(b[p])) return -1;
    while (p < n && isDigit(b[p])) p++;
    integer = false;
  }
  if (p < n && (b[p] | 0x20) == 0x65) {
    p++;
    if (p < n && (b[p] == 0x2b || b[p] == 0x2d)) p++;
    if (p >= n || !isDigit(b[p])) return -1;
    while (p < n && isDigit(b[p])) p++;
    integer = false;
  }
  // A card is an integer; the whole token, sign included, becomes a string.
  if (det.cards && integer && isCardNumber(b, ds, de)) {
    rw.replace(i, p, JSON_CARD_MASK);
    return p;
  }
  if (det.patterns.length > 0) {
    const red = det.redactPatterns(b, i, p);
    if (red !== null) writeString(rw.splice(i, p), red);
  }
  return p;
}

@inline function hexDigit(c: u8): i32 {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20;
  if (l >= 0x61 && l <= 0x66) return l - 0x61 + 10;
  return -1;
}

/** The four hex digits at b[p:p+4] as a number, or -1. */
function hex4At(b: Uint8Array, p: i32): i32 {
  if (p + 4 > b.length) return -1;
  let v = 0;
  for (let k = 0; k < 4; k++) {
    const d = hexDigit(b[p + k]);
    if (d < 0) return -1;
    v = (v << 4) | d;
  }
  return v;
}

/**
 * The string whose opening quote is at `q`: checked, decoded when it has
 * escapes, scanned, and written back escaped when something was masked.
 * Returns the index after its closing quote, or -1 when it is no JSON string.
 */
function redactString(b: Uint8Array, q: i32, det: Detectors): i32 {
  const n = b.length;
  let p = q + 1;
  let escaped = false;
  let at = false;
  let digits = 0;
  while (true) {
    if (p >= n) return -1;
    const c = unchecked(b[p]);
    if (c == 0x22) break;
    if (c < 0x20) return -1;
    if (c != 0x5c) {
      if (c == 0x40) at = true;
      else if (isDigit(c)) digits++;
      p++;
      continue;
    }
    if (p + 1 >= n) return -1;
    const e = b[p + 1];
    if (e == 0x75) {
      if (hex4At(b, p + 2) < 0) return -1;
      p += 6;
    } else if (e == 0x22 || e == 0x5c || e == 0x2f || e == 0x62 || e == 0x66 || e == 0x6e || e == 0x72 || e == 0x74) {
      p += 2;
    } else {
      return -1;
    }
    escaped = true;
  }
  let red: Uint8Array | null;
  if (escaped) {
    // An escape may stand for an '@' or a digit: no hints.
    red = det.redact(decoded, 0, decodeString(b, q + 1, p));
  } else {
    const may = (at ? MAY_EMAIL : 0) | (digits >= CARD_DIGITS ? MAY_CARD : 0);
    red = may != 0 || det.patterns.length > 0 ? det.redact(b, q + 1, p, may) : null;
  }
  if (red !== null) writeString(rw.splice(q, p + 1), red);
  return p + 1;
}

/** Write code point `cp` as UTF-8 at out[o:]; a lone surrogate as its 3 bytes. Returns the new end. */
function putUtf8(out: Uint8Array, o: i32, cp: i32): i32 {
  if (cp < 0x80) {
    out[o] = <u8>cp;
    return o + 1;
  }
  if (cp < 0x800) {
    out[o] = <u8>(0xc0 | (cp >> 6));
    out[o + 1] = <u8>(0x80 | (cp & 0x3f));
    return o + 2;
  }
  if (cp < 0x10000) {
    out[o] = <u8>(0xe0 | (cp >> 12));
    out[o + 1] = <u8>(0x80 | ((cp >> 6) & 0x3f));
    out[o + 2] = <u8>(0x80 | (cp & 0x3f));
    return o + 3;
  }
  out[o] = <u8>(0xf0 | (cp >> 18));
  out[o + 1] = <u8>(0x80 | ((cp >> 12) & 0x3f));
  out[o + 2] = <u8>(0x80 | ((cp >> 6) & 0x3f));
  out[o + 3] = <u8>(0x80 | (cp & 0x3f));
  return o + 4;
}

/** Decode the (checked) string content b[s:e] into `decoded`; returns its length. */
function decodeString(b: Uint8Array, s: i32, e: i32): i32 {
  if (decoded.length < e - s) decoded = new Uint8Array(max(e - s, decoded.length * 2));
  const out = decoded;
  let o = 0;
  let p = s;
  while (p < e) {
    const c = b[p];
    if (c != 0x5c) {
      out[o++] = c;
      p++;
      continue;
    }
    const x = b[p + 1];
    if (x != 0x75) {
      let v: u8 = x; // \" \\ \/
      if (x == 0x62) v = 0x08;
      else if (x == 0x66) v = 0x0c;
      else if (x == 0x6e) v = 0x0a;
      else if (x == 0x72) v = 0x0d;
      else if (x == 0x74) v = 0x09;
      out[o++] = v;
      p += 2;
      continue;
    }
    let cp = hex4At(b, p + 2);
    p += 6;
    if (cp >= 0xd800 && cp <= 0xdbff && p + 6 <= e && b[p] == 0x5c && b[p + 1] == 0x75) {
      const lo = hex4At(b, p + 2);
      if (lo >= 0xdc00 && lo <= 0xdfff) {
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        p += 6;
      }
    }
    o = putUtf8(out, o, cp);
  }
  return o;
}

function unicodeEscape(cp: i32): string {
  return "\\u" + HEX.charAt((cp >> 12) & 0xf) + HEX.charAt((cp >> 8) & 0xf) +
    HEX.charAt((cp >> 4) & 0xf) + HEX.charAt(cp & 0xf);
}

/**
 * Append `s` as a JSON string: `"` `\` and control characters escaped, a
 * lone surrogate (as decodeString wrote it) back as `\uXXXX`, everything
 * else as is.
 */
function writeString(out: ByteBuilder, s: Uint8Array): void {
  out.appendString("\"");
  const n = s.length;
  let run = 0;
  for (let i = 0; i < n; i++) {
    const c = s[i];
    let esc: string;
    let width = 1;
    if (c == 0x22) esc = "\\\"";
    else if (c == 0x5c) esc = "\\\\";
    else if (c == 0x0a) esc = "\\n";
    else if (c == 0x0d) esc = "\\r";
    else if (c == 0x09) esc = "\\t";
    else if (c < 0x20) esc = unicodeEscape(c);
    else if (c == 0xed && i + 2 < n && s[i + 1] >= 0xa0 && s[i + 1] <= 0xbf) {
      esc = unicodeEscape(0xd000 | ((<i32>s[i + 1] & 0x3f) << 6) | (<i32>s[i + 2] & 0x3f));
      width = 3;
    } else continue;
    out.appendSlice(s, run, i);
    out.appendString(esc);
    run = i + width;
    i = run - 1;
  }
  out.appendSlice(s, run, n);
  out.appendString("\"");
}
