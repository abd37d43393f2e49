// test-case-name: tests.test_bundled_filters_unit
//
// Lazy copy-with-replacements of one byte range. Each scanning module keeps
// its own instance (they nest: the JSON walker rewrites a body while the
// detectors rewrite one string of it), reused across calls so a body with
// nothing to mask allocates nothing.

import { ByteBuilder } from "../sdk";

/** Output buffers past this are dropped after use rather than kept for the next call. */
const KEEP_CAPACITY: i32 = 64 * 1024;
const EMPTY = new Uint8Array(0);

export class Rewriter {
  private src: Uint8Array = EMPTY;
  private end: i32 = 0;
  private copied: i32 = 0;
  private changed: bool = false;
  private out: ByteBuilder = new ByteBuilder(256);
  /** What `out` was made with; a bigger range gets a new one sized for it. */
  private capacity: i32 = 256;

  /** Start on `src[start:end]`. */
  begin(src: Uint8Array, start: i32, end: i32): void {
    this.src = src;
    this.end = end;
    this.copied = start;
    this.changed = false;
    this.out.reset();
  }

  /** Replace `src[start:end]` by `mask`. */
  replace(start: i32, end: i32, mask: string): void {
    this.splice(start, end).appendString(mask);
  }

  /**
   * Drop `src[start:end]` and return the output, for the caller to append
   * the replacement to.
   */
  splice(start: i32, end: i32): ByteBuilder {
    if (!this.changed && this.end - this.copied > this.capacity) {
      // Sized once for the range plus some growth: no chain of doublings.
      const size = this.end - this.copied;
      this.capacity = size + (size >> 3) + 64;
      this.out = new ByteBuilder(this.capacity);
    }
    const out = this.out;
    out.appendSlice(this.src, this.copied, start);
    this.copied = end;
    this.changed = true;
    return out;
  }

  /** The rewritten range (a new array), or null when nothing was replaced. */
  finish(): Uint8Array | null {
    const src = this.src;
    this.src = EMPTY; // do not keep the body alive until the next call
    if (!this.changed) return null;
    const out = this.out;
    out.appendSlice(src, this.copied, this.end);
    const bytes = out.toBytes();
    if (out.length > KEEP_CAPACITY) {
      this.out = new ByteBuilder(256);
      this.capacity = 256;
    }
    return bytes;
  }
}
