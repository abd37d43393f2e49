# -*- test-case-name: tests.test_wasm_filter -*-
"""
How a filter fails: the kinds a failure is counted under, and the
exceptions the filter and its ABIs raise to say which.

Kept apart from L{wasmgate.wasm.filter} so that the ABIs, which the filter
loads, can raise them without importing it.
"""
from __future__ import annotations

FAILURE_KINDS = ("trap", "timeout", "oom", "bad_output", "state", "load", "busy", "error")
"""C{error}: the guest said it failed (an Extism handler returning non-zero
or setting an error); its instance is fine and kept."""


class PluginLoadError(Exception):
    """A plugin cannot be loaded; C{what} says why, for a human."""

    def __init__(self, name: str, what: str) -> None:
        super().__init__("plugin %r: %s" % (name, what))
        self.name = name
        self.what = what


class FilterFailure(Exception):
    """
    One call of a filter failed.

    @ivar kind: one of L{FAILURE_KINDS}.
    """

    def __init__(self, plugin: str, kind: str, message: str) -> None:
        super().__init__("plugin %r failed (%s): %s" % (plugin, kind, message))
        self.plugin = plugin
        self.kind = kind
        self.message = message


class BadOutput(Exception):
    """Raised by an ABI when the guest's output breaks the schema."""


class InitRefused(Exception):
    """Raised by an ABI when the guest refuses its configuration."""


class GuestError(Exception):
    """Raised by an ABI when the guest reports a failure of its own (kind C{error})."""


class OverMemoryCap(Exception):
    """Raised by an ABI whose instance holds more memory than its cap (kind C{oom})."""
