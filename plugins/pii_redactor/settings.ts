// test-case-name: tests.test_bundled_filters_unit
//
// The redactor's config (see index.ts for the keys), checked strictly:
// an unknown key or value is an error, never a silently weaker setting.

import { Json, JsonKind, configShapeError, unknownKeyError } from "../sdk";
import { Detectors } from "./detect";
import { compilePattern } from "./pattern";

const CONFIG_KEYS: Array<string> = [
  "headers",
  "redact_response_headers",
  "emails",
  "card_numbers",
  "patterns",
  "content_types",
  "unredactable",
];
const DEFAULT_HEADERS: Array<string> = ["authorization", "cookie", "x-api-key"];
const DEFAULT_CONTENT_TYPES: Array<string> = [
  "application/json",
  "application/*+json",
  "text/*",
  "application/x-www-form-urlencoded",
];
const DEFAULT_PATTERN_MASK = "[REDACTED]";

export class Settings {
  headers: Array<string> = DEFAULT_HEADERS.slice(0);
  responseHeaders: Array<string> = [];
  detectors: Detectors = new Detectors();
  contentTypes: Array<string> = DEFAULT_CONTENT_TYPES.slice(0);
  /** `unredactable: pass`: bodies the redactor cannot read go through as they are. */
  passUnredactable: bool = false;

  /** Whether bodies are looked at. */
  get bodies(): bool {
    return this.detectors.any;
  }
}

export class Parsed {
  settings: Settings | null = null;
  error: string = "";
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

/** `unredactable`: "refuse" (the default) or "pass". */
function passOption(cfg: Json, r: Parsed): bool {
  const v = cfg.get("unredactable");
  if (v === null) return false;
  if (v.kind == JsonKind.STRING && (v.s == "pass" || v.s == "refuse")) return v.s == "pass";
  r.error = "'unredactable' must be \"refuse\" or \"pass\"";
  return false;
}

/** Compile `patterns` into `d`; false (with `r.error` set) on the first bad one. */
function parsePatterns(pats: Json, d: Detectors, r: Parsed): bool {
  if (pats.kind != JsonKind.ARRAY) {
    r.error = "'patterns' must be a list";
    return false;
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
        return false;
      }
      source = src;
      if (m !== null) mask = m.s;
    } else {
      r.error = "'patterns' item " + i.toString() + " must be a string or {pattern, mask}";
      return false;
    }
    const c = compilePattern(source, mask);
    const pat = c.pattern;
    if (pat === null) {
      r.error = "'patterns' item " + i.toString() + ": " + c.error;
      return false;
    }
    d.patterns.push(pat);
  }
  return true;
}

export function parseSettings(cfg: Json): Parsed {
  const r = new Parsed();
  const shape = configShapeError(cfg, CONFIG_KEYS);
  if (shape.length > 0) {
    r.error = shape;
    return r;
  }
  const s = new Settings();
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
  s.detectors.emails = boolOption(cfg, "emails", r);
  if (r.error.length > 0) return r;
  s.detectors.cards = boolOption(cfg, "card_numbers", r);
  if (r.error.length > 0) return r;
  s.passUnredactable = passOption(cfg, r);
  if (r.error.length > 0) return r;
  const pats = cfg.get("patterns");
  if (pats !== null && !parsePatterns(pats, s.detectors, r)) return r;
  r.settings = s;
  return r;
}
