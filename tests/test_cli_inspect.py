"""
C{wasmgate plugin inspect} loads a module as the gateway would: with
C{-c} and a plugin's name, with its C{export:} and its raw config bytes
(C{config_raw:}/C{config_base64:}); on a file, with C{--export NAME}.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import wasmtime

from tests import extism_guests as x
from tests import httpwasm_guests as hw

WASMGATE = os.path.join(os.path.dirname(sys.executable), "wasmgate")

CHECK = x.KERNEL_PROBE.replace('(export "handler")', '(export "check")')
"""An Extism plugin whose calls go to C{check}."""

_s = hw.Strings()
WANTS_XYZ = hw.module(
    _s,
    """
  (func (export "_initialize")
    ;; start-up fails unless get_config gives exactly the bytes "xyz"
    (if (i32.ne (call $get_config (i32.const 16384) (i32.const 64)) (i32.const 3))
      (then unreachable))
    (if (i32.ne (i32.load16_u (i32.const 16384)) (i32.const 0x7978))
      (then unreachable))
    (if (i32.ne (i32.load8_u (i32.const 16386)) (i32.const 0x7a))
      (then unreachable)))
  (func (export "handle_request") (result i64) (i64.const 1))
""",
)
"""An http-wasm guest that loads only with the raw config C{xyz}."""


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([WASMGATE, *args], capture_output=True, text=True, timeout=60)


def _write(tmp_path: Path, name: str, wat: str) -> Path:
    path = tmp_path / name
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


def _gateway(tmp_path: Path, plugins: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "server: {listen: 'tcp:0:interface=127.0.0.1'}\n"
        f"plugins:\n{plugins}"
        "routes: [{match: {path_prefix: /}, upstream: u}]\n"
        "upstreams: {u: {targets: ['http://127.0.0.1:1']}}\n"
    )
    return path


def test_export_option_on_a_file(tmp_path):
    module = _write(tmp_path, "check.wasm", CHECK)
    default = run("plugin", "inspect", str(module))
    assert default.returncode == 1
    assert "exports no function 'handler' to call" in default.stdout
    chosen = run("plugin", "inspect", str(module), "--export", "check")
    assert chosen.returncode == 0, chosen.stdout + chosen.stderr
    assert "  calls:    check\n" in chosen.stdout
    assert chosen.stdout.endswith("  loads: yes\n")


def test_configured_plugin_with_its_export(tmp_path):
    module = _write(tmp_path, "check.wasm", CHECK)
    config = _gateway(tmp_path, f"  - {{name: checker, path: {module}, export: check}}\n")
    result = run("plugin", "inspect", "-c", str(config), "checker")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  calls:    check\n" in result.stdout
    assert result.stdout.endswith("  loads: yes\n")
    # --export still chooses.
    other = run("plugin", "inspect", "-c", str(config), "checker", "--export", "handler")
    assert other.returncode == 1
    assert "exports no function 'handler' to call" in other.stdout


def test_configured_plugin_with_raw_config_bytes(tmp_path):
    module = _write(tmp_path, "xyz.wasm", WANTS_XYZ)
    config = _gateway(
        tmp_path,
        f"  - {{name: raw, path: {module}, config_raw: xyz}}\n"
        f"  - {{name: b64, path: {module}, config_base64: eHl6}}\n"
        f"  - {{name: plain, path: {module}}}\n",
    )
    for name in ("raw", "b64"):
        result = run("plugin", "inspect", "-c", str(config), name)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.endswith("  loads: yes\n")
    # Without the bytes the guest gets "{}" and traps while it starts.
    plain = run("plugin", "inspect", "-c", str(config), "plain")
    assert plain.returncode == 1 and "  loads: NO\n" in plain.stdout
    # A config given on the command line replaces them.
    given = run("plugin", "inspect", "-c", str(config), "raw", "--plugin-config-json", "{}")
    assert given.returncode == 1 and "  loads: NO\n" in given.stdout
