// AssemblyScript's abort (a failed assertion, an out-of-range index, ...)
// as an Extism error: the host reports the message, then the call traps.
// Build with --use abort=lib/abort/extismAbort.

import { Memory } from "@extism/as-pdk";
import { error_set } from "@extism/as-pdk/lib/env";

export function extismAbort(message: string | null, fileName: string | null, line: u32, column: u32): void {
  const text = (message !== null ? message : "abort") + " at " + (fileName !== null ? fileName : "?") + ":" + line.toString() + ":" + column.toString();
  error_set(Memory.allocateString(text).offset);
  unreachable();
}
