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
//   content_types: [media types]     bodies redacted only for these (a '*' is a
//                                    wildcard: "text/*", "application/*+json")
//
// Bodies are only looked at when one of emails/card_numbers/patterns is on,
// the body arrived (the plugin needs `include_body: true` in gateway.yaml),
// its Content-Type matches and it has no Content-Encoding (compressed bodies
// pass unchanged). Otherwise bodies are never touched.

import {
  Action,
  CONTINUE,
  Json,
  JsonKind,
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
  configShapeError,
  unknownKeyError,
} from "../sdk";
import { Pattern, compilePattern } from "./pattern";
import { redactCards, redactEmails, redactPattern } from "./scan";

export { wasmgate_alloc } from "../sdk";

const CONFIG_KEYS: Array<string> = [
  "headers",
  "redact_response_headers",
  "emails",
  "card_numbers",
  "patterns",
  "content_types",
];
const DEFAULT_HEADERS: Array<string> = ["authorization", "cookie", "x-api-key"];
const DEFAULT_CONTENT_TYPES: Array<string> = [
  "application/json",
  "application/*+json",
  "text/*",
  "application/x-www-form-urlencoded",
];
const HEADER_MASK = "REDACTED";
const DEFAULT_PATTERN_MASK = "[REDACTED]";
const MAX_CACHED_OVERRIDES = 64;

class Settings {
  headers: Array<string> = [];
  responseHeaders: Array<string> = [];
  emails: bool = false;
  cards: bool = false;
  patterns: Array<Pattern> = [];
  contentTypes: Array<string> = [];

  get bodies(): bool {
    return this.emails || this.cards || this.patterns.length > 0;
  }
}

class Parsed {
  settings: Settings | null = null;
  error: string = "";
}

let baseConfig: Json = Json.Obj();
let baseSettings: Settings = defaultSettings();
const overrides = new Map<string, Settings>();
let warnedNoBody = false;

function defaultSettings(): Settings {
  const s = new Settings();
  s.headers = DEFAULT_HEADERS.slice(0);
  s.contentTypes = DEFAULT_CONTENT_TYPES.slice(0);
  return s;
}

/** A list of strings, lower-cased; null (with `r.error` set) when it is not one. */
function stringList(cfg: Json, key: string, r: Parsed, lower: bool): Array<string> | null {
  const v = cfg.get(key);
  const out = new Array<string>();
  if (v === null) return out;
  if (v.kind != JsonKind.ARRAY) {
    r.error = "'" + key + "' must be a list of strings";
    return null;
  }
  for (let i = 0; i < v.length; i++) {
    const item = v.at(i);
    if (item.kind != JsonKind.STRING || item.s.trim().length == 0) {
      r.error = "'" + key + "' must be a list of non-empty strings";
      return null;
    }
    out.push(lower ? item.s.trim().toLowerCase() : item.s);
  }
  return out;
}

function boolOption(cfg: Json, key: string, r: Parsed): bool {
  const v = cfg.get(key);
  if (v === null) return false;
  if (v.kind != JsonKind.BOOL) {
    r.error = "'" + key + "' must be true or false";
    return false;
  }
  return v.b;
}

function parseSettings(cfg: Json): Parsed {
  const r = new Parsed();
  const shape = configShapeError(cfg, CONFIG_KEYS);
  if (shape.length > 0) {
    r.error = shape;
    return r;
  }
  const s = defaultSettings();
  if (cfg.has("headers")) {
    const h = stringList(cfg, "headers", r, true);
    if (h === null) return r;
    s.headers = h;
  }
  const rh = stringList(cfg, "redact_response_headers", r, true);
  if (rh === null) return r;
  s.responseHeaders = rh;
  if (cfg.has("content_types")) {
    const ct = stringList(cfg, "content_types", r, true);
    if (ct === null) return r;
    s.contentTypes = ct;
  }
  s.emails = boolOption(cfg, "emails", r);
  s.cards = boolOption(cfg, "card_numbers", r);
  if (r.error.length > 0) return r;
  const pats = cfg.get("patterns");
  if (pats !== null) {
    if (pats.kind != JsonKind.ARRAY) {
      r.error = "'patterns' must be a list";
      return r;
    }
    for (let i = 0; i < pats.length; i++) {
      const p = pats.at(i);
      let source = "";
      let mask = DEFAULT_PATTERN_MASK;
      if (p.kind == JsonKind.STRING) {
        source = p.s;
      } else if (p.kind == JsonKind.OBJECT) {
        const bad = unknownKeyError(p, ["pattern", "mask"]);
        const src = p.getString("pattern");
        const m = p.get("mask");
        if (bad.length > 0 || src === null || (m !== null && m.kind != JsonKind.STRING)) {
          r.error = "'patterns' item " + i.toString() + " must be a string or {pattern: string, mask: string}" +
            (bad.length > 0 ? ": " + bad : "");
          return r;
        }
        source = src;
        if (m !== null) mask = m.s;
      } else {
        r.error = "'patterns' item " + i.toString() + " must be a string or {pattern, mask}";
        return r;
      }
      const c = compilePattern(source, mask);
      const pat = c.pattern;
      if (pat === null) {
        r.error = "'patterns' item " + i.toString() + ": " + c.error;
        return r;
      }
      s.patterns.push(pat);
    }
  }
  r.settings = s;
  return r;
}

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

