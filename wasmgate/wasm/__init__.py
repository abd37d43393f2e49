# -*- test-case-name: tests.test_wasm_filter -*-
"""
WebAssembly filters: engine, loaded filters, chains.

The pieces, built from plain arguments (see each module): L{WasmEngine}
(one per process), L{WasmFilter} (one per configured plugin), L{FilterChain}
(one per route).
"""
from wasmgate.wasm.chain import FilterChain
from wasmgate.wasm.engine import WasmEngine
from wasmgate.wasm.filter import FilterFailure, PluginLoadError, WasmFilter

__all__ = ["FilterChain", "FilterFailure", "PluginLoadError", "WasmEngine", "WasmFilter"]
