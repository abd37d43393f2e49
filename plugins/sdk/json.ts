// test-case-name: tests.test_bundled_filters_unit
//
// A small JSON value, parser and serializer: just enough for the wasmgate
// JSON ABI payloads. Objects keep their keys in insertion order so output is
// deterministic; lookups are linear because payload objects are small.
//
// Filters read their hot-path input in place (view.ts) and write output with
// a JsonWriter (writer.ts); this tree is for configs and anything irregular.

import { JsonWriter } from "./writer";

export const enum JsonKind {
  NULL = 0,
  BOOL = 1,
  NUMBER = 2,
  STRING = 3,
  ARRAY = 4,
  OBJECT = 5,
}

/** Nesting deeper than this is refused rather than risking the wasm stack. */
const MAX_DEPTH = 64;

export class Json {
  kind: JsonKind;
  b: bool = false;
  n: f64 = 0;
  s: string = "";
  /** ARRAY items, or OBJECT values (parallel to `keys`). */
  items: Array<Json> = [];
  /** OBJECT keys in insertion order. */
  keys: Array<string> = [];

  constructor(kind: JsonKind) {
    this.kind = kind;
  }

  static Null(): Json {
    return new Json(JsonKind.NULL);
  }

  static Bool(b: bool): Json {
    const j = new Json(JsonKind.BOOL);
    j.b = b;
    return j;
  }

  static Num(n: f64): Json {
    const j = new Json(JsonKind.NUMBER);
    j.n = n;
    return j;
  }

  static Str(s: string): Json {
    const j = new Json(JsonKind.STRING);
    j.s = s;
    return j;
  }

  static Arr(): Json {
    return new Json(JsonKind.ARRAY);
  }

  static Obj(): Json {
    return new Json(JsonKind.OBJECT);
  }

  /** Parse `text`; null when it is not valid JSON (see `JsonParser` for why). */
  static parse(text: string): Json | null {
    return new JsonParser(text).parse();
  }

  get isNull(): bool { return this.kind == JsonKind.NULL; }
  get isBool(): bool { return this.kind == JsonKind.BOOL; }
  get isNumber(): bool { return this.kind == JsonKind.NUMBER; }
  get isString(): bool { return this.kind == JsonKind.STRING; }
  get isArray(): bool { return this.kind == JsonKind.ARRAY; }
  get isObject(): bool { return this.kind == JsonKind.OBJECT; }

  /** Number of array items or object members. */
  get length(): i32 {
    return this.items.length;
  }

  /** Array item `i` (or the value of object member `i`). */
  at(i: i32): Json {
    return this.items[i];
  }

  /** Object member `key`, or null when absent (or this is not an object). */
  get(key: string): Json | null {
    if (this.kind != JsonKind.OBJECT) return null;
    const keys = this.keys;
    for (let i = 0, n = keys.length; i < n; i++) {
      if (unchecked(keys[i]) == key) return unchecked(this.items[i]);
    }
    return null;
  }

  has(key: string): bool {
    return this.get(key) !== null;
  }

  /** Object member `key` when it is a string, else null. */
  getString(key: string): string | null {
    const v = this.get(key);
    if (v === null || v.kind != JsonKind.STRING) return null;
    return v.s;
  }

  /** Set (replace or append) object member `key`; returns this for chaining. */
  set(key: string, value: Json): Json {
    const keys = this.keys;
    for (let i = 0, n = keys.length; i < n; i++) {
      if (unchecked(keys[i]) == key) {
        this.items[i] = value;
        return this;
      }
    }
    keys.push(key);
    this.items.push(value);
    return this;
  }

  setString(key: string, value: string): Json {
    return this.set(key, Json.Str(value));
  }

  setNumber(key: string, value: f64): Json {
    return this.set(key, Json.Num(value));
  }

  setBool(key: string, value: bool): Json {
    return this.set(key, Json.Bool(value));
  }

  /** Append to an array; returns this for chaining. */
  push(value: Json): Json {
    this.items.push(value);
    return this;
  }

