# -*- test-case-name: tests.test_hints -*-
"""
L{import_hint}: the hint for an import the host does not provide says
what the repository's own build does (the SDK's asconfig.json, build.sh).
"""
from __future__ import annotations

import json
from pathlib import Path

from wasmgate.wasm._hints import import_hint

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


def test_env_abort_names_the_flag_the_sdk_builds_with():
    hint = import_hint("env", "abort")
    assert hint is not None
    [use] = json.loads((PLUGINS / "sdk" / "asconfig.json").read_text())["options"]["use"]
    assert f"--use {use}" in hint
    assert "--use abort=sdk/abort/wasmgateAbort" in (PLUGINS / "build.sh").read_text()
    assert "abort=sdk/abort/wasmgateAbort" in hint
    assert "plugins/sdk/README.md" in hint


def test_other_assemblyscript_imports():
    assert "trace()" in import_hint("env", "trace")
    assert "Math.random" in import_hint("env", "seed")
    assert "--importMemory" in import_hint("env", "memory")


def test_whole_modules():
    assert "wasi_snapshot_preview1" in import_hint("wasi_unstable", "fd_write")
    assert "docs/abi.md" in import_hint("wasmgate", "launch_missiles")


def test_nothing_to_add_for_an_import_nobody_adds_by_default():
    assert import_hint("env", "launch_missiles") is None
    assert import_hint("somewhere", "abort") is None


ABORT_IMPORT = """
(module
  (import "env" "abort" (func (param i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (func (export "wasmgate_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_request") (param i32 i32) (result i64) (i64.const 0))
)
"""


def test_a_load_error_carries_the_hint():
    """What AssemblyScript without --use abort= builds, loaded as the gateway loads it."""
    import pytest

    from wasmgate.testing import PluginLoadError, run_filter

    with pytest.raises(PluginLoadError) as refused:
        run_filter(ABORT_IMPORT)
    assert import_hint("env", "abort") in str(refused.value)


def test_every_file_a_hint_points_at_exists():
    import re

    from wasmgate.wasm import _hints

    root = PLUGINS.parent
    texts = list(_hints._HINTS.values()) + list(_hints._MODULE_HINTS.values())
    mentioned = {m for text in texts for m in re.findall(r"\b(?:docs|plugins)/[\w./-]+\.md", text)}
    assert mentioned >= {"docs/abi.md", "docs/http-wasm.md", "plugins/sdk/README.md"}
    assert all((root / path).is_file() for path in mentioned), mentioned
