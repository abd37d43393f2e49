// The seed gateway's rate limiter as an Extism plugin (@extism/as-pdk):
// a fixed window per key; over the limit the request is answered with 429
// and `retry-after` (seconds until the window ends).
//
// Config (Extism config values are strings):
//   limit         requests per window (required, a positive integer)
//   window_seconds  the window (default "60")
//   key_header    count per value of this request header (default: one
//                 count for every request)
//   buckets       keys share this many counters (default "4096"), so the
//                 plugin's vars stay bounded however many keys come
//
// Counters are Extism vars: under wasmgate all threads of the plugin share
// them (docs/extism.md).

import { Var } from "@extism/as-pdk";
import { nowMs } from "../lib/clock";
import { Kind, Value } from "../lib/json";
import { answer, block, config, fail, readPayload } from "../lib/seed";

function positive(key: string, fallback: string): i64 {
  const n = F64.parseFloat(config(key, fallback));
  if (!(n >= 1) || n > 1e12 || Math.floor(n) != n) return 0;
  return <i64>n;
}

function fnv1a(s: string): u32 {
  let h: u32 = 2166136261;
  for (let i = 0; i < s.length; i++) {
    h ^= <u32>s.charCodeAt(i);
    h *= 16777619;
  }
  return h;
}

export function handler(): i32 {
  const limit = positive("limit", "0");
  if (limit == 0) return fail("rate_limiter: config 'limit' must be a positive integer");
  const windowMs = positive("window_seconds", "60") * 1000;
  if (windowMs == 0) return fail("rate_limiter: config 'window_seconds' must be a positive integer");
  const buckets = positive("buckets", "4096");
  if (buckets == 0) return fail("rate_limiter: config 'buckets' must be a positive integer");
  const payload = readPayload();
  if (payload === null) return fail("rate_limiter: the input is not a RequestPayload");

  let key = "*";
  const keyHeader = config("key_header", "").toLowerCase();
  if (keyHeader != "") {
    const headers = payload.get("headers");
    key = headers !== null && headers.kind == Kind.OBJECT ? headers.text(keyHeader, "") : "";
  }
  const slot = "rl:" + (<u64>fnv1a(key) % <u64>buckets).toString();

  const now = nowMs();
  let start = now;
  let count: i64 = 0;
  const stored = Var.getString(slot);
  if (stored !== null) {
    const parts = stored.split(":");
    if (parts.length == 2) {
      start = I64.parseInt(parts[0]);
      count = I64.parseInt(parts[1]);
    }
  }
  if (now < start || now - start >= windowMs) {
    start = now;
    count = 0;
  }
  count++;
  Var.set(slot, Uint8Array.wrap(String.UTF8.encode(start.toString() + ":" + count.toString())));

  if (count > limit) {
    let retry = (start + windowMs - now + 999) / 1000;
    if (retry < 1) retry = 1;
    const headers = Value.obj()
      .set("retry-after", Value.str(retry.toString()))
      .set("content-type", Value.str("text/plain; charset=utf-8"));
    answer(block(429, headers, "rate limit exceeded\n"));
  }
  return 0;
}
