// test-case-name: tests.test_bundled_filters_unit
//
// Durations as gateway.yaml writes them: "500ms", "2s", "1.5m", "1h", or a
// plain number of seconds (JSON number or numeric string).

import { Json, JsonKind } from "./json";

/** Milliseconds for `v`, or -1 when it is not a valid non-negative duration. */
export function parseDuration(v: Json): i64 {
  if (v.kind == JsonKind.NUMBER) return secondsToMs(v.n);
  if (v.kind != JsonKind.STRING) return -1;
  const s = v.s.trim();
  let unit: f64 = 1000;
  let num = s;
  if (s.endsWith("ms")) {
    unit = 1;
    num = s.substring(0, s.length - 2);
  } else if (s.endsWith("s")) {
    num = s.substring(0, s.length - 1);
  } else if (s.endsWith("m")) {
    unit = 60000;
    num = s.substring(0, s.length - 1);
  } else if (s.endsWith("h")) {
    unit = 3600000;
    num = s.substring(0, s.length - 1);
  }
  if (!isDecimal(num)) return -1;
  const ms = parseFloat(num) * unit;
  if (!isFinite(ms) || ms > 9.0e15) return -1;
  return <i64>Math.round(ms);
}

function secondsToMs(n: f64): i64 {
  if (!isFinite(n) || n < 0 || n > 9.0e12) return -1;
  return <i64>Math.round(n * 1000);
}

/** Digits with at most one '.', and at least one digit: no signs, no exponents. */
function isDecimal(s: string): bool {
  let digits = 0;
  let dots = 0;
  for (let i = 0, n = s.length; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x30 && c <= 0x39) digits++;
    else if (c == 0x2e && ++dots == 1) continue;
    else return false;
  }
  return digits > 0;
}
