// test-case-name: tests.test_bundled_filters_unit
//
// Body scanners. They work on bytes, not decoded text, so bodies that are not
// valid UTF-8 pass through byte-for-byte, and each returns null when it found
// nothing so an unchanged body is never rewritten.
//
// Backslash escapes (`\n`, `\"`, `\u00e9`) are treated as opaque separators:
// a match never starts or ends inside one, so masking a JSON body keeps it
// valid JSON. Masks inserted into a JSON body never hold a quote, backslash
// or control character unescaped, and a card that is a bare JSON number is
// replaced by a JSON string (`"[REDACTED_CARD]"`), not by bare text.

import { ByteBuilder } from "../sdk";
import { Pattern } from "./pattern";

export const EMAIL_MASK = "[REDACTED_EMAIL]";
export const CARD_MASK = "[REDACTED_CARD]";
const JSON_CARD_MASK = "\"" + CARD_MASK + "\"";

function isDigit(c: u8): bool {
  return c >= 0x30 && c <= 0x39;
}

function isAlpha(c: u8): bool {
  const l = c | 0x20;
  return l >= 0x61 && l <= 0x7a;
}

function isLocalChar(c: u8): bool {
  return isAlpha(c) || isDigit(c) || c == 0x2e || c == 0x5f || c == 0x25 || c == 0x2b || c == 0x2d;
}

function isDomainChar(c: u8): bool {
  return isAlpha(c) || isDigit(c) || c == 0x2e || c == 0x2d;
}

/** Length of the escape sequence starting at the backslash at `i`. */
function escapeLength(b: Uint8Array, i: i32): i32 {
  if (i + 1 < b.length && b[i + 1] == 0x75) return min(6, b.length - i); // \uXXXX
  return min(2, b.length - i);
}

/** Collects the output lazily: nothing is copied until the first match. */
class Rewriter {
  src: Uint8Array;
  out: ByteBuilder | null = null;
  copied: i32 = 0;

  constructor(src: Uint8Array) {
    this.src = src;
  }

  replace(start: i32, end: i32, mask: string): void {
    let out = this.out;
    if (out === null) {
      out = new ByteBuilder(this.src.length + 32);
      this.out = out;
    }
    out.appendSlice(this.src, this.copied, start);
    out.appendString(mask);
    this.copied = end;
  }

  finish(): Uint8Array | null {
    const out = this.out;
    if (out === null) return null;
    out.appendSlice(this.src, this.copied, this.src.length);
    return out.toBytes();
  }
}

/** `domain` = b[s:e]: labels of [A-Za-z0-9-], at least two, the last alphabetic and >= 2 long. */
function validDomain(b: Uint8Array, s: i32, e: i32): bool {
  let labels = 0;
  let labelStart = s;
  for (let i = s; i <= e; i++) {
    if (i == e || b[i] == 0x2e) {
      const len = i - labelStart;
      if (len == 0 || len > 63) return false;
      if (b[labelStart] == 0x2d || b[i - 1] == 0x2d) return false;
      labels++;
      if (i == e) {
        if (labels < 2 || len < 2) return false;
        for (let k = labelStart; k < e; k++) if (!isAlpha(b[k])) return false;
      }
      labelStart = i + 1;
    }
  }
  return true;
}

/**
 * Replace e-mail addresses (local@domain.tld, the common practical subset:
 * local part [A-Za-z0-9._%+-], a dotted domain with an alphabetic TLD).
 */
export function redactEmails(b: Uint8Array): Uint8Array | null {
  const n = b.length;
  const rw = new Rewriter(b);
  let floor = 0; // matches never reach back before this (escapes, earlier matches)
  let i = 0;
  while (i < n) {
    const c = b[i];
    if (c == 0x5c) {
      i += escapeLength(b, i);
      floor = i;
      continue;
    }
    if (c != 0x40) {
      i++;
      continue;
    }
    let s = i;
    while (s > floor && isLocalChar(b[s - 1])) s--;
    while (s < i && b[s] == 0x2e) s++; // a local part does not start with '.'
    let e = i + 1;
    while (e < n && isDomainChar(b[e])) e++;
    while (e > i + 1 && (b[e - 1] == 0x2e || b[e - 1] == 0x2d)) e--;
    if (s < i && e > i + 1 && b[i - 1] != 0x2e && validDomain(b, i + 1, e)) {
      rw.replace(s, e, EMAIL_MASK);
      floor = e;
      i = e;
    } else {
      i++;
    }
  }
  return rw.finish();
}

