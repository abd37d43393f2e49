# -*- test-case-name: tests.test_hints -*-
"""
What to do about an import the host does not provide, for the imports
toolchains add by default: "imports env.abort" alone does not say that one
compiler flag fixes it. Load errors and C{wasmgate plugin inspect} append
the hint to the import they name.
"""
from __future__ import annotations

from typing import Optional

SDK_ABORT = "~lib/wasmgate-sdk/abort/wasmgateAbort"
"""The SDK's abort handler, as C{--use abort=} names it when the SDK is an npm package."""

_HINTS = {
    ("env", "abort"): (
        f"AssemblyScript's abort handler: build with --use abort={SDK_ABORT}, as the"
        " SDK's asconfig.json does, or abort=sdk/abort/wasmgateAbort with a copy of"
        " plugins/sdk; see plugins/sdk/README.md"
    ),
    ("env", "trace"): (
        "AssemblyScript imports it for trace(): remove the trace() calls and log"
        " through the SDK's log functions (wasmgate.log) instead"
    ),
    ("env", "seed"): (
        "AssemblyScript imports it to seed Math.random: wasmgate gives filters no"
        " randomness source, so avoid Math.random or build with --use seed= a function"
        " of your own"
    ),
    ("env", "memory"): (
        "the module imports its memory: build it to define and export one"
        " (AssemblyScript: without --importMemory)"
    ),
}

_MODULE_HINTS = {
    "wasi_unstable": "an old WASI (preview 0): rebuild for WASI preview 1 (wasi_snapshot_preview1)",
    "wasmgate": "not a wasmgate host function: docs/abi.md lists the ones there are",
    "http_handler": "not in the http-wasm handler ABI as wasmgate hosts it (see docs/http-wasm.md)",
}


def import_hint(module: str, name: str) -> Optional[str]:
    """
    How to get rid of an import C{module.name} the host does not provide,
    or None when there is nothing more to say than that.
    """
    return _HINTS.get((module, name)) or _MODULE_HINTS.get(module)
