// test-case-name: tests.test_bundled_filters_unit
//
// The redactor's pattern language: a deliberately tiny, regex-like subset,
// matched against bytes: a text body, or one decoded JSON string or form
// field (AssemblyScript has no RegExp).
//
//   abc        literal bytes (non-ASCII text is matched as its UTF-8 bytes)
//   .          any byte except newline
//   \d \w \s   digit, word character [A-Za-z0-9_], whitespace; \D \W \S negate
//   \x         any other escaped character matches itself: \. \[ \\ \( \{ ...
//   [abc] [a-z0-9_] [^"]   ASCII character classes; \d \w \s work inside
//   ?  *  +  {n}  {n,}  {n,m}   repeat the preceding single atom (greedy)
//
// Not supported, and refused at config time rather than taken literally:
// groups `( )`, alternation `|`, anchors `^ $`, lazy quantifiers. Matching is
// leftmost, greedy with backtracking; a pattern that can match the empty
// string is refused.

const UNBOUNDED: i32 = i32.MAX_VALUE;

class Atom {
  /** 256 flags: which bytes match. */
  set: StaticArray<bool> = new StaticArray<bool>(256);
  min: i32 = 1;
  max: i32 = 1;
}

export class Pattern {
  source: string;
  mask: string;
  atoms: Array<Atom> = [];
  /** Which bytes can start a match (filled by `compilePattern`). */
  starts: StaticArray<bool> = new StaticArray<bool>(256);

  constructor(source: string, mask: string) {
    this.source = source;
    this.mask = mask;
  }

  /**
   * Length of the match starting at `pos`, or -1. `end` bounds the search.
   */
  matchAt(data: Uint8Array, pos: i32, end: i32): i32 {
    const e = this.matchFrom(data, 0, pos, end);
    return e < 0 ? -1 : e - pos;
  }

  /** End offset of a match of atoms[k..] at `pos`, or -1 (greedy, backtracking). */
  private matchFrom(data: Uint8Array, k: i32, pos: i32, end: i32): i32 {
    if (k == this.atoms.length) return pos;
    const a = unchecked(this.atoms[k]);
    let count = 0;
    let p = pos;
    while (count < a.max && p < end && unchecked(a.set[unchecked(data[p])])) {
      count++;
      p++;
    }
    while (count >= a.min) {
      const r = this.matchFrom(data, k + 1, pos + count, end);
      if (r >= 0) return r;
      count--;
    }
    return -1;
  }

  /** Whether byte `b` can start a match (a cheap pre-check per position). */
  @inline canStartWith(b: u8): bool {
    return unchecked(this.starts[b]);
  }

  /** Fill `starts`: the first atom with min > 0 and every optional one before it decide. */
  noteStarts(): void {
    for (let k = 0; k < this.atoms.length; k++) {
      const a = this.atoms[k];
      for (let c = 0; c < 256; c++) if (a.set[c]) this.starts[c] = true;
      if (a.min > 0) return;
    }
  }
}

/** Result of compiling a pattern: the pattern, or why it was refused. */
export class Compiled {
  pattern: Pattern | null = null;
  error: string = "";
}

function setRange(set: StaticArray<bool>, lo: i32, hi: i32, value: bool): void {
  for (let c = lo; c <= hi; c++) set[c] = value;
}

/** Apply the class escape `\c` to `set`; false when `c` is not a class letter. */
function addClassEscape(set: StaticArray<bool>, c: i32): bool {
  const lower = c | 0x20;
  const negate = c >= 0x41 && c <= 0x5a; // \D \W \S
  const tmp = new StaticArray<bool>(256);
  if (lower == 0x64) {
    setRange(tmp, 0x30, 0x39, true);
  } else if (lower == 0x77) {
    setRange(tmp, 0x30, 0x39, true);
    setRange(tmp, 0x41, 0x5a, true);
    setRange(tmp, 0x61, 0x7a, true);
    tmp[0x5f] = true;
  } else if (lower == 0x73) {
    tmp[0x20] = true;
    setRange(tmp, 0x09, 0x0d, true);
  } else {
    return false;
  }
  for (let i = 0; i < 256; i++) if (tmp[i] != negate) set[i] = true;
  return true;
}

function fail(source: string, at: i32, why: string): Compiled {
  const r = new Compiled();
  r.error = "pattern \"" + source + "\" at " + at.toString() + ": " + why;
  return r;
}

function readInt(b: Uint8Array, p: i32): i32 {
  let v = 0;
  let digits = 0;
  while (p < b.length && b[p] >= 0x30 && b[p] <= 0x39) {
    v = v * 10 + (b[p] - 0x30);
    if (v > 100000) return -2;
    p++;
    digits++;
  }
  return digits > 0 ? v : -1;
}

