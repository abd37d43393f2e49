// A small JSON value, parser and serializer: enough for the seed gateway's
// RequestPayload and ResponseAction (objects keep their key order, so what
// a plugin writes back is byte-for-byte predictable).

export const enum Kind {
  NULL = 0,
  BOOL = 1,
  NUMBER = 2,
  STRING = 3,
  ARRAY = 4,
  OBJECT = 5,
}

const MAX_DEPTH = 64;

export class Value {
  kind: Kind;
  b: bool = false;
  n: f64 = 0;
  s: string = "";
  items: Array<Value> = [];
  keys: Array<string> = [];

  constructor(kind: Kind) {
    this.kind = kind;
  }

  static str(s: string): Value {
    const v = new Value(Kind.STRING);
    v.s = s;
    return v;
  }

  static bool(b: bool): Value {
    const v = new Value(Kind.BOOL);
    v.b = b;
    return v;
  }

  static num(n: f64): Value {
    const v = new Value(Kind.NUMBER);
    v.n = n;
    return v;
  }

  static obj(): Value {
    return new Value(Kind.OBJECT);
  }

  /** The member `key` of an object, or null. */
  get(key: string): Value | null {
    for (let i = 0; i < this.keys.length; i++) {
      if (this.keys[i] == key) return this.items[i];
    }
    return null;
  }

  /** Set (or replace) member `key`, keeping the key's place. */
  set(key: string, value: Value): Value {
    for (let i = 0; i < this.keys.length; i++) {
      if (this.keys[i] == key) {
        this.items[i] = value;
        return this;
      }
    }
    this.keys.push(key);
    this.items.push(value);
    return this;
  }

  /** A string member's text, or `fallback`. */
  text(key: string, fallback: string = ""): string {
    const v = this.get(key);
    return v !== null && v.kind == Kind.STRING ? v.s : fallback;
  }

  stringify(): string {
    const parts = new Array<string>();
    write(this, parts);
    return parts.join("");
  }
}

function write(v: Value, out: Array<string>): void {
  switch (v.kind) {
    case Kind.NULL:
      out.push("null");
      break;
    case Kind.BOOL:
      out.push(v.b ? "true" : "false");
      break;
    case Kind.NUMBER:
      out.push(Math.floor(v.n) == v.n && Math.abs(v.n) < 9007199254740992 ? (<i64>v.n).toString() : v.n.toString());
      break;
    case Kind.STRING:
      quote(v.s, out);
      break;
    case Kind.ARRAY:
      out.push("[");
      for (let i = 0; i < v.items.length; i++) {
        if (i) out.push(",");
        write(v.items[i], out);
      }
      out.push("]");
      break;
    default:
      out.push("{");
      for (let i = 0; i < v.keys.length; i++) {
        if (i) out.push(",");
        quote(v.keys[i], out);
        out.push(":");
        write(v.items[i], out);
      }
      out.push("}");
  }
}

const HEX = "0123456789abcdef";

function quote(s: string, out: Array<string>): void {
  out.push('"');
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x20 && c != 0x22 && c != 0x5c) continue;
    if (i > start) out.push(s.substring(start, i));
    start = i + 1;
    if (c == 0x22) out.push('\\"');
    else if (c == 0x5c) out.push("\\\\");
    else if (c == 0x0a) out.push("\\n");
    else if (c == 0x0d) out.push("\\r");
    else if (c == 0x09) out.push("\\t");
    else out.push("\\u00" + HEX.charAt(c >> 4) + HEX.charAt(c & 15));
  }
  if (start < s.length) out.push(s.substring(start));
  out.push('"');
}

/** Parse `text`; null when it is not one JSON value. */
export function parse(text: string): Value | null {
  const p = new Parser(text);
  const v = p.value(0);
  if (v === null) return null;
  p.ws();
  return p.pos == text.length ? v : null;
}

class Parser {
  pos: i32 = 0;
  constructor(public text: string) {}

  ws(): void {
    const t = this.text;
    while (this.pos < t.length) {
      const c = t.charCodeAt(this.pos);
      if (c != 0x20 && c != 0x0a && c != 0x0d && c != 0x09) break;
      this.pos++;
    }
  }

