// test-case-name: tests.test_bundled_filters_unit
//
// The wasmgate JSON ABI, guest side: the input buffer, reading a request,
// response or config, and writing a decision. Re-export `wasmgate_alloc`
// from your filter's entry file; export `handle_request` (and optionally
// `handle_response`, `wasmgate_init`) yourself.
//
// Requests and responses are read in place (view.ts): one pass checks the
// input is JSON and notes where each top-level member is, and a field is
// only decoded when the filter asks for it. Answers are written straight
// into a reused output buffer (writer.ts). So a filter that looks at a
// header or two pays for those, not for the whole payload.

import { Json, JsonKind, JsonParser } from "./json";
import { base64Decode } from "./base64";
import {
  Members,
  Span,
  findMember,
  isArrayAt,
  isObjectAt,
  isStringAt,
  isValidJson,
  jsonError,
  parseAt,
  skipString,
  skipValue,
  skipWs,
  stringAt,
} from "./view";
import { JsonWriter } from "./writer";

// The host writes each input into this buffer and reuses it while it is big
// enough, so it must stay alive until the next alloc: a global is a GC root.
let inputBuffer: ArrayBuffer = new ArrayBuffer(0);
// The last output; the host reads it after the call returns, so it too must
// outlive the call (until the next one replaces it). Reused, so answering
// allocates nothing once it is big enough.
const output = new JsonWriter(1024);

/** `handle_request`/`handle_response` result meaning "continue, unchanged". */
export const CONTINUE: i64 = 0;

/** ABI export: a buffer of at least `len` bytes for the host to write input into. */
export function wasmgate_alloc(len: i32): usize {
  if (len < 0) len = 0;
  if (inputBuffer.byteLength < len) inputBuffer = new ArrayBuffer(len);
  return changetype<usize>(inputBuffer);
}

/** The input at `ptr`/`len` decoded from UTF-8. */
export function readInput(ptr: usize, len: i32): string {
  return String.UTF8.decodeUnsafe(ptr, <usize>len);
}

/** Parse the input as JSON; traps (via abort, which logs) if it is not. */
export function readJson(ptr: usize, len: i32): Json {
  const p = new JsonParser(readInput(ptr, len));
  const v = p.parse();
  if (v === null) throw new Error("host sent invalid JSON: " + p.error);
  return v;
}

/** Write `text` as the call's output and return the packed (ptr << 32 | len). */
export function writeOutput(text: string): i64 {
  return output.reset().text(text).packed;
}

/** Write `value` as the call's JSON output. */
export function respondJson(value: Json): i64 {
  return output.reset().value(value).packed;
}

/** Write the action as the call's output. */
export function respond(action: Action): i64 {
  action.writeTo(output.reset());
  return output.packed;
}

/** All values of a header in a payload's `headers` object (lower-case name). */
export function headerValues(headers: Json, name: string): Array<string> {
  const out = new Array<string>();
  const v = headers.get(name);
  if (v === null) return out;
  if (v.kind == JsonKind.STRING) out.push(v.s);
  else if (v.kind == JsonKind.ARRAY) {
    for (let i = 0; i < v.length; i++) {
      const item = v.at(i);
      if (item.kind == JsonKind.STRING) out.push(item.s);
    }
  }
  return out;
}

/** The first value of a header, or null when absent. */
export function headerValue(headers: Json, name: string): string | null {
  const v = headers.get(name);
  if (v === null) return null;
  if (v.kind == JsonKind.STRING) return v.s;
  if (v.kind == JsonKind.ARRAY && v.length > 0 && v.at(0).kind == JsonKind.STRING) {
    return v.at(0).s;
  }
  return null;
}

// ------------------------------------------------------------ reading input

/**
 * A request or response payload in the input buffer. `keys` are the
 * members it notes the place of in its one pass (`keys[headersKey]` is
 * "headers"); others are found by scanning.
 */
export class Payload {
  /** [start, end) of each of `keys`' values; start 0 when absent. */
  protected spans: StaticArray<usize>;
  protected objStart: usize;
  protected objEnd: usize;
  private keys: StaticArray<string>;
  private headersKey: i32;
  private headersJson: Json | null = null;

  constructor(ptr: usize, len: i32, keys: StaticArray<string>, headersKey: i32, what: string) {
    this.keys = keys;
    this.headersKey = headersKey;
    const end = ptr + <usize>len;
    const start = skipWs(ptr, end);
    const spans = new StaticArray<usize>(keys.length << 1);
    this.spans = spans;
    this.objStart = start;
    this.objEnd = end;
    let valid = false;
    if (start < end && load<u8>(start) == 0x7b) {
      const m = new Members(start, end);
      while (m.next()) {
        const k = m.keyIn(keys);
        if (k >= 0) {
          unchecked(spans[k << 1] = m.valueStart);
          unchecked(spans[(k << 1) + 1] = m.valueEnd);
        }
      }
      valid = m.closedAt != 0 && skipWs(m.closedAt, end) == end;
      this.objEnd = m.closedAt;
    } else if (isValidJson(ptr, len)) {
      throw new Error(what + " payload is not an object");
    }
    if (!valid) throw new Error("host sent invalid JSON: " + jsonError(ptr, len));
  }

