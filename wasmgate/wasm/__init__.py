# -*- test-case-name: tests.test_wasm_filter -*-
"""
WebAssembly filters: engine, loaded filters, chains.

The pieces, built from plain arguments (see each module): L{WasmEngine}
(one per process), L{WasmFilter} (one per configured plugin), L{FilterChain}
(one per route).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wasmgate.wasm.chain import FilterChain
    from wasmgate.wasm.engine import WasmEngine
    from wasmgate.wasm.filter import FilterFailure, PluginLoadError, WasmFilter

__all__ = ["FilterChain", "FilterFailure", "PluginLoadError", "WasmEngine", "WasmFilter"]

_WHERE = {
    "FilterChain": "wasmgate.wasm.chain",
    "WasmEngine": "wasmgate.wasm.engine",
    "FilterFailure": "wasmgate.wasm.failures",
    "PluginLoadError": "wasmgate.wasm.failures",
    "WasmFilter": "wasmgate.wasm.filter",
}


def __getattr__(name: str) -> Any:
    # Imported on first use: the proxy needs only the filter messages, and
    # a gateway without plugins should not pay for wasmtime (~5 MiB).
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
