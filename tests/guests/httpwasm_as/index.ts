// An http-wasm guest in AssemblyScript, written against the published
// http-wasm handler ABI only (module "http_handler"), the way a Traefik or
// dapr plugin would be. Built by build.sh next to this file into
// httpwasm_as.wasm; tests/test_abi_httpwasm.py runs it.
//
// Config (JSON, from get_config): its bytes are echoed in the "x-as-config"
// response header. Requests under /as/deny are answered 403 by the guest;
// others get "x-as-uri" and "x-as-names" request headers (names read with a
// deliberately tiny first buffer) and go on; handle_response then adds
// "x-as-ctx" (the request context) and "x-as-status" to the response.

@external("http_handler", "enable_features")
declare function enable_features(features: i32): i32;
@external("http_handler", "get_config")
declare function get_config(buf: usize, limit: i32): i32;
@external("http_handler", "log")
declare function log(level: i32, ptr: usize, len: i32): void;
@external("http_handler", "get_uri")
declare function get_uri(buf: usize, limit: i32): i32;
@external("http_handler", "get_header_names")
declare function get_header_names(kind: i32, buf: usize, limit: i32): i64;
@external("http_handler", "get_header_values")
declare function get_header_values(kind: i32, name: usize, nameLen: i32, buf: usize, limit: i32): i64;
@external("http_handler", "add_header_value")
declare function add_header_value(kind: i32, name: usize, nameLen: i32, value: usize, valueLen: i32): void;
@external("http_handler", "set_header_value")
declare function set_header_value(kind: i32, name: usize, nameLen: i32, value: usize, valueLen: i32): void;
@external("http_handler", "set_status_code")
declare function set_status_code(code: i32): void;
@external("http_handler", "get_status_code")
declare function get_status_code(): i32;
@external("http_handler", "write_body")
declare function write_body(kind: i32, ptr: usize, len: i32): void;

const REQUEST: i32 = 0;
const RESPONSE: i32 = 1;
const FEATURE_BUFFER_RESPONSE: i32 = 2;

// AssemblyScript calls abort on failed checks; trap (the host applies the
// plugin's failure policy) instead of importing env.abort.
export function guestAbort(msg: string | null, file: string | null, line: u32, col: u32): void {
  unreachable();
}

function bytes(s: string): ArrayBuffer {
  return String.UTF8.encode(s);
}

function text(buf: ArrayBuffer, len: i32): string {
  return String.UTF8.decodeUnsafe(changetype<usize>(buf), <usize>len);
}

// A getter that follows the buf_limit protocol: try a small buffer, retry
// with the exact length the host reported.
function getString(getter: (buf: usize, limit: i32) => i32): string {
  let buf = new ArrayBuffer(8);
  let n = getter(changetype<usize>(buf), 8);
  if (n > 8) {
    buf = new ArrayBuffer(n);
    n = getter(changetype<usize>(buf), n);
  }
  return text(buf, n);
}

function setHeader(kind: i32, name: string, value: string): void {
  const n = bytes(name);
  const v = bytes(value);
  set_header_value(kind, changetype<usize>(n), n.byteLength, changetype<usize>(v), v.byteLength);
}

function addHeader(kind: i32, name: string, value: string): void {
  const n = bytes(name);
  const v = bytes(value);
  add_header_value(kind, changetype<usize>(n), n.byteLength, changetype<usize>(v), v.byteLength);
}

function splitNul(buf: ArrayBuffer, len: i32): string[] {
  const out = new Array<string>();
  const p = changetype<usize>(buf);
  let start = 0;
  for (let i = 0; i < len; i++) {
    if (load<u8>(p + <usize>i) == 0) {
      out.push(String.UTF8.decodeUnsafe(p + <usize>start, <usize>(i - start)));
      start = i + 1;
    }
  }
  return out;
}

function headerNames(kind: i32): string[] {
  let buf = new ArrayBuffer(4); // shorter than any name list: forces the retry
  let countLen = get_header_names(kind, changetype<usize>(buf), 4);
  let len = <i32>(countLen & 0xffffffff);
  if (len > 4) {
    buf = new ArrayBuffer(len);
    countLen = get_header_names(kind, changetype<usize>(buf), len);
    len = <i32>(countLen & 0xffffffff);
  }
  return splitNul(buf, len);
}

function headerValues(kind: i32, name: string): string[] {
  const n = bytes(name);
  const countLen = get_header_values(kind, changetype<usize>(n), n.byteLength, 0, 0);
  const len = <i32>(countLen & 0xffffffff);
  if (len == 0) return new Array<string>();
  const buf = new ArrayBuffer(len);
  get_header_values(kind, changetype<usize>(n), n.byteLength, changetype<usize>(buf), len);
  return splitNul(buf, len);
}

let config: string = "";
let requests: u32 = 0;

// Top-level code: asc exports it as _initialize (--exportStart), which the
// host runs once per instance, after instantiation.
enable_features(FEATURE_BUFFER_RESPONSE);
config = getString(get_config);
const ready = bytes("assemblyscript guest ready");
log(0, changetype<usize>(ready), ready.byteLength);

export function handle_request(): i64 {
  requests++;
  const uri = getString(get_uri);
  if (uri.startsWith("/as/deny")) {
    set_status_code(403);
    setHeader(RESPONSE, "content-type", "text/plain");
    const body = bytes("denied by AS: " + uri);
    write_body(RESPONSE, changetype<usize>(body), body.byteLength);
    return 0;
  }
  setHeader(REQUEST, "x-as-uri", uri);
  setHeader(REQUEST, "x-as-names", headerNames(REQUEST).join(","));
  const accepts = headerValues(REQUEST, "Accept");
  for (let i = 0; i < accepts.length; i++) {
    addHeader(REQUEST, "x-as-accept", accepts[i].toUpperCase());
  }
  setHeader(RESPONSE, "x-as-config", config);
  return (<i64>requests << 32) | 1;
}

export function handle_response(reqCtx: i32, isError: i32): void {
  setHeader(RESPONSE, "x-as-ctx", reqCtx.toString());
  setHeader(RESPONSE, "x-as-status", get_status_code().toString());
  if (isError != 0) {
    const msg = bytes("request ended without a response");
    log(1, changetype<usize>(msg), msg.byteLength);
  }
}