function luhnValid(b: Uint8Array, starts: Array<i32>, ends: Array<i32>, g0: i32, g1: i32): bool {
  let sum = 0;
  let double = false;
  for (let g = g1; g >= g0; g--) {
    for (let k = ends[g] - 1; k >= starts[g]; k--) {
      let d = <i32>(b[k] - 0x30);
      if (double) {
        d *= 2;
        if (d > 9) d -= 9;
      }
      sum += d;
      double = !double;
    }
  }
  return sum % 10 == 0;
}

/**
 * Whether the digits of groups g0..g1 look like a card number. Luhn alone
 * passes one random number in ten (and every run of zeros), so the first
 * digit must also be a card network's (2-6: Mastercard 2-series and 5, Visa
 * 4, Amex and Diners 3, Discover 6) and the digits must not all be the same.
 */
function cardLike(b: Uint8Array, starts: Array<i32>, ends: Array<i32>, g0: i32, g1: i32): bool {
  const first = b[starts[g0]];
  if (first < 0x32 || first > 0x36) return false;
  let same = true;
  for (let g = g0; g <= g1 && same; g++) {
    for (let k = starts[g]; k < ends[g]; k++) {
      if (b[k] != first) {
        same = false;
        break;
      }
    }
  }
  return !same && luhnValid(b, starts, ends, g0, g1);
}

/** A digit run must not continue a decimal number ("3.14159...", "1,234"). */
function numberContinues(b: Uint8Array, sep: i32, digit: i32): bool {
  return sep >= 0 && sep < b.length && (b[sep] == 0x2e || b[sep] == 0x2c) &&
    digit >= 0 && digit < b.length && isDigit(b[digit]);
}

/**
 * Mask the cards in the run of digit groups starting at `i` (the byte before
 * is not a digit), in place; returns where the run ends. `starts`/`ends` are
 * scratch.
 */
function maskRun(b: Uint8Array, rw: Rewriter, i: i32, starts: Array<i32>, ends: Array<i32>): i32 {
  const n = b.length;
  starts.length = 0;
  ends.length = 0;
  let p = i;
  while (true) {
    const gs = p;
    while (p < n && isDigit(b[p])) p++;
    starts.push(gs);
    ends.push(p);
    if (p + 1 < n && (b[p] == 0x20 || b[p] == 0x2d) && isDigit(b[p + 1])) {
      p++;
      continue;
    }
    break;
  }
  const runEnd = p;
  const groups = starts.length;
  const decimalBefore = numberContinues(b, i - 1, i - 2);
  const decimalAfter = numberContinues(b, runEnd, runEnd + 1);
  let g0 = 0;
  while (g0 < groups) {
    let matched = -1;
    if (!(g0 == 0 && decimalBefore)) {
      let digits = 0;
      let g1 = g0;
      for (; g1 < groups; g1++) {
        digits += ends[g1] - starts[g1];
        if (digits > 19) break;
      }
      // Try the longest span first.
      for (g1 = g1 - 1; g1 >= g0; g1--) {
        let d = 0;
        for (let g = g0; g <= g1; g++) d += ends[g] - starts[g];
        if (d < 13 || d > 19) continue;
        if (g1 == groups - 1 && decimalAfter) continue;
        if (cardLike(b, starts, ends, g0, g1)) {
          matched = g1;
          break;
        }
      }
    }
    if (matched >= 0) {
      rw.replace(starts[g0], ends[matched], CARD_MASK);
      g0 = matched + 1;
    } else {
      g0++;
    }
  }
  return runEnd;
}

/**
 * Mask the JSON number token starting at `i` (a digit or `-`, outside any
 * string) if it is a card: the whole token, sign included, becomes the string
 * `"[REDACTED_CARD]"` so the document stays valid. A number with a fraction
 * or exponent is not a card. Digits grouped with spaces or dashes are not a
 * JSON number (the body is not valid JSON there) and are masked as in text.
 * Returns where the token ends.
 */
