// test-case-name: tests.test_bundled_filters_unit
//
// Redacts personal data before it leaves the gateway.
//
// Config (all optional; a route may override any key with `route_config`):
//   headers: [names]                 request headers set to "REDACTED" before
//                                    going upstream (default: authorization,
//                                    cookie, x-api-key); only present ones
//   redact_response_headers: [names] response headers set to "REDACTED" (default none)
//   emails: bool                     mask e-mail addresses in bodies -> [REDACTED_EMAIL]
//   card_numbers: bool               mask card numbers -> [REDACTED_CARD] (13-19
//                                    digits, first digit 2-6, Luhn-valid; a bare
//                                    JSON number becomes the string "[REDACTED_CARD]")
//   patterns: [pattern | {pattern, mask}]   see pattern.ts; default mask [REDACTED]
//   content_types: [media types]     the bodies it reads (a '*' is a wildcard:
//                                    "text/*", "application/*+json")
//   unredactable: refuse | pass      what to do with a body it cannot read
//                                    (default refuse, see below)
//
// Body redaction is on when one of emails/card_numbers/patterns is; then
// every non-empty body that arrives (the plugin needs `include_body: true`
// in gateway.yaml) is read by its Content-Type (body.ts, media.ts): JSON
// (*/json, */x-json, +json) string by string with escapes decoded
// (jsonbody.ts); forms (application/x-www-form-urlencoded) field by field,
// percent-decoded (form.ts); any other listed type as plain bytes, or as
// JSON when it is valid JSON. Masked strings and fields are encoded back;
// the rest of the body keeps its bytes. A body it cannot read -- any
// Content-Encoding but identity, no Content-Type or one outside
// content_types, several differing Content-Types, a charset that is not
// ASCII-compatible, a JSON type that does not parse -- is refused: 415 for
// a request body (nothing goes upstream), 502 for a response body (the
// upstream's body and its Content-Encoding and validators are replaced by a
// short text, Cache-Control: no-store, and a warning names the route),
// unless the config says `unredactable: pass`, which lets it through as it
// is (JSON that does not parse is then scanned as text). With body
// redaction off, bodies are never looked at.

import {
  Action,
  CONTINUE,
  Json,
  Payload,
  Request,
  Response,
  Span,
  logError,
  logWarn,
  mergeObjects,
  readConfig,
  readRequest,
  readResponse,
  respond,
} from "../sdk";
import { BodyOutcome, collectAfterBigBody, redactBody } from "./body";
import { UNREADABLE_CHARSET, UNREADABLE_ENCODING, UNREADABLE_JSON, UNREADABLE_NO_TYPE, unreadableReason } from "./media";
import { Settings, parseSettings } from "./settings";

export { wasmgate_alloc } from "../sdk";

const HEADER_MASK = "REDACTED";
const MAX_CACHED_OVERRIDES = 64;
/** Headers describing the upstream's body, dropped with it when a response is refused. */
const REFUSED_RESPONSE_DROP: Array<string> = [
  "content-encoding",
  "content-range",
  "content-disposition",
  "content-language",
  "content-location",
  "etag",
  "last-modified",
];

let baseConfig: Json = Json.Obj();
let baseSettings: Settings = new Settings();
const overrides = new Map<string, Settings>();
let warnedNoBody = false;

export function wasmgate_init(ptr: usize, len: i32): i32 {
  const cfg = readConfig(ptr, len);
  const r = parseSettings(cfg);
  const s = r.settings;
  if (s === null) {
    logError("pii_redactor: bad config: " + r.error);
    return 1;
  }
  baseConfig = cfg;
  baseSettings = s;
  overrides.clear();
  return 0;
}

/** Whether the base config has work for handle_response (the host skips
 * the response phase, a thread hop, when not and no route overrides us). */
export function wasmgate_wants_response(): i32 {
  return baseSettings.responseHeaders.length > 0 || baseSettings.bodies ? 1 : 0;
}

