// test-case-name: tests.test_bundled_filters_unit
//
// The detectors: e-mail addresses, card numbers and configured patterns, each
// scanning one range of bytes (a text body, or one decoded JSON string or
// form field) and returning the range rewritten, or null when it found
// nothing so an unchanged body is never rewritten. They work on bytes, not
// decoded text, so content that is not valid UTF-8 passes through
// byte-for-byte. They see plain text: decoding JSON escapes and form
// encoding, and encoding the masks back, is the callers' job (jsonbody.ts,
// form.ts). Ranges must lie within the array: the hot loops read unchecked.

import { Pattern } from "./pattern";
import { Rewriter } from "./rewriter";

export const EMAIL_MASK = "[REDACTED_EMAIL]";
export const CARD_MASK = "[REDACTED_CARD]";

// Scratch reused by every call (one call runs at a time per instance).
const rw = new Rewriter();
const groupStarts = new Array<i32>();
const groupEnds = new Array<i32>();

export function isDigit(c: u8): bool {
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
 * Replace e-mail addresses in b[start:end] (local@domain.tld, the common
 * practical subset: local part [A-Za-z0-9._%+-], a dotted domain with an
 * alphabetic TLD).
 */
export function redactEmails(b: Uint8Array, start: i32, end: i32): Uint8Array | null {
  rw.begin(b, start, end);
  let floor = start; // a match never reaches back before this (an earlier match)
  let i = start;
  while (i < end) {
    if (unchecked(b[i]) != 0x40) {
      i++;
      continue;
    }
    let s = i;
    while (s > floor && isLocalChar(b[s - 1])) s--;
    while (s < i && b[s] == 0x2e) s++; // a local part does not start with '.'
    let e = i + 1;
    while (e < end && isDomainChar(b[e])) e++;
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

/** A digit run must not continue a decimal number ("3.14159...", "1,234"): `sep`, `digit` within [start, end). */
function numberContinues(b: Uint8Array, sep: i32, digit: i32, start: i32, end: i32): bool {
  return sep >= start && sep < end && (b[sep] == 0x2e || b[sep] == 0x2c) &&
    digit >= start && digit < end && isDigit(b[digit]);
}

/**
 * Mask the cards in the run of digit groups starting at `i` (the byte before
 * is not a digit); returns where the run ends.
 */
function maskRun(b: Uint8Array, i: i32, start: i32, end: i32): i32 {
  const starts = groupStarts;
  const ends = groupEnds;
  starts.length = 0;
  ends.length = 0;
  let p = i;
  while (true) {
    const gs = p;
    while (p < end && isDigit(b[p])) p++;
    starts.push(gs);
    ends.push(p);
    if (p + 1 < end && (b[p] == 0x20 || b[p] == 0x2d) && isDigit(b[p + 1])) {
      p++;
      continue;
    }
    break;
  }
  const runEnd = p;
  const groups = starts.length;
  const decimalBefore = numberContinues(b, i - 1, i - 2, start, end);
  const decimalAfter = numberContinues(b, runEnd, runEnd + 1, start, end);
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

/** Whether the digits b[start:end] (no separators) are a card number. */
export function isCardNumber(b: Uint8Array, start: i32, end: i32): bool {
  const len = end - start;
  if (len < 13 || len > 19) return false;
  groupStarts.length = 0;
  groupEnds.length = 0;
  groupStarts.push(start);
  groupEnds.push(end);
  return cardLike(b, groupStarts, groupEnds, 0, 0);
}

/**
 * Replace card numbers in b[start:end]: 13 to 19 digits, optionally in
 * groups separated by one space or dash, with a card network's first digit
 * (2-6), not all one digit, passing the Luhn check. Within a run of groups
 * the longest valid span from each group wins ("4111 1111 1111 1111 2024"
 * masks the card and keeps the year).
 */
export function redactCards(b: Uint8Array, start: i32, end: i32): Uint8Array | null {
  rw.begin(b, start, end);
  let i = start;
  while (i < end) {
    if (!isDigit(unchecked(b[i]))) {
      i++;
      continue;
    }
    i = maskRun(b, i, start, end);
  }
  return rw.finish();
}

/** Replace every (leftmost, non-overlapping) match of `pat` in b[start:end] by its mask. */
export function redactPattern(b: Uint8Array, start: i32, end: i32, pat: Pattern): Uint8Array | null {
  rw.begin(b, start, end);
  const mask = pat.mask;
  let i = start;
  while (i < end) {
    if (!pat.canStartWith(unchecked(b[i]))) {
      i++;
      continue;
    }
    const len = pat.matchAt(b, i, end);
    if (len > 0) {
      rw.replace(i, i + len, mask);
      i += len;
    } else {
      i++;
    }
  }
  return rw.finish();
}