function digitsLen(b: Uint8Array, p: i32): i32 {
  let n = 0;
  while (p + n < b.length && b[p + n] >= 0x30 && b[p + n] <= 0x39) n++;
  return n;
}

/** Compile `source` (see the module comment); `mask` replaces each match. */
export function compilePattern(source: string, mask: string): Compiled {
  const b = Uint8Array.wrap(String.UTF8.encode(source));
  const n = b.length;
  const pat = new Pattern(source, mask);
  let p = 0;
  while (p < n) {
    const c = <i32>b[p];
    const atom = new Atom();
    if (c == 0x28 || c == 0x29 || c == 0x7c || c == 0x5e || c == 0x24) {
      return fail(source, p, "'" + String.fromCharCode(c) + "' is not supported (no groups, alternation or anchors); escape it with \\ to match it literally");
    }
    if (c == 0x3f || c == 0x2a || c == 0x2b || c == 0x7b) {
      return fail(source, p, "quantifier with nothing to repeat");
    }
    if (c == 0x5c) {
      if (p + 1 >= n) return fail(source, p, "trailing \\");
      const e = <i32>b[p + 1];
      if (e >= 0x80) return fail(source, p, "\\ before a non-ASCII character");
      if (!addClassEscape(atom.set, e)) atom.set[e] = true;
      p += 2;
    } else if (c == 0x2e) {
      setRange(atom.set, 0, 255, true);
      atom.set[0x0a] = false;
      p++;
    } else if (c == 0x5b) {
      p++;
      let negate = false;
      if (p < n && b[p] == 0x5e) {
        negate = true;
        p++;
      }
      const set = new StaticArray<bool>(256);
      let closed = false;
      let first = true;
      while (p < n) {
        let lo = <i32>b[p];
        if (lo == 0x5d && !first) {
          closed = true;
          p++;
          break;
        }
        first = false;
        if (lo >= 0x80) return fail(source, p, "character classes are ASCII only");
        if (lo == 0x5c) {
          if (p + 1 >= n) return fail(source, p, "trailing \\");
          const e = <i32>b[p + 1];
          if (e >= 0x80) return fail(source, p, "character classes are ASCII only");
          p += 2;
          if (addClassEscape(set, e)) continue;
          lo = e;
        } else {
          p++;
        }
        // A range lo-hi (a '-' first, last or after a range is literal).
        if (p + 1 < n && b[p] == 0x2d && b[p + 1] != 0x5d) {
          let hi = <i32>b[p + 1];
          let step = 2;
          if (hi == 0x5c) {
            if (p + 2 >= n) return fail(source, p, "trailing \\");
            hi = <i32>b[p + 2];
            step = 3;
          }
          if (hi >= 0x80) return fail(source, p, "character classes are ASCII only");
          if (hi < lo) return fail(source, p, "range out of order");
          setRange(set, lo, hi, true);
          p += step;
        } else {
          set[lo] = true;
        }
      }
      if (!closed) return fail(source, n, "unterminated [");
      for (let i = 0; i < 256; i++) atom.set[i] = set[i] != negate;
    } else {
      atom.set[c] = true;
      p++;
    }
    // Quantifier
    if (p < n) {
      const q = <i32>b[p];
      if (q == 0x3f) {
        atom.min = 0;
        atom.max = 1;
        p++;
      } else if (q == 0x2a) {
        atom.min = 0;
        atom.max = UNBOUNDED;
        p++;
      } else if (q == 0x2b) {
        atom.min = 1;
        atom.max = UNBOUNDED;
        p++;
      } else if (q == 0x7b) {
        const lo = readInt(b, p + 1);
        if (lo < 0) return fail(source, p, "bad {n,m} quantifier");
        let r = p + 1 + digitsLen(b, p + 1);
        let hi = lo;
        if (r < n && b[r] == 0x2c) {
          r++;
          if (r < n && b[r] == 0x7d) {
            hi = UNBOUNDED;
          } else {
            hi = readInt(b, r);
            if (hi < 0) return fail(source, p, "bad {n,m} quantifier");
            r += digitsLen(b, r);
          }
        }
        if (r >= n || b[r] != 0x7d) return fail(source, p, "bad {n,m} quantifier");
        if (hi < lo) return fail(source, p, "{n,m} with m < n");
        atom.min = lo;
        atom.max = hi;
        p = r + 1;
      }
      if (p < n && (b[p] == 0x3f || b[p] == 0x2a || b[p] == 0x2b || b[p] == 0x7b)) {
        return fail(source, p, "stacked quantifiers (lazy or possessive) are not supported");
      }
    }
    pat.atoms.push(atom);
  }
  let minLen: i64 = 0;
  for (let k = 0; k < pat.atoms.length; k++) minLen += pat.atoms[k].min;
  if (minLen == 0) return fail(source, 0, "pattern can match the empty string");
  pat.noteStarts();
  const r = new Compiled();
  r.pattern = pat;
  return r;
}