/** Whether `contentType` (a header value) is one of `allowed` ('*' wildcard). */
function contentTypeMatches(contentType: string, allowed: Array<string>): bool {
  let media = contentType;
  const semi = media.indexOf(";");
  if (semi >= 0) media = media.substring(0, semi);
  media = media.trim().toLowerCase();
  if (media.length == 0) return false;
  for (let i = 0; i < allowed.length; i++) {
    const a = allowed[i];
    const star = a.indexOf("*");
    if (star < 0) {
      if (media == a) return true;
      continue;
    }
    const pre = a.substring(0, star);
    const post = a.substring(star + 1);
    if (media.length >= pre.length + post.length && media.startsWith(pre) && media.endsWith(post)) return true;
  }
  return false;
}

/** Whether `contentType` (a header value) says JSON: application/json or any +json. */
function isJson(contentType: string): bool {
  let media = contentType;
  const semi = media.indexOf(";");
  if (semi >= 0) media = media.substring(0, semi);
  media = media.trim().toLowerCase();
  return media == "application/json" || media.endsWith("+json");
}

/** Whether a body with these headers is one we may rewrite. */
function bodyEligible(p: Payload, s: Settings): bool {
  const ct = p.header("content-type");
  if (ct === null || !contentTypeMatches(ct, s.contentTypes)) return false;
  const ce = p.header("content-encoding");
  return ce === null || ce.trim().length == 0 || ce.trim().toLowerCase() == "identity";
}

/**
 * The redacted body, or null when nothing in it matched. `json` (the body is
 * JSON) keeps a masked document valid JSON.
 */
function redactBody(body: Uint8Array, s: Settings, json: bool): Uint8Array | null {
  let current = body;
  let changed = false;
  if (s.emails) {
    const r = redactEmails(current);
    if (r !== null) {
      current = r;
      changed = true;
    }
  }
  if (s.cards) {
    const r = redactCards(current, json);
    if (r !== null) {
      current = r;
      changed = true;
    }
  }
  for (let i = 0; i < s.patterns.length; i++) {
    const r = redactPattern(current, s.patterns[i], json);
    if (r !== null) {
      current = r;
      changed = true;
    }
  }
  return changed ? current : null;
}

function redactHeaders(p: Payload, names: Array<string>, action: Action): void {
  for (let i = 0; i < names.length; i++) {
    if (p.hasHeader(names[i])) action.setHeader(names[i], HEADER_MASK);
  }
}

export function handle_request(ptr: usize, len: i32): i64 {
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
    } else if (bodyEligible(req, s)) {
      const body = req.body();
      if (body === null) throw new Error("pii_redactor: request body is not valid base64");
      const red = redactBody(body, s, isJson(<string>req.header("content-type")));
      if (red !== null) action.setBody(red);
    }
  }
  return action.changed ? respond(action) : CONTINUE;
}

export function handle_response(ptr: usize, len: i32): i64 {
  const resp: Response = readResponse(ptr, len);
  // The route's override: top level, or inside "request" (either is accepted).
  let rc = resp.member("route_config");
  if (!rc.present) rc = resp.requestMember("route_config");
  let s = baseSettings;
  if (rc.isObject) {
    const route = resp.requestMember("route").string();
    s = settingsFor(rc, route !== null ? route : "");
  }
  const action = Action.change();
  redactHeaders(resp, s.responseHeaders, action);
  if (s.bodies && resp.bodyBase64 !== null && bodyEligible(resp, s)) {
    const body = resp.body();
    if (body === null) throw new Error("pii_redactor: response body is not valid base64");
    const red = redactBody(body, s, isJson(<string>resp.header("content-type")));
    if (red !== null) action.setBody(red);
  }
  return action.changed ? respond(action) : CONTINUE;
}