  value(depth: i32): Value | null {
    if (depth > MAX_DEPTH) return null;
    this.ws();
    const t = this.text;
    if (this.pos >= t.length) return null;
    const c = t.charCodeAt(this.pos);
    if (c == 0x7b) return this.object(depth);
    if (c == 0x5b) return this.array(depth);
    if (c == 0x22) {
      const s = this.string();
      return s === null ? null : Value.str(s);
    }
    if (t.startsWith("true", this.pos)) {
      this.pos += 4;
      return Value.bool(true);
    }
    if (t.startsWith("false", this.pos)) {
      this.pos += 5;
      return Value.bool(false);
    }
    if (t.startsWith("null", this.pos)) {
      this.pos += 4;
      return new Value(Kind.NULL);
    }
    return this.number();
  }

  object(depth: i32): Value | null {
    const v = Value.obj();
    this.pos++;
    this.ws();
    if (this.pos < this.text.length && this.text.charCodeAt(this.pos) == 0x7d) {
      this.pos++;
      return v;
    }
    while (true) {
      this.ws();
      if (this.pos >= this.text.length || this.text.charCodeAt(this.pos) != 0x22) return null;
      const key = this.string();
      if (key === null) return null;
      this.ws();
      if (this.pos >= this.text.length || this.text.charCodeAt(this.pos) != 0x3a) return null;
      this.pos++;
      const item = this.value(depth + 1);
      if (item === null) return null;
      v.keys.push(key);
      v.items.push(item);
      this.ws();
      if (this.pos >= this.text.length) return null;
      const c = this.text.charCodeAt(this.pos++);
      if (c == 0x7d) return v;
      if (c != 0x2c) return null;
    }
  }

  array(depth: i32): Value | null {
    const v = new Value(Kind.ARRAY);
    this.pos++;
    this.ws();
    if (this.pos < this.text.length && this.text.charCodeAt(this.pos) == 0x5d) {
      this.pos++;
      return v;
    }
    while (true) {
      const item = this.value(depth + 1);
      if (item === null) return null;
      v.items.push(item);
      this.ws();
      if (this.pos >= this.text.length) return null;
      const c = this.text.charCodeAt(this.pos++);
      if (c == 0x5d) return v;
      if (c != 0x2c) return null;
    }
  }

  string(): string | null {
    const t = this.text;
    this.pos++;
    const parts = new Array<string>();
    let start = this.pos;
    while (this.pos < t.length) {
      const c = t.charCodeAt(this.pos);
      if (c == 0x22) {
        parts.push(t.substring(start, this.pos));
        this.pos++;
        return parts.join("");
      }
      if (c < 0x20) return null;
      if (c != 0x5c) {
        this.pos++;
        continue;
      }
      parts.push(t.substring(start, this.pos));
      if (this.pos + 1 >= t.length) return null;
      const e = t.charCodeAt(this.pos + 1);
      this.pos += 2;
      if (e == 0x22) parts.push('"');
      else if (e == 0x5c) parts.push("\\");
      else if (e == 0x2f) parts.push("/");
      else if (e == 0x62) parts.push("\b");
      else if (e == 0x66) parts.push("\f");
      else if (e == 0x6e) parts.push("\n");
      else if (e == 0x72) parts.push("\r");
      else if (e == 0x74) parts.push("\t");
      else if (e == 0x75) {
        if (this.pos + 4 > t.length) return null;
        const code = I32.parseInt(t.substring(this.pos, this.pos + 4), 16);
        if (isNaN(<f64>code)) return null;
        parts.push(String.fromCharCode(code));
        this.pos += 4;
      } else return null;
      start = this.pos;
    }
    return null;
  }

  number(): Value | null {
    const t = this.text;
    const start = this.pos;
    while (this.pos < t.length) {
      const c = t.charCodeAt(this.pos);
      if ((c >= 0x30 && c <= 0x39) || c == 0x2d || c == 0x2b || c == 0x2e || c == 0x65 || c == 0x45) this.pos++;
      else break;
    }
    if (this.pos == start) return null;
    const n = F64.parseFloat(t.substring(start, this.pos));
    return isNaN(n) ? null : Value.num(n);
  }
}
