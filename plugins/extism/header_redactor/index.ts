// The seed gateway's header redactor as an Extism plugin (@extism/as-pdk):
// the named request headers go upstream as "REDACTED". Like the seed's, it
// returns its edited RequestPayload as the body of a non-blocking action,
// which the gateway applies to the request (docs/extism.md).
//
// Config (strings):
//   headers      comma-separated names (default "authorization,cookie,x-api-key")
//   replacement  what they become (default "REDACTED")

import { Kind, Value } from "../lib/json";
import { encodeString } from "../lib/base64";
import { answer, config, fail, readPayload } from "../lib/seed";

export function handler(): i32 {
  const names = config("headers", "authorization,cookie,x-api-key").split(",");
  for (let i = 0; i < names.length; i++) names[i] = names[i].trim().toLowerCase();
  const replacement = config("replacement", "REDACTED");
  const payload = readPayload();
  if (payload === null) return fail("header_redactor: the input is not a RequestPayload");
  const headers = payload.get("headers");
  if (headers === null || headers.kind != Kind.OBJECT) return 0;

  let changed = false;
  for (let i = 0; i < headers.keys.length; i++) {
    if (!names.includes(headers.keys[i].toLowerCase())) continue;
    if (headers.items[i].kind == Kind.STRING && headers.items[i].s == replacement) continue;
    headers.items[i] = Value.str(replacement);
    changed = true;
  }
  if (changed) {
    answer(Value.obj().set("block", Value.bool(false)).set("body", Value.str(encodeString(payload.stringify()))));
  }
  return 0;
}