/** The settings for a route whose `route_config` (an object) overrides ours. */
function settingsFor(routeConfig: Span, route: string): Settings {
  // Keyed by the override's text as sent, so a cached one costs no parsing.
  const key = <string>routeConfig.text();
  if (overrides.has(key)) return overrides.get(key);
  const r = parseSettings(mergeObjects(baseConfig, <Json>routeConfig.json()));
  const s = r.settings;
  // Fail rather than run with less redaction than the route asked for.
  if (s === null) throw new Error("pii_redactor: bad route_config for route '" + route + "': " + r.error);
  if (overrides.size >= MAX_CACHED_OVERRIDES) overrides.clear();
  overrides.set(key, s);
  return s;
}

function redactHeaders(p: Payload, names: Array<string>, action: Action): void {
  for (let i = 0; i < names.length; i++) {
    if (p.hasHeader(names[i])) action.setHeader(names[i], HEADER_MASK);
  }
}

/** The 415 answer's text: what the client can change, nothing about us. */
function refusalText(code: i32): string {
  if (code == UNREADABLE_ENCODING) {
    return "request body refused: a Content-Encoding is not accepted on this route; send it uncompressed\n";
  }
  if (code == UNREADABLE_NO_TYPE) return "request body refused: a body needs a Content-Type on this route\n";
  if (code == UNREADABLE_CHARSET) return "request body refused: this charset is not accepted on this route; send UTF-8\n";
  if (code == UNREADABLE_JSON) return "request body refused: the body is not valid JSON\n";
  return "request body refused: this Content-Type is not accepted on this route\n";
}

export function handle_request(ptr: usize, len: i32): i64 {
  collectAfterBigBody();
  const req: Request = readRequest(ptr, len);
  const rc = req.member("route_config");
  const s = rc.isObject ? settingsFor(rc, req.route) : baseSettings;
  const action = Action.proceed();
  redactHeaders(req, s.headers, action);
  if (s.bodies) {
    const b64 = req.bodyBase64;
    if (b64 === null) {
      if (!warnedNoBody && req.hasHeader("content-type")) {
        warnedNoBody = true;
        logWarn("pii_redactor: body redaction is on but no request body arrived; set include_body: true on the plugin");
      }
    } else if (b64.length > 0) {
      const out: BodyOutcome = redactBody(req, b64, s);
      if (out.refused != 0) {
        const block = Action.block(415, refusalText(out.refused));
        if (out.refused == UNREADABLE_ENCODING) block.setHeader("accept-encoding", "identity");
        return respond(block);
      }
      const red = out.body;
      if (red !== null) action.setBody(red);
    }
  }
  return action.changed ? respond(action) : CONTINUE;
}

function routeOf(resp: Response): string {
  const r = resp.requestMember("route").string();
  return r !== null ? r : "";
}

export function handle_response(ptr: usize, len: i32): i64 {
  collectAfterBigBody();
  const resp: Response = readResponse(ptr, len);
  // The route's override: top level, or inside "request" (either is accepted).
  let rc = resp.member("route_config");
  if (!rc.present) rc = resp.requestMember("route_config");
  const s = rc.isObject ? settingsFor(rc, routeOf(resp)) : baseSettings;
  const action = Action.change();
  redactHeaders(resp, s.responseHeaders, action);
  const b64 = resp.bodyBase64;
  if (s.bodies && b64 !== null && b64.length > 0) {
    const out: BodyOutcome = redactBody(resp, b64, s);
    if (out.refused != 0) {
      logWarn("pii_redactor: route '" + routeOf(resp) + "': upstream response refused (502): " +
        unreadableReason(out.refused) + " (unredactable: pass lets such bodies through)");
      refuseResponse(action);
    } else {
      const red = out.body;
      if (red !== null) action.setBody(red);
    }
  }
  return action.changed ? respond(action) : CONTINUE;
}

/** Replace the upstream's response by a 502 that says why, uncacheable. */
function refuseResponse(action: Action): void {
  action.setStatus(502);
  for (let i = 0; i < REFUSED_RESPONSE_DROP.length; i++) action.removeHeader(REFUSED_RESPONSE_DROP[i]);
  action.setHeader("content-type", "text/plain; charset=utf-8");
  action.setHeader("cache-control", "no-store");
  action.setBody(Uint8Array.wrap(String.UTF8.encode("bad gateway: the upstream's response could not be checked on this route\n")));
}
