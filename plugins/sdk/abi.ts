// test-case-name: tests.test_bundled_filters_unit
//
// The wasmgate JSON ABI, guest side: the input buffer, reading a request,
// response or config, and writing a decision. Re-export `wasmgate_alloc`
// from your filter's entry file; export `handle_request` (and optionally
// `handle_response`, `wasmgate_init`) yourself.

import { Json, JsonKind, JsonParser } from "./json";
import { base64Decode, base64Encode } from "./base64";

// The host writes each input into this buffer and reuses it while it is big
// enough, so it must stay alive until the next alloc: a global is a GC root.
let inputBuffer: ArrayBuffer = new ArrayBuffer(0);
// The last output; the host reads it after the call returns, so it too must
// outlive the call (until the next one replaces it).
let outputBuffer: ArrayBuffer = new ArrayBuffer(0);

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
  outputBuffer = String.UTF8.encode(text);
  return <i64>((<u64>changetype<usize>(outputBuffer) << 32) | <u64>outputBuffer.byteLength);
}

/** Write `value` as the call's JSON output. */
export function respondJson(value: Json): i64 {
  return writeOutput(value.stringify());
}

/** Write the action as the call's output. */
export function respond(action: Action): i64 {
  return respondJson(action.json);
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

function stringOr(obj: Json, key: string, dflt: string): string {
  const s = obj.getString(key);
  return s !== null ? s : dflt;
}

/** A RequestPayload. */
export class Request {
  json: Json;
  method: string;
  path: string;
  query: string;
  clientIp: string;
  route: string;
  /** Header names are lower-case; values are a string or an array of strings. */
  headers: Json;
  /** This route's override of the plugin config, when it has one. */
  routeConfig: Json | null;
  /** The body as base64, present only when the plugin sets include_body. */
  bodyBase64: string | null;

  constructor(json: Json) {
    if (json.kind != JsonKind.OBJECT) throw new Error("request payload is not an object");
    this.json = json;
    this.method = stringOr(json, "method", "");
    this.path = stringOr(json, "path", "");
    this.query = stringOr(json, "query", "");
    this.clientIp = stringOr(json, "client_ip", "");
    this.route = stringOr(json, "route", "");
    const h = json.get("headers");
    this.headers = h !== null && h.kind == JsonKind.OBJECT ? h : Json.Obj();
    const rc = json.get("route_config");
    this.routeConfig = rc !== null && rc.kind == JsonKind.OBJECT ? rc : null;
    this.bodyBase64 = json.getString("body");
  }

  header(name: string): string | null {
    return headerValue(this.headers, name);
  }

  headerValues(name: string): Array<string> {
    return headerValues(this.headers, name);
  }

  /** The decoded body, or null when absent (or not valid base64). */
  body(): Uint8Array | null {
    const b = this.bodyBase64;
    return b !== null ? base64Decode(b) : null;
  }
}

/** Read the RequestPayload at `ptr`/`len`. */
export function readRequest(ptr: usize, len: i32): Request {
  return new Request(readJson(ptr, len));
}

/** A handle_response payload: the upstream's response, and its request. */
export class Response {
  json: Json;
  statusCode: i32;
  headers: Json;
  bodyBase64: string | null;
  /** {method, path, query, client_ip, route} of the request. */
  request: Json;

  constructor(json: Json) {
    if (json.kind != JsonKind.OBJECT) throw new Error("response payload is not an object");
    this.json = json;
    const sc = json.get("status_code");
    this.statusCode = sc !== null && sc.kind == JsonKind.NUMBER ? <i32>sc.n : 0;
    const h = json.get("headers");
    this.headers = h !== null && h.kind == JsonKind.OBJECT ? h : Json.Obj();
    this.bodyBase64 = json.getString("body");
    const r = json.get("request");
    this.request = r !== null && r.kind == JsonKind.OBJECT ? r : Json.Obj();
  }

  header(name: string): string | null {
    return headerValue(this.headers, name);
  }

  body(): Uint8Array | null {
    const b = this.bodyBase64;
    return b !== null ? base64Decode(b) : null;
  }
}

/** Read the handle_response payload at `ptr`/`len`. */
export function readResponse(ptr: usize, len: i32): Response {
  return new Response(readJson(ptr, len));
}

/**
 * A ResponseAction (request phase) or response change (response phase),
 * built up and then written with `respond`.
 */
export class Action {
  json: Json = Json.Obj();

  /** Answer the client now with `status`, a text `body` and no upstream call. */
  static block(status: i32, body: string, contentType: string = "text/plain; charset=utf-8"): Action {
    const a = new Action();
    a.json.setBool("block", true);
    a.json.setNumber("status_code", <f64>status);
    a.setHeader("content-type", contentType);
    a.json.setString("body", base64Encode(Uint8Array.wrap(String.UTF8.encode(body))));
    return a;
  }

  /** Let the request continue, with whatever changes are added. */
  static proceed(): Action {
    const a = new Action();
    a.json.setBool("block", false);
    return a;
  }

  /** An empty change, for handle_response. */
  static change(): Action {
    return new Action();
  }

  private headerObject(key: string): Json {
    let h = this.json.get(key);
    if (h === null) {
      h = Json.Obj();
      this.json.set(key, h);
    }
    return h;
  }

  /** Set a header (request headers, or the block/response headers). */
  setHeader(name: string, value: string): Action {
    this.headerObject("headers").setString(name.toLowerCase(), value);
    return this;
  }

  /** Remove a header. */
  removeHeader(name: string): Action {
    this.headerObject("headers").set(name.toLowerCase(), Json.Null());
    return this;
  }

  /** Add a header to the upstream's response (request phase only). */
  setResponseHeader(name: string, value: string): Action {
    this.headerObject("response_headers").setString(name.toLowerCase(), value);
    return this;
  }

  setBody(body: Uint8Array): Action {
    this.json.setString("body", base64Encode(body));
    return this;
  }

  setPath(path: string): Action {
    this.json.setString("path", path);
    return this;
  }

  setMethod(method: string): Action {
    this.json.setString("method", method);
    return this;
  }

  setQuery(query: string): Action {
    this.json.setString("query", query);
    return this;
  }

  /** Response phase: replace the status code. */
  setStatus(status: i32): Action {
    this.json.setNumber("status_code", <f64>status);
    return this;
  }

  /** True once anything besides `block: false` has been set. */
  get changed(): bool {
    const keys = this.json.keys;
    for (let i = 0; i < keys.length; i++) {
      if (keys[i] != "block" || this.json.items[i].b) return true;
    }
    return false;
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

/** `base` with the members of `over` set over it (a shallow merge). */
export function mergeObjects(base: Json, over: Json): Json {
  const out = Json.Obj();
  for (let i = 0; i < base.keys.length; i++) out.set(base.keys[i], base.items[i]);
  for (let i = 0; i < over.keys.length; i++) out.set(over.keys[i], over.items[i]);
  return out;
}
