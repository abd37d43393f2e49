// test-case-name: tests.test_bundled_filters_unit
//
// What becomes of one non-empty body on a route with body redaction on: it
// is read the way its Content-Type says (JSON, form, text; text that is
// valid JSON is read as JSON too) and redacted, or, when the redactor cannot
// read it, refused, unless the route says `unredactable: pass` (then it
// goes through as it is; a body labelled JSON that is not valid JSON is
// still scanned as text, the best that can be done).

import { Payload, base64Decode } from "../sdk";
import { redactForm } from "./form";
import { redactJson } from "./jsonbody";
import { BODY_FORM, BODY_JSON, UNREADABLE_JSON, bodyReader } from "./media";
import { Settings } from "./settings";

/** Bodies past this leave so much garbage that the next call frees it first. */
const BIG_BODY: i32 = 64 * 1024;
let collectFirst = false;

/**
 * Call at the start of each phase: after a big body, collect its garbage
 * before making more, or call after call the heap grows past the memory cap
 * with bodies well under max_body_bytes (the incremental GC lags behind).
 */
export function collectAfterBigBody(): void {
  if (collectFirst) {
    collectFirst = false;
    __collect();
  }
}

export class BodyOutcome {
  /** The redacted body, or null to leave it as it is. */
  body: Uint8Array | null = null;
  /** An UNREADABLE_* code (media.ts) when the body must be refused, else 0. */
  refused: i32 = 0;
}

/** Whether `b` starts (after whitespace) like a JSON object, array or string. */
function startsLikeJson(b: Uint8Array): bool {
  for (let i = 0; i < b.length; i++) {
    const c = b[i];
    if (c == 0x20 || c == 0x0a || c == 0x0d || c == 0x09) continue;
    return c == 0x7b || c == 0x5b || c == 0x22;
  }
  return false;
}

/** `p`'s body (`bodyBase64`, not empty), redacted under `s`. */
export function redactBody(p: Payload, bodyBase64: string, s: Settings): BodyOutcome {
  const out = new BodyOutcome();
  if (bodyBase64.length > BIG_BODY) collectFirst = true;
  const reader = bodyReader(p, s.contentTypes);
  if (reader < 0) {
    if (!s.passUnredactable) out.refused = reader;
    return out;
  }
  const body = base64Decode(bodyBase64);
  if (body === null) throw new Error("pii_redactor: body is not valid base64");
  if (reader == BODY_JSON) {
    const r = redactJson(body, s.detectors);
    if (r.valid) {
      out.body = r.body;
      return out;
    }
    if (!s.passUnredactable) {
      out.refused = UNREADABLE_JSON;
      return out;
    }
  } else if (reader == BODY_FORM) {
    out.body = redactForm(body, s.detectors);
    return out;
  } else if (startsLikeJson(body)) {
    // Text that is JSON: many servers parse JSON whatever the label says,
    // so its escapes must not hide anything either.
    const r = redactJson(body, s.detectors);
    if (r.valid) {
      out.body = r.body;
      return out;
    }
  }
  // Text, or JSON that does not parse on a route that lets it pass.
  out.body = s.detectors.redact(body, 0, body.length);
  return out;
}
