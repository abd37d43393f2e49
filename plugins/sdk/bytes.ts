// test-case-name: tests.test_bundled_filters_unit
//
// A growable byte buffer, for filters that rewrite bodies or build keys.
// One can be kept in a global and `reset()` per call, so building a counter
// key (see `counterIncrBytes`) allocates nothing.

export class ByteBuilder {
  private buf: Uint8Array;
  length: i32 = 0;

  constructor(capacity: i32 = 64) {
    this.buf = new Uint8Array(max(capacity, 16));
  }

  /** Address of the bytes (valid until the builder next grows). */
  get dataStart(): usize {
    return this.buf.dataStart;
  }

  /** Forget the contents, keeping the buffer. */
  reset(): ByteBuilder {
    this.length = 0;
    return this;
  }

  /** Keep only the first `length` bytes. */
  truncate(length: i32): ByteBuilder {
    if (length >= 0 && length < this.length) this.length = length;
    return this;
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
  appendSlice(src: Uint8Array, start: i32, end: i32): ByteBuilder {
    const n = end - start;
    if (n <= 0) return this;
    this.reserve(n);
    memory.copy(this.buf.dataStart + this.length, src.dataStart + start, n);
    this.length += n;
    return this;
  }

  appendBytes(src: Uint8Array): ByteBuilder {
    return this.appendSlice(src, 0, src.length);
  }

  /** Append `s` encoded as UTF-8 (exactly as `String.UTF8.encode` does, without its copy). */
  appendString(s: string): ByteBuilder {
    const n = s.length;
    const chars = changetype<usize>(s);
    let ascii = true;
    for (let i = 0; i < n; i++) {
      if (load<u16>(chars + (<usize>i << 1)) >= 0x80) {
        ascii = false;
        break;
      }
    }
    if (!ascii) {
      const bytes = String.UTF8.encode(s);
      this.reserve(bytes.byteLength);
      memory.copy(this.buf.dataStart + this.length, changetype<usize>(bytes), bytes.byteLength);
      this.length += bytes.byteLength;
      return this;
    }
    this.reserve(n);
    const p = this.buf.dataStart + this.length;
    for (let i = 0; i < n; i++) store<u8>(p + <usize>i, <u8>load<u16>(chars + (<usize>i << 1)));
    this.length += n;
    return this;
  }

  /** Append `v` in decimal. */
  appendInt(v: i64): ByteBuilder {
    if (v < 0) {
      if (v == i64.MIN_VALUE) return this.appendString("-9223372036854775808");
      this.reserve(1);
      store<u8>(this.buf.dataStart + this.length, 0x2d);
      this.length++;
      v = -v;
    }
    let n = 1;
    for (let t = v; t >= 10; t /= 10) n++;
    this.reserve(n);
    const p = this.buf.dataStart + this.length;
    for (let i = n - 1; i >= 0; i--) {
      store<u8>(p + <usize>i, <u8>(0x30 + v % 10));
      v /= 10;
    }
    this.length += n;
    return this;
  }

  /** A copy of the bytes written so far. */
  toBytes(): Uint8Array {
    return this.buf.slice(0, this.length);
  }

  /** The bytes written so far, decoded from UTF-8. */
  toString(): string {
    return String.UTF8.decodeUnsafe(this.buf.dataStart, <usize>this.length);
  }
}

/** UTF-8 bytes of `s`. */
export function utf8(s: string): Uint8Array {
  return Uint8Array.wrap(String.UTF8.encode(s));
}
