// The seed gateway's contract: read a RequestPayload, answer a ResponseAction.

import { Config, Host } from "@extism/as-pdk";
import { error_set } from "@extism/as-pdk/lib/env";
import { Memory } from "@extism/as-pdk";
import { encodeString } from "./base64";
import { Kind, Value, parse } from "./json";
import "./abort"; // --use abort=lib/abort/extismAbort needs it compiled in

/** The input RequestPayload ({"method", "path", "headers", "body"}), or null. */
export function readPayload(): Value | null {
  const v = parse(Host.inputString());
  return v !== null && v.kind == Kind.OBJECT ? v : null;
}

/** Write `action` as the plugin's output (UTF-8 bytes, not UTF-16 units). */
export function answer(action: Value): void {
  Host.output(Uint8Array.wrap(String.UTF8.encode(action.stringify())));
}

/** A blocking ResponseAction: the gateway answers the client with it. */
export function block(status: i32, headers: Value, body: string): Value {
  return Value.obj()
    .set("block", Value.bool(true))
    .set("status_code", Value.num(<f64>status))
    .set("headers", headers)
    .set("body", Value.str(encodeString(body)));
}

/** Fail the call with `message` (the gateway applies the failure policy). */
export function fail(message: string): i32 {
  error_set(Memory.allocateString(message).offset);
  return 1;
}

/** A config value, or `fallback` when the key is not set. */
export function config(key: string, fallback: string): string {
  const v = Config.get(key);
  return v !== null ? v : fallback;
}