  @inline protected startOf(k: i32): usize {
    return unchecked(this.spans[k << 1]);
  }

  @inline protected endOf(k: i32): usize {
    return unchecked(this.spans[(k << 1) + 1]);
  }

  protected span(k: i32): Span {
    return new Span(this.startOf(k), this.endOf(k));
  }

  /** The string value of known member `k`, or `dflt` when absent or not a string. */
  protected stringOr(k: i32, dflt: string): string {
    const s = this.startOf(k);
    return isStringAt(s) ? stringAt(s, this.endOf(k)) : dflt;
  }

  protected stringOrNull(k: i32): string | null {
    const s = this.startOf(k);
    return isStringAt(s) ? stringAt(s, this.endOf(k)) : null;
  }

  /** Header names are lower-case; values are a string or an array of strings. */
  get headers(): Json {
    const cached = this.headersJson;
    if (cached !== null) return cached;
    const s = this.startOf(this.headersKey);
    const h = isObjectAt(s) ? parseAt(s, this.endOf(this.headersKey)) : Json.Obj();
    this.headersJson = h;
    return h;
  }

  /** Where header `name`'s value starts (0: absent). */
  private findHeader(name: string): usize {
    const s = this.startOf(this.headersKey);
    return isObjectAt(s) ? findMember(s, this.endOf(this.headersKey), name) : 0;
  }

  /** The first value of header `name` (lower-case), or null when absent. */
  header(name: string): string | null {
    return headerIn(this.findHeader(name), this.endOf(this.headersKey));
  }

  /** Whether header `name` (lower-case) is present, decoding nothing. */
  hasHeader(name: string): bool {
    return this.findHeader(name) != 0;
  }

  /** Every value of header `name` (lower-case). */
  headerValues(name: string): Array<string> {
    return headerValuesIn(this.findHeader(name), this.endOf(this.headersKey));
  }

  /** Any top-level member, read in place. */
  member(key: string): Span {
    const k = this.keys.indexOf(key);
    if (k >= 0) return this.span(k);
    return Span.member(this.objStart, this.objEnd, key);
  }

  /** The whole payload as a `Json` tree (parsed on each call: keep it if needed twice). */
  get json(): Json {
    return parseAt(this.objStart, this.objEnd);
  }
}

/** A header's value at `v` (0: absent) as one string: the first of a list. */
function headerIn(v: usize, end: usize): string | null {
  if (v == 0) return null;
  if (isStringAt(v)) return stringAt(v, skipString(v, end));
  if (isArrayAt(v)) {
    const first = skipWs(v + 1, end);
    if (isStringAt(first)) return stringAt(first, skipString(first, end));
  }
  return null;
}

/** Every string in a header's value at `v` (0: absent). */
function headerValuesIn(v: usize, end: usize): Array<string> {
  const out = new Array<string>();
  if (isStringAt(v)) {
    out.push(stringAt(v, skipString(v, end)));
  } else if (isArrayAt(v)) {
    let p = skipWs(v + 1, end);
    while (p < end && load<u8>(p) != 0x5d) {
      const e = skipValue(p, end, 1);
      if (isStringAt(p)) out.push(stringAt(p, e));
      p = skipWs(e, end);
      if (p < end && load<u8>(p) == 0x2c) p = skipWs(p + 1, end);
    }
  }
  return out;
}

const REQUEST_KEYS: StaticArray<string> = [
  "method", "path", "query", "headers", "client_ip", "route", "body", "route_config",
];
const R_METHOD = 0;
const R_PATH = 1;
const R_QUERY = 2;
const R_HEADERS = 3;
const R_CLIENT_IP = 4;
const R_ROUTE = 5;
const R_BODY = 6;
const R_ROUTE_CONFIG = 7;

/**
 * A RequestPayload, read in place. Fields are decoded when read (read one
 * into a local if you use it often); `header`/`hasHeader` scan the headers
 * without building anything.
 */
export class Request extends Payload {
  private routeConfigJson: Json | null = null;

  constructor(ptr: usize, len: i32) {
    super(ptr, len, REQUEST_KEYS, R_HEADERS, "request");
  }

  get method(): string { return this.stringOr(R_METHOD, ""); }
  get path(): string { return this.stringOr(R_PATH, ""); }
  get query(): string { return this.stringOr(R_QUERY, ""); }
  get clientIp(): string { return this.stringOr(R_CLIENT_IP, ""); }
  get route(): string { return this.stringOr(R_ROUTE, ""); }

