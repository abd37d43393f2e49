// test-case-name: tests.test_bundled_filters_unit
//
// The detectors a route has switched on, run in turn over one range of
// plain text (each on the previous one's output).

import { Pattern } from "./pattern";
import { redactCards, redactEmails, redactPattern } from "./scan";

// What a range may hold, noted by a caller that reads it anyway, so that a
// detector that cannot match there is not run (most JSON strings have no
// '@' and fewer than 13 digits).
export const MAY_EMAIL: i32 = 1;
export const MAY_CARD: i32 = 2;
export const MAY_ANY: i32 = MAY_EMAIL | MAY_CARD;
/** Fewest digits in a card number. */
export const CARD_DIGITS: i32 = 13;

export class Detectors {
  emails: bool = false;
  cards: bool = false;
  patterns: Array<Pattern> = [];

  /** Whether any detector is on (bodies are looked at only then). */
  get any(): bool {
    return this.emails || this.cards || this.patterns.length > 0;
  }

  /** b[start:end] with everything masked, or null when nothing matched. */
  redact(b: Uint8Array, start: i32, end: i32, may: i32 = MAY_ANY): Uint8Array | null {
    let cur = b;
    let s = start;
    let e = end;
    let changed = false;
    if (this.emails && (may & MAY_EMAIL) != 0) {
      const r = redactEmails(cur, s, e);
      if (r !== null) {
        cur = r;
        s = 0;
        e = r.length;
        changed = true;
      }
    }
    if (this.cards && (may & MAY_CARD) != 0) {
      const r = redactCards(cur, s, e);
      if (r !== null) {
        cur = r;
        s = 0;
        e = r.length;
        changed = true;
      }
    }
    const patterns = this.redactPatterns(cur, s, e);
    if (patterns !== null) return patterns;
    return changed ? cur : null; // when changed, cur is exactly the new range
  }

  /** b[start:end] with the configured patterns masked, or null when none matched. */
  redactPatterns(b: Uint8Array, start: i32, end: i32): Uint8Array | null {
    let cur = b;
    let s = start;
    let e = end;
    let changed = false;
    for (let i = 0; i < this.patterns.length; i++) {
      const r = redactPattern(cur, s, e, this.patterns[i]);
      if (r !== null) {
        cur = r;
        s = 0;
        e = r.length;
        changed = true;
      }
    }
    return changed ? cur : null;
  }
}
