// test-case-name: tests.test_bundled_filters_unit
//
// application/x-www-form-urlencoded bodies. Each name and value is decoded
// (`%XX`, and `+` for a space) before the detectors see it, so
// `alice%40example.com` and `4111+1111+1111+1111` are found; a field in
// which something was masked is encoded again, the rest of the body is
// copied byte-for-byte. A `%` not followed by two hex digits stays a `%`,
// as the WHATWG URL standard decodes it.

import { ByteBuilder } from "../sdk";
import { CARD_DIGITS, Detectors, MAY_CARD, MAY_EMAIL } from "./detect";
import { isDigit } from "./scan";
import { Rewriter } from "./rewriter";

// "%0".."%F" and "+": appended as slices, so encoding allocates nothing.
const HEX = Uint8Array.wrap(String.UTF8.encode("0123456789ABCDEF%+"));
const PERCENT: i32 = 16;
const PLUS: i32 = 17;

// Scratch reused by every call; dropped after a body that grew it past KEEP.
const KEEP: i32 = 64 * 1024;
const rw = new Rewriter();
let decoded = new Uint8Array(256);

/** The body with its fields redacted, or null when nothing was masked. */
export function redactForm(b: Uint8Array, det: Detectors): Uint8Array | null {
  const n = b.length;
  rw.begin(b, 0, n);
  let i = 0;
  while (i < n) {
    let amp = i;
    let eq = -1;
    while (amp < n && unchecked(b[amp]) != 0x26) {
      if (eq < 0 && unchecked(b[amp]) == 0x3d) eq = amp;
      amp++;
    }
    if (eq < 0) {
      redactField(b, i, amp, det);
    } else {
      redactField(b, i, eq, det);
      redactField(b, eq + 1, amp, det);
    }
    i = amp + 1;
  }
  if (decoded.length > KEEP) decoded = new Uint8Array(256);
  return rw.finish();
}

@inline function hexDigit(c: u8): i32 {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20;
  if (l >= 0x61 && l <= 0x66) return l - 0x61 + 10;
  return -1;
}

/** What the detectors may find in b[s:e] (MAY_* of detect.ts). */
function mayHold(b: Uint8Array, s: i32, e: i32): i32 {
  let at = false;
  let digits = 0;
  for (let k = s; k < e; k++) {
    const c = unchecked(b[k]);
    if (c == 0x40) at = true;
    else if (isDigit(c)) digits++;
  }
  return (at ? MAY_EMAIL : 0) | (digits >= CARD_DIGITS ? MAY_CARD : 0);
}

/** One name or value, b[s:e]. */
function redactField(b: Uint8Array, s: i32, e: i32, det: Detectors): void {
  let encoded = false;
  for (let k = s; k < e; k++) {
    const c = unchecked(b[k]);
    if (c == 0x25 || c == 0x2b) {
      encoded = true;
      break;
    }
  }
  let text = b;
  let start = s;
  let end = e;
  if (encoded) {
    text = decoded;
    start = 0;
    end = decodeField(b, s, e);
  }
  const may = mayHold(text, start, end);
  if (may == 0 && det.patterns.length == 0) return;
  const red = det.redact(text, start, end, may);
  if (red !== null) encodeField(rw.splice(s, e), red);
}

/** Percent-decode b[s:e] ('+' is a space) into `decoded`; returns its length. */
function decodeField(b: Uint8Array, s: i32, e: i32): i32 {
  if (decoded.length < e - s) decoded = new Uint8Array(max(e - s, decoded.length * 2));
  const out = decoded;
  // Each step reads at least the byte it writes, so o <= p - s: in bounds.
  let o = 0;
  let p = s;
  while (p < e) {
    const c = unchecked(b[p]);
    let v = c;
    if (c == 0x2b) {
      v = 0x20;
    } else if (c == 0x25 && p + 2 < e) {
      const hi = hexDigit(unchecked(b[p + 1]));
      const lo = hexDigit(unchecked(b[p + 2]));
      if (hi >= 0 && lo >= 0) {
        v = <u8>((hi << 4) | lo);
        p += 2;
      }
    }
    unchecked(out[o++] = v);
    p++;
  }
  return o;
}

/**
 * Whether byte `c` must be percent-encoded in a field: the form's own
 * delimiters (`&` `=` `+` `%`, and `;` which some servers split on), `#`,
 * controls and everything outside ASCII. A space becomes `+`.
 */
@inline function mustEncode(c: u8): bool {
  return c <= 0x20 || c >= 0x7f || c == 0x25 || c == 0x26 || c == 0x2b || c == 0x3d || c == 0x3b || c == 0x23;
}

function encodeField(out: ByteBuilder, s: Uint8Array): void {
  const n = s.length;
  let run = 0;
  for (let i = 0; i < n; i++) {
    const c = s[i];
    if (!mustEncode(c)) continue;
    out.appendSlice(s, run, i);
    if (c == 0x20) {
      out.appendSlice(HEX, PLUS, PLUS + 1);
    } else {
      out.appendSlice(HEX, PERCENT, PERCENT + 1);
      out.appendSlice(HEX, c >> 4, (c >> 4) + 1);
      out.appendSlice(HEX, c & 0xf, (c & 0xf) + 1);
    }
    run = i + 1;
  }
  out.appendSlice(s, run, n);
}
