# -*- test-case-name: tests.test_cli -*-
"""
wasmgate: a TLS-terminating edge gateway whose requests pass through a
declarative chain of WebAssembly filters.
"""

__version__ = "0.1.0"
