// test-case-name: tests.test_bundled_filters_unit
//
// Writing JSON straight into UTF-8 bytes: no intermediate strings, and a
// writer can be reused across calls (the SDK keeps one for the output, which
// must outlive the call anyway), so a steady stream of requests allocates
// nothing here once the buffer is big enough.

import { Json, JsonKind } from "./json";
import { base64EncodeTo, base64Length } from "./base64";

const HEX = "0123456789abcdef";

/** True for UTF-16 units a JSON string literal must escape. */
@inline function needsEscape(c: u32): bool {
  // Surrogates are escaped too, so a lone one can never produce invalid UTF-8.
  return c < 0x20 || c == 0x22 || c == 0x5c || c - 0xd800 < 0x800;
}

export class JsonWriter {
  private buf: ArrayBuffer;
  /** Bytes written so far. */
  length: i32 = 0;
  /** Whether the next value or key needs a `,` before it. */
  private comma: bool = false;

  constructor(capacity: i32 = 256) {
    this.buf = new ArrayBuffer(max(capacity, 16));
  }

  /** Start over, keeping the buffer. */
  reset(): JsonWriter {
    this.length = 0;
    this.comma = false;
    return this;
  }

  /** Address of the bytes written (valid until the writer next grows). */
  get dataStart(): usize {
    return changetype<usize>(this.buf);
  }

  /** The output as the ABI packs it: (address << 32) | length. */
  get packed(): i64 {
    return <i64>((<u64>this.dataStart << 32) | <u64>this.length);
  }

  /** The bytes written, decoded (for tests and `Json.stringify`). */
  toString(): string {
    return String.UTF8.decodeUnsafe(this.dataStart, <usize>this.length);
  }

  private reserve(extra: i32): usize {
    const need = this.length + extra;
    const cap = this.buf.byteLength;
    if (need > cap) {
      let next = cap * 2;
      while (next < need) next *= 2;
      const grown = new ArrayBuffer(next);
      memory.copy(changetype<usize>(grown), changetype<usize>(this.buf), <usize>this.length);
      this.buf = grown;
    }
    return changetype<usize>(this.buf) + <usize>this.length;
  }

  @inline private byte(c: u32): void {
    store<u8>(this.reserve(1), <u8>c);
    this.length++;
  }

  /** Append ASCII text as is (punctuation, literals, digits). */
  private ascii(s: string): void {
    const n = s.length;
    const p = this.reserve(n);
    for (let i = 0; i < n; i++) store<u8>(p + <usize>i, <u8>s.charCodeAt(i));
    this.length += n;
  }

  @inline private beforeValue(): void {
    if (this.comma) this.byte(0x2c);
    this.comma = true;
  }

  beginObject(): JsonWriter {
    this.beforeValue();
    this.byte(0x7b);
    this.comma = false;
    return this;
  }

  endObject(): JsonWriter {
    this.byte(0x7d);
    this.comma = true;
    return this;
  }

  beginArray(): JsonWriter {
    this.beforeValue();
    this.byte(0x5b);
    this.comma = false;
    return this;
  }

  endArray(): JsonWriter {
    this.byte(0x5d);
    this.comma = true;
    return this;
  }

  /** An object member's key; write its value next. */
  key(name: string): JsonWriter {
    this.beforeValue();
    this.quoted(name);
    this.byte(0x3a);
    this.comma = false;
    return this;
  }

  string(s: string): JsonWriter {
    this.beforeValue();
    this.quoted(s);
    return this;
  }

  /** A string, or `null`. */
  stringOrNull(s: string | null): JsonWriter {
    if (s === null) return this.null();
    return this.string(s);
  }

  null(): JsonWriter {
    this.beforeValue();
    this.ascii("null");
    return this;
  }

  bool(b: bool): JsonWriter {
    this.beforeValue();
    this.ascii(b ? "true" : "false");
    return this;
  }

  integer(v: i64): JsonWriter {
    this.beforeValue();
    this.digits(v);
    return this;
  }

  /** Integers print without a fraction; non-finite numbers become null. */
  number(n: f64): JsonWriter {
    if (!isFinite(n)) return this.null();
    if (n == Math.floor(n) && Math.abs(n) < 9007199254740992.0) return this.integer(<i64>n);
    this.beforeValue();
    this.ascii(n.toString());
    return this;
  }