  /** The body as base64, present only when the plugin sets include_body. */
  get bodyBase64(): string | null { return this.stringOrNull(R_BODY); }

  /** This route's override of the plugin config, when it has one. */
  get routeConfig(): Json | null {
    let rc = this.routeConfigJson;
    if (rc === null && this.hasRouteConfig) {
      rc = parseAt(this.startOf(R_ROUTE_CONFIG), this.endOf(R_ROUTE_CONFIG));
      this.routeConfigJson = rc;
    }
    return rc;
  }

  /** Whether the route overrides the plugin config (without parsing the override). */
  get hasRouteConfig(): bool {
    return isObjectAt(this.startOf(R_ROUTE_CONFIG));
  }

  /** The override's JSON text as sent, or null: a cache key for what you parse from it. */
  get routeConfigText(): string | null {
    return this.hasRouteConfig ? this.span(R_ROUTE_CONFIG).text() : null;
  }

  /** The decoded body, or null when absent (or not valid base64). */
  body(): Uint8Array | null {
    const b = this.bodyBase64;
    return b !== null ? base64Decode(b) : null;
  }
}

/** Read the RequestPayload at `ptr`/`len`; traps (after logging why) if it is not one. */
export function readRequest(ptr: usize, len: i32): Request {
  return new Request(ptr, len);
}

const RESPONSE_KEYS: StaticArray<string> = ["status_code", "headers", "body", "request", "route_config"];
const S_STATUS = 0;
const S_HEADERS = 1;
const S_BODY = 2;
const S_REQUEST = 3;

/** A handle_response payload: the upstream's response, and its request. */
export class Response extends Payload {
  private requestJson: Json | null = null;

  constructor(ptr: usize, len: i32) {
    super(ptr, len, RESPONSE_KEYS, S_HEADERS, "response");
  }

  get statusCode(): i32 {
    const sc = this.span(S_STATUS);
    return sc.isNumber ? <i32>parseAt(sc.start, sc.end).n : 0;
  }

  get bodyBase64(): string | null { return this.stringOrNull(S_BODY); }

  /** {method, path, query, client_ip, route} of the request. */
  get request(): Json {
    const cached = this.requestJson;
    if (cached !== null) return cached;
    const s = this.startOf(S_REQUEST);
    const r = isObjectAt(s) ? parseAt(s, this.endOf(S_REQUEST)) : Json.Obj();
    this.requestJson = r;
    return r;
  }

  /** The request's member `key` (e.g. "route"), read in place. */
  requestMember(key: string): Span {
    const s = this.startOf(S_REQUEST);
    return isObjectAt(s) ? Span.member(s, this.endOf(S_REQUEST), key) : new Span();
  }

  body(): Uint8Array | null {
    const b = this.bodyBase64;
    return b !== null ? base64Decode(b) : null;
  }
}

/** Read the handle_response payload at `ptr`/`len`. */
export function readResponse(ptr: usize, len: i32): Response {
  return new Response(ptr, len);
}

// ----------------------------------------------------------- writing output

const CHANGE = 0;
const PROCEED = 1;
const BLOCK = 2;

/** `s` lower-cased, without a copy when it already is (header names usually are). */
function lowerName(s: string): string {
  for (let i = 0, n = s.length; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x80 || (c >= 0x41 && c <= 0x5a)) return s.toLowerCase();
  }
  return s;
}

/** Set `name` in a flat [name, value, name, value...] list, replacing an earlier value. */
function setIn(list: Array<string | null>, name: string, value: string | null): void {
  for (let i = 0, n = list.length; i < n; i += 2) {
    if (unchecked(list[i]) == name) {
      list[i + 1] = value;
      return;
    }
  }
  list.push(name);
  list.push(value);
}

function writeHeaders(w: JsonWriter, key: string, list: Array<string | null>): void {
  w.key(key).beginObject();
  for (let i = 0, n = list.length; i < n; i += 2) {
    w.key(<string>unchecked(list[i])).stringOrNull(unchecked(list[i + 1]));
  }
  w.endObject();
}

/**
 * A ResponseAction (request phase) or response change (response phase),
 * built up and then written with `respond`.
 */
export class Action {
  private mode: i32 = CHANGE;
  private status: i32 = 0;
  private statusSet: bool = false;
  /** [name, value (null removes), ...] */
  private headerList: Array<string | null> | null = null;
  private responseHeaderList: Array<string | null> | null = null;
  private bodyBytes: Uint8Array | null = null;
  private newPath: string | null = null;
  private newMethod: string | null = null;
  private newQuery: string | null = null;

