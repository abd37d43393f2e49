// test-case-name: tests.test_bundled_filters_unit
//
// Which reader a body needs, from its Content-Type and Content-Encoding, or
// why the redactor cannot read it at all. Anything not known to be readable
// is unreadable: a compressed body, one without a Content-Type or with one
// outside `content_types`, several differing Content-Types, a charset in
// which ASCII is not ASCII bytes (UTF-16 would hide "@" behind NULs).

import { Payload } from "../sdk";

// Readers (>= 0).
export const BODY_TEXT: i32 = 0;
export const BODY_JSON: i32 = 1;
export const BODY_FORM: i32 = 2;

// Why a body cannot be read (< 0).
export const UNREADABLE_ENCODING: i32 = -1;
export const UNREADABLE_NO_TYPE: i32 = -2;
export const UNREADABLE_TYPE: i32 = -3;
export const UNREADABLE_CHARSET: i32 = -4;
export const UNREADABLE_JSON: i32 = -5;

/** For the log: why a body was refused (no header values, which the sender chose). */
export function unreadableReason(code: i32): string {
  if (code == UNREADABLE_ENCODING) return "it has a Content-Encoding";
  if (code == UNREADABLE_NO_TYPE) return "it has no Content-Type";
  if (code == UNREADABLE_TYPE) return "its Content-Type is not in content_types";
  if (code == UNREADABLE_CHARSET) return "its charset is not one the redactor reads";
  return "it is not valid JSON";
}

/** The reader for a body with `p`'s headers, or an UNREADABLE_* code. */
export function bodyReader(p: Payload, contentTypes: Array<string>): i32 {
  if (!identityOnly(p.headerValues("content-encoding"))) return UNREADABLE_ENCODING;
  const types = p.headerValues("content-type");
  if (types.length == 0) return UNREADABLE_NO_TYPE;
  const ct = types[0];
  for (let i = 1; i < types.length; i++) if (types[i] != ct) return UNREADABLE_TYPE;
  const semi = ct.indexOf(";");
  const media = (semi < 0 ? ct : ct.substring(0, semi)).trim().toLowerCase();
  if (media.length == 0) return UNREADABLE_NO_TYPE;
  if (!mediaMatches(media, contentTypes)) return UNREADABLE_TYPE;
  if (semi >= 0 && !readableCharset(ct.substring(semi + 1))) return UNREADABLE_CHARSET;
  const sub = media.substring(media.indexOf("/") + 1);
  if (sub == "json" || sub == "x-json" || sub.endsWith("+json")) return BODY_JSON;
  if (media == "application/x-www-form-urlencoded") return BODY_FORM;
  return BODY_TEXT;
}

/** Whether every coding listed is `identity` (or there is none). */
function identityOnly(values: Array<string>): bool {
  for (let i = 0; i < values.length; i++) {
    const codings = values[i].split(",");
    for (let k = 0; k < codings.length; k++) {
      const c = codings[k].trim().toLowerCase();
      if (c.length > 0 && c != "identity") return false;
    }
  }
  return true;
}

/** Whether `media` (lower-case) is one of `allowed` (a '*' is a wildcard). */
function mediaMatches(media: string, allowed: Array<string>): bool {
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

/**
 * Whether the charset named in `params` (what follows the media type), if
 * any, keeps ASCII as ASCII bytes: UTF-8, US-ASCII, ISO-8859-*, windows-125*.
 */
function readableCharset(params: string): bool {
  const parts = params.split(";");
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i];
    const eq = part.indexOf("=");
    if (eq < 0 || part.substring(0, eq).trim().toLowerCase() != "charset") continue;
    let cs = part.substring(eq + 1).trim().toLowerCase();
    if (cs.length >= 2 && cs.startsWith("\"") && cs.endsWith("\"")) cs = cs.substring(1, cs.length - 1);
    if (!(cs == "utf-8" || cs == "utf8" || cs == "us-ascii" || cs == "ascii" || cs == "latin1" ||
      cs == "latin-1" || cs.startsWith("iso-8859-") || cs.startsWith("iso8859-") ||
      cs.startsWith("iso_8859-") || cs.startsWith("windows-125") || cs.startsWith("cp125"))) return false;
  }
  return true;
}