  stringify(): string {
    return new JsonWriter().value(this).toString();
  }

  toString(): string {
    return this.stringify();
  }
}

// ------------------------------------------------------------------ numbers

/** How `stringify` prints a number: integers print without a fraction; non-finite numbers become null. */
export function formatNumber(n: f64): string {
  if (!isFinite(n)) return "null";
  if (n == Math.floor(n) && Math.abs(n) < 9007199254740992.0) {
    return (<i64>n).toString();
  }
  return n.toString();
}

// -------------------------------------------------------------------- parser

/**
 * Recursive-descent parser over the decoded (UTF-16) text. It has no
 * exceptions to throw, so a failure returns null and leaves the reason and
 * offset in `error` / `pos` for a log line.
 */
export class JsonParser {
  src: string;
  pos: i32 = 0;
  error: string = "";

  constructor(src: string) {
    this.src = src;
  }

  parse(): Json | null {
    this.skipWs();
    const v = this.value(0);
    if (v === null) return null;
    this.skipWs();
    if (this.pos != this.src.length) return this.fail("trailing characters");
    return v;
  }

  private fail(why: string): Json | null {
    if (this.error.length == 0) this.error = why + " at offset " + this.pos.toString();
    return null;
  }

  private skipWs(): void {
    const s = this.src;
    const n = s.length;
    let p = this.pos;
    while (p < n) {
      const c = s.charCodeAt(p);
      if (c != 0x20 && c != 0x0a && c != 0x0d && c != 0x09) break;
      p++;
    }
    this.pos = p;
  }

  private value(depth: i32): Json | null {
    if (depth > MAX_DEPTH) return this.fail("nesting too deep");
    const s = this.src;
    if (this.pos >= s.length) return this.fail("unexpected end");
    const c = s.charCodeAt(this.pos);
    if (c == 0x7b) return this.object(depth);
    if (c == 0x5b) return this.array(depth);
    if (c == 0x22) {
      const str = this.string();
      if (str === null) return null;
      return Json.Str(str);
    }
    if (c == 0x74) return this.literal("true", Json.Bool(true));
    if (c == 0x66) return this.literal("false", Json.Bool(false));
    if (c == 0x6e) return this.literal("null", Json.Null());
    if (c == 0x2d || (c >= 0x30 && c <= 0x39)) return this.number();
    return this.fail("unexpected character");
  }

  private literal(word: string, v: Json): Json | null {
    if (this.src.substr(this.pos, word.length) != word) return this.fail("bad literal");
    this.pos += word.length;
    return v;
  }

  private number(): Json | null {
    const s = this.src;
    const n = s.length;
    const start = this.pos;
    let p = start;
    if (p < n && s.charCodeAt(p) == 0x2d) p++;
    const intStart = p;
    while (p < n && isDigit(s.charCodeAt(p))) p++;
    if (p == intStart) return this.fail("bad number");
    if (p - intStart > 1 && s.charCodeAt(intStart) == 0x30) return this.fail("leading zero");
    if (p < n && s.charCodeAt(p) == 0x2e) {
      p++;
      const f = p;
      while (p < n && isDigit(s.charCodeAt(p))) p++;
      if (p == f) return this.fail("bad fraction");
    }
    if (p < n && (s.charCodeAt(p) | 0x20) == 0x65) {
      p++;
      if (p < n && (s.charCodeAt(p) == 0x2b || s.charCodeAt(p) == 0x2d)) p++;
      const e = p;
      while (p < n && isDigit(s.charCodeAt(p))) p++;
      if (p == e) return this.fail("bad exponent");
    }
    this.pos = p;
    return Json.Num(parseFloat(s.substring(start, p)));
  }