  /** Answer the client now with `status`, a text `body` and no upstream call. */
  static block(status: i32, body: string, contentType: string = "text/plain; charset=utf-8"): Action {
    const a = new Action();
    a.mode = BLOCK;
    a.setStatus(status);
    a.setHeader("content-type", contentType);
    a.bodyBytes = Uint8Array.wrap(String.UTF8.encode(body));
    return a;
  }

  /** Let the request continue, with whatever changes are added. */
  static proceed(): Action {
    const a = new Action();
    a.mode = PROCEED;
    return a;
  }

  /** An empty change, for handle_response. */
  static change(): Action {
    return new Action();
  }

  private headers(): Array<string | null> {
    let h = this.headerList;
    if (h === null) {
      h = new Array<string | null>();
      this.headerList = h;
    }
    return h;
  }

  /** Set a header (request headers, or the block/response headers). */
  setHeader(name: string, value: string): Action {
    setIn(this.headers(), lowerName(name), value);
    return this;
  }

  /** Remove a header. */
  removeHeader(name: string): Action {
    setIn(this.headers(), lowerName(name), null);
    return this;
  }

  /** Add a header to the upstream's response (request phase only). */
  setResponseHeader(name: string, value: string): Action {
    let h = this.responseHeaderList;
    if (h === null) {
      h = new Array<string | null>();
      this.responseHeaderList = h;
    }
    setIn(h, lowerName(name), value);
    return this;
  }

  /** Replace the body (a copy of `body` is kept). */
  setBody(body: Uint8Array): Action {
    this.bodyBytes = body.slice(0);
    return this;
  }

  setPath(path: string): Action {
    this.newPath = path;
    return this;
  }

  setMethod(method: string): Action {
    this.newMethod = method;
    return this;
  }

  setQuery(query: string): Action {
    this.newQuery = query;
    return this;
  }

  /** Response phase: replace the status code. */
  setStatus(status: i32): Action {
    this.status = status;
    this.statusSet = true;
    return this;
  }

  /** True once anything besides `block: false` has been set. */
  get changed(): bool {
    return (
      this.mode == BLOCK ||
      this.statusSet ||
      this.headerList !== null ||
      this.responseHeaderList !== null ||
      this.bodyBytes !== null ||
      this.newPath !== null ||
      this.newMethod !== null ||
      this.newQuery !== null
    );
  }

  /** Write the action as a JSON object (what `respond` sends). */
  writeTo(w: JsonWriter): void {
    w.beginObject();
    if (this.mode != CHANGE) w.key("block").bool(this.mode == BLOCK);
    if (this.statusSet) w.key("status_code").integer(this.status);
    const h = this.headerList;
    if (h !== null) writeHeaders(w, "headers", h);
    const body = this.bodyBytes;
    if (body !== null) w.key("body").base64(body);
    const path = this.newPath;
    if (path !== null) w.key("path").string(path);
    const method = this.newMethod;
    if (method !== null) w.key("method").string(method);
    const query = this.newQuery;
    if (query !== null) w.key("query").string(query);
    const rh = this.responseHeaderList;
    if (rh !== null) writeHeaders(w, "response_headers", rh);
    w.endObject();
  }

  /** The action as JSON text. */
  toString(): string {
    const w = new JsonWriter();
    this.writeTo(w);
    return w.toString();
  }
}

// ---------------------------------------------------------------- config

/** The plugin config handed to wasmgate_init: null or empty input -> {}. */
export function readConfig(ptr: usize, len: i32): Json {
  if (len == 0) return Json.Obj();
  const p = new JsonParser(readInput(ptr, len));
  const v = p.parse();
  if (v === null) throw new Error("config is not valid JSON: " + p.error);
  if (v.kind == JsonKind.NULL) return Json.Obj();
  return v;
}

/**
 * The first key of `obj` not in `allowed`, as an error message naming what
 * is allowed; "" when all keys are known. Unknown keys are errors so a typo
 * never silently disables a setting.
 */
export function unknownKeyError(obj: Json, allowed: Array<string>): string {
  for (let i = 0; i < obj.keys.length; i++) {
    const k = obj.keys[i];
    if (!allowed.includes(k)) {
      return "unknown key '" + k + "' (allowed: " + allowed.join(", ") + ")";
    }
  }
  return "";
}

/**
 * Why `cfg` is no usable config object: not an object, or a key not in
 * `allowed`; "" when it is fine. The shared first check of a filter's config.
 */
export function configShapeError(cfg: Json, allowed: Array<string>): string {
  if (cfg.kind != JsonKind.OBJECT) return "config must be an object";
  return unknownKeyError(cfg, allowed);
}

/** `base` with the members of `over` set over it (a shallow merge). */
export function mergeObjects(base: Json, over: Json): Json {
  const out = Json.Obj();
  for (let i = 0; i < base.keys.length; i++) out.set(base.keys[i], base.items[i]);
  for (let i = 0; i < over.keys.length; i++) out.set(over.keys[i], over.items[i]);
  return out;
}
