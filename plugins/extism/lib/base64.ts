// Standard base64 with padding (what Go's encoding/json uses for []byte).

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

export function encode(data: Uint8Array): string {
  const out = new Array<string>();
  let i = 0;
  for (; i + 2 < data.length; i += 3) {
    const n = (<u32>data[i] << 16) | (<u32>data[i + 1] << 8) | data[i + 2];
    out.push(ALPHABET.charAt(n >> 18) + ALPHABET.charAt((n >> 12) & 63) + ALPHABET.charAt((n >> 6) & 63) + ALPHABET.charAt(n & 63));
  }
  const rest = data.length - i;
  if (rest == 1) {
    const n = <u32>data[i] << 16;
    out.push(ALPHABET.charAt(n >> 18) + ALPHABET.charAt((n >> 12) & 63) + "==");
  } else if (rest == 2) {
    const n = (<u32>data[i] << 16) | (<u32>data[i + 1] << 8);
    out.push(ALPHABET.charAt(n >> 18) + ALPHABET.charAt((n >> 12) & 63) + ALPHABET.charAt((n >> 6) & 63) + "=");
  }
  return out.join("");
}

export function encodeString(s: string): string {
  return encode(Uint8Array.wrap(String.UTF8.encode(s)));
}