  /** `data` as a base64 string. */
  base64(data: Uint8Array): JsonWriter {
    this.beforeValue();
    const n = base64Length(data.length);
    const p = this.reserve(n + 2);
    store<u8>(p, 0x22);
    base64EncodeTo(data.dataStart, data.length, p + 1);
    store<u8>(p + 1 + <usize>n, 0x22);
    this.length += n + 2;
    return this;
  }

  /** A whole `Json` tree. */
  value(v: Json): JsonWriter {
    switch (v.kind) {
      case JsonKind.NULL: return this.null();
      case JsonKind.BOOL: return this.bool(v.b);
      case JsonKind.NUMBER: return this.number(v.n);
      case JsonKind.STRING: return this.string(v.s);
      case JsonKind.ARRAY: {
        this.beginArray();
        for (let i = 0, n = v.items.length; i < n; i++) this.value(unchecked(v.items[i]));
        return this.endArray();
      }
      default: {
        this.beginObject();
        for (let i = 0, n = v.keys.length; i < n; i++) {
          this.key(unchecked(v.keys[i]));
          this.value(unchecked(v.items[i]));
        }
        return this.endObject();
      }
    }
  }

  /** Append `text` as UTF-8, unescaped (for output that is not built here). */
  text(text: string): JsonWriter {
    const bytes = String.UTF8.encode(text);
    const n = bytes.byteLength;
    memory.copy(this.reserve(n), changetype<usize>(bytes), <usize>n);
    this.length += n;
    return this;
  }

  private digits(v: i64): void {
    if (v < 0) {
      if (v == i64.MIN_VALUE) {
        this.ascii("-9223372036854775808");
        return;
      }
      this.byte(0x2d);
      v = -v;
    }
    let n = 1;
    for (let t = v; t >= 10; t /= 10) n++;
    const p = this.reserve(n);
    for (let i = n - 1; i >= 0; i--) {
      store<u8>(p + <usize>i, <u8>(0x30 + v % 10));
      v /= 10;
    }
    this.length += n;
  }

  /** `s` as a JSON string literal in UTF-8 (escaping as `Json.stringify` always did). */
  private quoted(s: string): void {
    const n = s.length;
    // At most 6 bytes (\uXXXX) per UTF-16 unit, plus the quotes.
    let p = this.reserve(n * 6 + 2);
    const start = p;
    store<u8>(p++, 0x22);
    const src = changetype<usize>(s);
    for (let i = 0; i < n; i++) {
      const c = <u32>load<u16>(src + (<usize>i << 1));
      if (c < 0x80 && !needsEscape(c)) {
        store<u8>(p++, <u8>c);
      } else if (needsEscape(c)) {
        store<u8>(p++, 0x5c);
        if (c == 0x22) store<u8>(p++, 0x22);
        else if (c == 0x5c) store<u8>(p++, 0x5c);
        else if (c == 0x0a) store<u8>(p++, 0x6e);
        else if (c == 0x0d) store<u8>(p++, 0x72);
        else if (c == 0x09) store<u8>(p++, 0x74);
        else {
          store<u8>(p++, 0x75);
          store<u8>(p++, <u8>HEX.charCodeAt((c >> 12) & 15));
          store<u8>(p++, <u8>HEX.charCodeAt((c >> 8) & 15));
          store<u8>(p++, <u8>HEX.charCodeAt((c >> 4) & 15));
          store<u8>(p++, <u8>HEX.charCodeAt(c & 15));
        }
      } else if (c < 0x800) {
        store<u8>(p++, <u8>(0xc0 | (c >> 6)));
        store<u8>(p++, <u8>(0x80 | (c & 63)));
      } else {
        store<u8>(p++, <u8>(0xe0 | (c >> 12)));
        store<u8>(p++, <u8>(0x80 | ((c >> 6) & 63)));
        store<u8>(p++, <u8>(0x80 | (c & 63)));
      }
    }
    store<u8>(p++, 0x22);
    this.length += <i32>(p - start);
  }
}
