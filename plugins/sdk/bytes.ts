// test-case-name: tests.test_bundled_filters_unit
//
// A growable byte buffer, for filters that rewrite bodies.

export class ByteBuilder {
  private buf: Uint8Array;
  length: i32 = 0;

  constructor(capacity: i32 = 64) {
    this.buf = new Uint8Array(max(capacity, 16));
  }

  private reserve(extra: i32): void {
    const need = this.length + extra;
    if (need <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < need) cap *= 2;
    const next = new Uint8Array(cap);
    memory.copy(next.dataStart, this.buf.dataStart, this.length);
    this.buf = next;
  }

  /** Append `src[start:end]`. */
  appendSlice(src: Uint8Array, start: i32, end: i32): void {
    const n = end - start;
    if (n <= 0) return;
    this.reserve(n);
    memory.copy(this.buf.dataStart + this.length, src.dataStart + start, n);
    this.length += n;
  }

  appendBytes(src: Uint8Array): void {
    this.appendSlice(src, 0, src.length);
  }

  /** Append `s` encoded as UTF-8. */
  appendString(s: string): void {
    this.appendBytes(Uint8Array.wrap(String.UTF8.encode(s)));
  }

  /** A copy of the bytes written so far. */
  toBytes(): Uint8Array {
    return this.buf.slice(0, this.length);
  }
}

/** UTF-8 bytes of `s`. */
export function utf8(s: string): Uint8Array {
  return Uint8Array.wrap(String.UTF8.encode(s));
}