  /** Parses a string literal at `pos` (which is on the opening quote). */
  private string(): string | null {
    const s = this.src;
    const n = s.length;
    let p = this.pos + 1;
    const start = p;
    // Fast path: no escapes (the usual case, and the only one for base64 bodies).
    while (p < n) {
      const c = s.charCodeAt(p);
      if (c == 0x22) {
        this.pos = p + 1;
        return s.substring(start, p);
      }
      if (c == 0x5c) break;
      if (c < 0x20) {
        this.pos = p;
        this.fail("control character in string");
        return null;
      }
      p++;
    }
    const parts = new Array<string>();
    let seg = start;
    while (p < n) {
      const c = s.charCodeAt(p);
      if (c == 0x22) {
        if (p > seg) parts.push(s.substring(seg, p));
        this.pos = p + 1;
        return parts.join("");
      }
      if (c < 0x20) {
        this.pos = p;
        this.fail("control character in string");
        return null;
      }
      if (c != 0x5c) {
        p++;
        continue;
      }
      if (p > seg) parts.push(s.substring(seg, p));
      if (p + 1 >= n) break;
      const e = s.charCodeAt(p + 1);
      p += 2;
      if (e == 0x22) parts.push("\"");
      else if (e == 0x5c) parts.push("\\");
      else if (e == 0x2f) parts.push("/");
      else if (e == 0x62) parts.push("\b");
      else if (e == 0x66) parts.push("\f");
      else if (e == 0x6e) parts.push("\n");
      else if (e == 0x72) parts.push("\r");
      else if (e == 0x74) parts.push("\t");
      else if (e == 0x75) {
        // \uXXXX: surrogate pairs arrive as two escapes and simply
        // concatenate into the right UTF-16 pair.
        if (p + 4 > n) break;
        let code = 0;
        for (let k = 0; k < 4; k++) {
          const h = hexValue(s.charCodeAt(p + k));
          if (h < 0) {
            this.pos = p;
            this.fail("bad \\u escape");
            return null;
          }
          code = (code << 4) | h;
        }
        p += 4;
        parts.push(String.fromCharCode(code));
      } else {
        this.pos = p - 1;
        this.fail("bad escape");
        return null;
      }
      seg = p;
    }
    this.pos = n;
    this.fail("unterminated string");
    return null;
  }

  private array(depth: i32): Json | null {
    const arr = Json.Arr();
    this.pos++;
    this.skipWs();
    if (this.pos < this.src.length && this.src.charCodeAt(this.pos) == 0x5d) {
      this.pos++;
      return arr;
    }
    while (true) {
      this.skipWs();
      const v = this.value(depth + 1);
      if (v === null) return null;
      arr.items.push(v);
      this.skipWs();
      if (this.pos >= this.src.length) return this.fail("unterminated array");
      const c = this.src.charCodeAt(this.pos++);
      if (c == 0x5d) return arr;
      if (c != 0x2c) {
        this.pos--;
        return this.fail("expected ',' or ']'");
      }
    }
  }

  private object(depth: i32): Json | null {
    const obj = Json.Obj();
    this.pos++;
    this.skipWs();
    if (this.pos < this.src.length && this.src.charCodeAt(this.pos) == 0x7d) {
      this.pos++;
      return obj;
    }
    while (true) {
      this.skipWs();
      if (this.pos >= this.src.length || this.src.charCodeAt(this.pos) != 0x22) {
        return this.fail("expected a key");
      }
      const key = this.string();
      if (key === null) return null;
      this.skipWs();
      if (this.pos >= this.src.length || this.src.charCodeAt(this.pos) != 0x3a) {
        return this.fail("expected ':'");
      }
      this.pos++;
      this.skipWs();
      const v = this.value(depth + 1);
      if (v === null) return null;
      // Duplicate keys: the last one wins, as in most parsers.
      obj.set(key, v);
      this.skipWs();
      if (this.pos >= this.src.length) return this.fail("unterminated object");
      const c = this.src.charCodeAt(this.pos++);
      if (c == 0x7d) return obj;
      if (c != 0x2c) {
        this.pos--;
        return this.fail("expected ',' or '}'");
      }
    }
  }
}

function isDigit(c: i32): bool {
  return c >= 0x30 && c <= 0x39;
}

function hexValue(c: i32): i32 {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20;
  if (l >= 0x61 && l <= 0x66) return l - 0x61 + 10;
  return -1;
}