function maskJsonNumber(b: Uint8Array, rw: Rewriter, i: i32, starts: Array<i32>, ends: Array<i32>): i32 {
  const n = b.length;
  let p = i;
  if (b[p] == 0x2d) p++;
  const ds = p;
  while (p < n && isDigit(b[p])) p++;
  const de = p;
  if (p + 1 < n && (b[p] == 0x20 || b[p] == 0x2d) && isDigit(b[p + 1])) {
    return maskRun(b, rw, ds, starts, ends);
  }
  let integer = true;
  if (p + 1 < n && b[p] == 0x2e && isDigit(b[p + 1])) {
    integer = false;
    p += 2;
    while (p < n && isDigit(b[p])) p++;
  }
  if (p < n && (b[p] | 0x20) == 0x65) {
    let q = p + 1;
    if (q < n && (b[q] == 0x2b || b[q] == 0x2d)) q++;
    if (q < n && isDigit(b[q])) {
      integer = false;
      p = q;
      while (p < n && isDigit(b[p])) p++;
    }
  }
  const len = de - ds;
  if (integer && len >= 13 && len <= 19) {
    starts.length = 0;
    ends.length = 0;
    starts.push(ds);
    ends.push(de);
    if (cardLike(b, starts, ends, 0, 0)) rw.replace(i, de, JSON_CARD_MASK);
  }
  return p;
}

/**
 * Replace card numbers: 13 to 19 digits, optionally in groups separated by
 * one space or dash, with a card network's first digit (2-6), not all one
 * digit, passing the Luhn check. Within a run of groups the longest valid
 * span from each group wins ("4111 1111 1111 1111 2024" masks the card and
 * keeps the year).
 *
 * With `json`, the body is JSON: inside strings cards are masked in place;
 * outside them a card can only be a number, which becomes the string
 * `"[REDACTED_CARD]"` (see `maskJsonNumber`).
 */
export function redactCards(b: Uint8Array, json: bool): Uint8Array | null {
  const n = b.length;
  const rw = new Rewriter(b);
  const starts = new Array<i32>();
  const ends = new Array<i32>();
  let inString = false;
  let i = 0;
  while (i < n) {
    const c = b[i];
    if (json && !inString) {
      if (c == 0x22) {
        inString = true;
        i++;
      } else if (isDigit(c) || (c == 0x2d && i + 1 < n && isDigit(b[i + 1]))) {
        i = maskJsonNumber(b, rw, i, starts, ends);
      } else {
        i++;
      }
      continue;
    }
    if (c == 0x5c) {
      i += escapeLength(b, i);
      continue;
    }
    if (c == 0x22) inString = false;
    if (!isDigit(c)) {
      i++;
      continue;
    }
    i = maskRun(b, rw, i, starts, ends);
  }
  return rw.finish();
}

/**
 * Replace every (leftmost, non-overlapping) match of `pat` by its mask; with
 * `json` (a JSON body) by the mask escaped for a JSON string, so a configured
 * mask holding `"` or `\` cannot end the string it lands in.
 */
export function redactPattern(b: Uint8Array, pat: Pattern, json: bool): Uint8Array | null {
  const n = b.length;
  const rw = new Rewriter(b);
  const mask = json ? pat.jsonMask : pat.mask;
  // A match stops before the next escape so it cannot cut one in half.
  let nextEscape = indexOfByte(b, 0x5c, 0);
  let i = 0;
  while (i < n) {
    if (i == nextEscape) {
      i += escapeLength(b, i);
      nextEscape = indexOfByte(b, 0x5c, i);
      continue;
    }
    if (!pat.canStartWith(b[i])) {
      i++;
      continue;
    }
    const len = pat.matchAt(b, i, nextEscape < 0 ? n : nextEscape);
    if (len > 0) {
      rw.replace(i, i + len, mask);
      i += len;
    } else {
      i++;
    }
  }
  return rw.finish();
}

function indexOfByte(b: Uint8Array, value: u8, from: i32): i32 {
  for (let i = from; i < b.length; i++) if (b[i] == value) return i;
  return -1;
}
