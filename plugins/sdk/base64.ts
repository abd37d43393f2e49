// test-case-name: tests.test_bundled_filters_unit
//
// Standard base64 (RFC 4648, with padding): bodies cross the JSON ABI in it.

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/** Length of the base64 text (with padding) for `n` bytes. */
export function base64Length(n: i32): i32 {
  return ((n + 2) / 3) * 4;
}

@inline function letter(v: u32): u8 {
  return <u8>load<u16>(changetype<usize>(ALPHABET) + (<usize>(v & 63) << 1));
}

/**
 * Encode the `n` bytes at `src` as base64 into `dst` (which must have room
 * for `base64Length(n)` bytes); returns the length written.
 */
export function base64EncodeTo(src: usize, n: i32, dst: usize): i32 {
  let o = dst;
  let i = 0;
  for (; i + 2 < n; i += 3) {
    const s = src + <usize>i;
    const v = (<u32>load<u8>(s) << 16) | (<u32>load<u8>(s + 1) << 8) | <u32>load<u8>(s + 2);
    store<u8>(o, letter(v >> 18));
    store<u8>(o + 1, letter(v >> 12));
    store<u8>(o + 2, letter(v >> 6));
    store<u8>(o + 3, letter(v));
    o += 4;
  }
  const rest = n - i;
  if (rest > 0) {
    let v = <u32>load<u8>(src + <usize>i) << 16;
    if (rest == 2) v |= <u32>load<u8>(src + <usize>i + 1) << 8;
    store<u8>(o, letter(v >> 18));
    store<u8>(o + 1, letter(v >> 12));
    store<u8>(o + 2, rest == 2 ? letter(v >> 6) : 0x3d);
    store<u8>(o + 3, 0x3d);
    o += 4;
  }
  return <i32>(o - dst);
}

/** Encode bytes as base64 text. */
export function base64Encode(data: Uint8Array): string {
  const outLen = base64Length(data.length);
  const out = new Uint8Array(outLen);
  base64EncodeTo(data.dataStart, data.length, out.dataStart);
  return String.UTF8.decodeUnsafe(out.dataStart, outLen);
}

function sextet(c: i32): i32 {
  if (c >= 0x41 && c <= 0x5a) return c - 0x41;
  if (c >= 0x61 && c <= 0x7a) return c - 0x61 + 26;
  if (c >= 0x30 && c <= 0x39) return c - 0x30 + 52;
  if (c == 0x2b) return 62;
  if (c == 0x2f) return 63;
  return -1;
}

/**
 * Decode base64 text; padding may be omitted. Returns null on any other
 * character, so a caller can tell a corrupt body from an empty one.
 */
export function base64Decode(text: string): Uint8Array | null {
  let n = text.length;
  while (n > 0 && text.charCodeAt(n - 1) == 0x3d) n--;
  if (text.length - n > 2 || n % 4 == 1) return null;
  const out = new Uint8Array((n * 3) >> 2);
  let acc: u32 = 0;
  let bits = 0;
  let o = 0;
  for (let i = 0; i < n; i++) {
    const v = sextet(text.charCodeAt(i));
    if (v < 0) return null;
    acc = (acc << 6) | <u32>v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = <u8>((acc >> bits) & 0xff);
    }
  }
  return out;
}
