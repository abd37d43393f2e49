# -*- test-case-name: tests.test_plugins_build -*-
"""
The committed plugins/*.wasm: they speak the wasmgate JSON ABI, import
nothing but module "wasmgate", and are exactly what plugins/build.sh makes
from the committed sources with the pinned compiler.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import wasmtime

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
FILTERS = ["rate_limiter", "pii_redactor"]

I32 = "i32"
I64 = "i64"

# name -> (params, results) of the host functions a filter may import.
ALLOWED_IMPORTS = {
    "now_ms": ([], [I64]),
    "log": ([I32, I32, I32], []),
    "counter_incr": ([I32, I32, I64, I64], [I64]),
    "counter_get": ([I32, I32], [I64]),
}

ABI_EXPORTS = {
    "wasmgate_alloc": ([I32], [I32]),
    "wasmgate_init": ([I32, I32], [I32]),
    "handle_request": ([I32, I32], [I64]),
}


def _signature(t: wasmtime.FuncType) -> tuple[list[str], list[str]]:
    return [str(p) for p in t.params], [str(r) for r in t.results]


@pytest.fixture(scope="module")
def engine() -> wasmtime.Engine:
    return wasmtime.Engine()


@pytest.mark.parametrize("name", FILTERS)
def test_imports_only_wasmgate(engine: wasmtime.Engine, name: str) -> None:
    """No env.abort/seed/trace: only the wasmgate host functions, with their types."""
    module = wasmtime.Module.from_file(engine, str(PLUGINS / f"{name}.wasm"))
    imports = {}
    for imp in module.imports:
        assert imp.module == "wasmgate", f"{name} imports {imp.module}.{imp.name}"
        assert isinstance(imp.type, wasmtime.FuncType)
        imports[imp.name] = _signature(imp.type)
    assert imports, f"{name} should at least log through the host"
    for func, sig in imports.items():
        assert ALLOWED_IMPORTS.get(func) == sig, f"{name} imports wasmgate.{func}{sig}"


@pytest.mark.parametrize("name", FILTERS)
def test_exports_abi(engine: wasmtime.Engine, name: str) -> None:
    module = wasmtime.Module.from_file(engine, str(PLUGINS / f"{name}.wasm"))
    exports = {e.name: e.type for e in module.exports}
    assert isinstance(exports.get("memory"), wasmtime.MemoryType)
    for func, sig in ABI_EXPORTS.items():
        t = exports.get(func)
        assert isinstance(t, wasmtime.FuncType), f"{name} does not export {func}"
        assert _signature(t) == sig
    if name == "pii_redactor":
        t = exports["handle_response"]
        assert isinstance(t, wasmtime.FuncType)
        assert _signature(t) == ([I32, I32], [I64])


def _require_toolchain() -> None:
    """Skip unless node/npm exist and the pinned compiler is (or can be) installed."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed: cannot rebuild plugins/*.wasm")
    if not (PLUGINS / "node_modules" / ".bin" / "asc").exists():
        result = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=PLUGINS,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            pytest.skip(f"plugins/node_modules missing and `npm ci` failed: {result.stderr[-500:]}")


def test_committed_wasm_matches_fresh_build() -> None:
    """check_build.sh rebuilds into a temp dir and finds the committed files identical."""
    _require_toolchain()
    result = subprocess.run(
        ["bash", str(PLUGINS / "check_build.sh")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for name in FILTERS:
        assert f"plugins/{name}.wasm is up to date" in result.stderr


def test_check_build_detects_stale_wasm(tmp_path: Path) -> None:
    """
    A copy of plugins/ elsewhere (so the build does not depend on where the
    checkout lives) with one .wasm altered: check_build.sh fails and names it.
    """
    _require_toolchain()
    copy = tmp_path / "plugins"
    shutil.copytree(
        PLUGINS, copy, ignore=shutil.ignore_patterns("node_modules"), symlinks=True
    )
    (copy / "node_modules").symlink_to(PLUGINS / "node_modules")
    stale = copy / "pii_redactor.wasm"
    stale.write_bytes(stale.read_bytes() + b"\0")
    result = subprocess.run(
        ["bash", str(copy / "check_build.sh")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "plugins/pii_redactor.wasm differs" in result.stderr
    assert "plugins/rate_limiter.wasm is up to date" in result.stderr
