// test-case-name: tests.test_plugins_build
//
// AssemblyScript calls `abort` on failed assertions, `throw`, and out-of-range
// accesses, and would import it as `env.abort`. build.sh points it here
// (`--use abort=sdk/abort/wasmgateAbort`) so the only imports stay in module
// "wasmgate": we log why, then trap, and the gateway applies the plugin's
// failure policy.

import { logError } from "./host";

export function wasmgateAbort(
  message: string | null,
  fileName: string | null,
  lineNumber: u32,
  columnNumber: u32,
): void {
  logError(
    "abort: " +
      (message !== null ? message : "(no message)") +
      " at " +
      (fileName !== null ? fileName : "?") +
      ":" +
      lineNumber.toString() +
      ":" +
      columnNumber.toString(),
  );
  unreachable();
}
