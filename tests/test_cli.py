"""
The command line as users run it: C{wasmgate check}, and C{twistd wasmgate}
as a real subprocess on the shipped example.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "gateway.yaml"
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
WASMGATE = os.path.join(os.path.dirname(sys.executable), "wasmgate")

BAD_CONFIGS = {
    "unknown key": (
        "routes: [{match: {path_prefix: /}, upstream: u, colour: red}]\n"
        "upstreams: {u: {targets: ['http://127.0.0.1:1']}}\n",
        "routes[0].colour: unknown key",
    ),
    "wrong type": (
        "server: {max_body_bytes: lots}\n"
        "routes: [{match: {path_prefix: /}, upstream: u}]\n"
        "upstreams: {u: {targets: ['http://127.0.0.1:1']}}\n",
        "server.max_body_bytes: expected an integer, got a string",
    ),
    "bad duration": (
        "server: {timeouts: {upstream: forever}}\n"
        "routes: [{match: {path_prefix: /}, upstream: u}]\n"
        "upstreams: {u: {targets: ['http://127.0.0.1:1']}}\n",
        "server.timeouts.upstream: expected a duration like 500ms, 10s or 1m, got 'forever'",
    ),
    "missing upstream": (
        "routes: [{match: {path_prefix: /}, upstream: nope}]\n"
        "upstreams: {u: {targets: ['http://127.0.0.1:1']}}\n",
        "routes[0].upstream: no upstream named 'nope'",
    ),
    "yaml syntax": (
        "routes: [\n  {match: {path_prefix: /}\nupstreams: {}\n",
        "line 3, column 1: YAML syntax error",
    ),
}


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_check_accepts_the_example():
    result = run(WASMGATE, "check", "-c", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_explains_workers(tmp_path):
    """What runs: a supervisor and N workers, filter threads per worker, where counters live."""
    text = EXAMPLE.read_text().replace("../plugins/", str(EXAMPLE.parent.parent / "plugins") + "/")
    config = tmp_path / "gateway.yaml"
    config.write_text(text.replace('listen: "tcp:8080:interface=127.0.0.1"', 'listen: "tcp:8080:interface=127.0.0.1"\n  workers: 3', 1))
    result = run(WASMGATE, "check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == (
        f"{config}: runs a supervisor and 3 worker processes, each with 4 filter threads"
        " (12 in all; filters.threads is per worker); filter counters shared by the workers in memory"
    )
    config.write_text(text.replace('listen: "tcp:8080:interface=127.0.0.1"', 'listen: "tcp:8080:interface=127.0.0.1"\n  workers: none', 1))
    result = run(WASMGATE, "check", "-c", str(config))
    assert result.returncode == 1
    assert f"{config}: server.workers: expected auto or a number of processes from 1 to 256, got 'none'" in result.stderr


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_configs_refused_by_check_and_twistd(tmp_path, case):
    text, expected = BAD_CONFIGS[case]
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    check = run(WASMGATE, "check", "-c", str(path))
    assert check.returncode == 1
    assert f"{path}: {expected}" in check.stderr
    twistd = run(TWISTD, "--pidfile=", "-n", "wasmgate", "-c", str(path))
    assert twistd.returncode != 0
    assert f"{path}: {expected}" in twistd.stderr
    assert "Traceback" not in twistd.stderr


def test_missing_config_file(tmp_path):
    path = tmp_path / "absent.yaml"
    check = run(WASMGATE, "check", "-c", str(path))
    assert check.returncode == 1
    assert f"{path}: cannot read the config file" in check.stderr
    twistd = run(TWISTD, "--pidfile=", "-n", "wasmgate", "-c", str(path))
    assert twistd.returncode != 0
    assert "cannot read the config file" in twistd.stderr


def test_twistd_lists_the_plugin():
    result = run(TWISTD, "--help")
    assert "wasmgate" in result.stdout


def _wait_for(url: str, deadline: float) -> bytes:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_example_serves_and_stops_on_sigterm(tmp_path):
    """The README's first command, as a user runs it (demo upstream included)."""
    for port in (8080, 9000, 9090):
        assert _port_free(port), f"port {port} is busy; the example needs it"
    demo = subprocess.Popen([WASMGATE, "demo-upstream", "--port", "9000"], cwd=tmp_path)
    gateway = subprocess.Popen(
        [TWISTD, "--pidfile=", "-n", "wasmgate", "-c", str(EXAMPLE)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        body = _wait_for("http://127.0.0.1:8080/hello?x=1", time.monotonic() + 30)
        echo = json.loads(body)
        assert echo["uri"] == "/hello?x=1"
        request = urllib.request.Request(
            "http://127.0.0.1:8080/hello", headers={"Authorization": "Bearer secret"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            redacted = json.loads(response.read())
            assert response.headers["RateLimit-Policy"]
        assert redacted["headers"]["authorization"] == ["REDACTED"]
        assert echo["headers"]["x-forwarded-for"] == ["127.0.0.1"]
        assert _wait_for("http://127.0.0.1:9090/healthz", time.monotonic() + 5) == b"ok\n"
        gateway.send_signal(signal.SIGTERM)
        output, _ = gateway.communicate(timeout=30)
        assert gateway.returncode == 0, output.decode()
        assert b"Traceback" not in output
        assert b'"path":"/hello"' in output  # the JSON access log line
        assert b"reactor class: wasmgate._reactor.EagerWriteReactor" in output
    finally:
        for process in (gateway, demo):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_check_names_a_broken_plugin(tmp_path):
    import wasmtime

    from tests import wasm_guests

    (tmp_path / "bad.wasm").write_bytes(wasmtime.wat2wasm(wasm_guests.MISSING_HANDLE_REQUEST))
    (tmp_path / "not.wasm").write_bytes(b"this is not wasm")
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "plugins:\n  - {name: bad, path: bad.wasm}\n  - {name: junk, path: not.wasm}\n"
        "routes: [{match: {path_prefix: /}, upstream: u, filters: [bad, junk]}]\n"
        "upstreams: {u: {targets: ['http://127.0.0.1:1']}}\n"
    )
    check = run(WASMGATE, "check", "-c", str(path))
    assert check.returncode == 1
    assert f"{path}: plugins[0] (bad): " in check.stderr
    assert "handle_request" in check.stderr
    assert f"{path}: plugins[1] (junk): not a valid wasm module" in check.stderr
    twistd = run(TWISTD, "--pidfile=", "-n", "wasmgate", "-c", str(path))
    assert twistd.returncode != 0
    assert "plugins[0] (bad)" in twistd.stderr and "Traceback" not in twistd.stderr


def test_plugin_inspect():
    result = run(WASMGATE, "plugin", "inspect", str(ROOT / "plugins" / "pii_redactor.wasm"))
    assert result.returncode == 0, result.stdout
    assert "ABI:      json" in result.stdout
    assert "handle_response" in result.stdout


def _two_certificates_config(tmp_path):
    """A gateway.yaml serving a.pem/a.key and b.pem/b.key over TLS."""
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "server:\n  listen: tcp:8443\n  tls:\n    certificates:\n"
        "      - {hosts: [a.example.com], cert: a.pem, key: a.key}\n"
        "      - {hosts: [b.example.com], cert: b.pem, key: b.key}\n"
        "routes: [{match: {path_prefix: /}, upstream: u}]\n"
        "upstreams: {u: {targets: ['http://127.0.0.1:1']}}\n"
    )
    return path


def test_check_validates_the_tls_section(tmp_path):
    from tests.certs import issue, make_ca, write_pair

    ca = make_ca()
    write_pair(issue(ca, ["a.example.com"]), tmp_path / "a.pem", tmp_path / "a.key")
    other = issue(ca, ["b.example.com"])
    write_pair(issue(ca, ["b.example.com"]), tmp_path / "b.pem", tmp_path / "unused.key")
    (tmp_path / "b.key").write_bytes(other.key_pem)  # a key that is not b.pem's
    path = _two_certificates_config(tmp_path)
    check = run(WASMGATE, "check", "-c", str(path))
    assert check.returncode == 1
    [line] = [l for l in check.stderr.splitlines() if "b.key" in l or "b.pem" in l]
    assert line.startswith(f"{path}: server.tls: ")
    assert f"{tmp_path / 'b.key'}: private key does not match the certificate in {tmp_path / 'b.pem'}" in line
    twistd = run(TWISTD, "--pidfile=", "-n", "wasmgate", "-c", str(path))
    assert twistd.returncode != 0 and "server.tls" in twistd.stderr


def test_check_warns_about_an_expired_certificate(tmp_path):
    """
    An expired certificate is served (one forgotten host must not stop the
    others), so C{check} warns and passes; a key that does not match still
    fails it.
    """
    from datetime import datetime, timedelta, timezone

    from tests.certs import issue, make_ca, write_pair

    ca = make_ca()
    now = datetime.now(timezone.utc)
    expired_at = (now - timedelta(days=1)).replace(microsecond=0)
    write_pair(issue(ca, ["a.example.com"]), tmp_path / "a.pem", tmp_path / "a.key")
    write_pair(
        issue(ca, ["b.example.com"], not_before=now - timedelta(days=90), not_after=expired_at),
        tmp_path / "b.pem",
        tmp_path / "b.key",
    )
    path = _two_certificates_config(tmp_path)
    check = run(WASMGATE, "check", "-c", str(path))
    assert check.returncode == 0, check.stderr
    assert f"{path}: ok" in check.stdout
    [line] = check.stderr.splitlines()
    assert line.startswith(
        f"{path}: server.tls.certificates[1].cert: warning: {tmp_path / 'b.pem'}: "
        f"certificate expired at {expired_at:%Y-%m-%dT%H:%M:%SZ} (b.example.com, serial "
    ), line

    (tmp_path / "b.key").write_bytes(issue(ca, ["b.example.com"]).key_pem)
    check = run(WASMGATE, "check", "-c", str(path))
    assert check.returncode == 1
    assert (
        f"{path}: server.tls: {tmp_path / 'b.key'}: private key does not match the "
        f"certificate in {tmp_path / 'b.pem'}"
    ) in check.stderr


def test_systemd_listener_without_a_socket_is_a_clear_error(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(
        'server: {listen: "systemd:domain=INET:index=0"}\n'
        "routes: [{match: {path_prefix: /}, upstream: u}]\n"
        "upstreams: {u: {targets: ['http://127.0.0.1:1']}}\n"
    )
    twistd = run(TWISTD, "--pidfile=", "-n", "wasmgate", "-c", str(path))
    assert twistd.returncode != 0
    assert f"{path}: server.listen[0]: cannot listen on 'systemd:domain=INET:index=0': systemd passed no such socket" in twistd.stderr


def test_check_loads_upstream_ca_files(tmp_path):
    """A CA bundle that holds no certificate fails the check, naming the key."""
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "routes: [{match: {path_prefix: /}, upstream: u}]\n"
        f"upstreams: {{u: {{targets: ['https://127.0.0.1:1'], ca_file: {tmp_path / 'ca.pem'}}}}}\n"
    )
    check = run(WASMGATE, "check", "-c", str(path))
    assert check.returncode == 1
    assert f"{path}: upstreams.u.ca_file: {tmp_path / 'ca.pem'}: no PEM CA certificate in file" in check.stderr


RATE_LIMITER = ROOT / "plugins" / "rate_limiter.wasm"

INIT_TRAPS = """
(module
  (memory (export "memory") 2)
  (func (export "wasmgate_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_request") (param i32 i32) (result i64) (i64.const 0))
  (func (export "wasmgate_init") (param i32 i32) (result i32) unreachable)
)
"""


def test_plugin_inspect_without_config_is_not_broken():
    """
    The bundled rate limiter refuses an empty config (it needs a C{limit}):
    inspecting it without one says so, with its reason, and that it loads.
    """
    result = run(WASMGATE, "plugin", "inspect", str(RATE_LIMITER))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loads: NO" not in result.stdout
    assert (
        "  loads: yes (its wasmgate_init refused an empty config: pass --plugin-config to check yours)\n"
        "    - wasmgate_init refused the plugin's config (returned 1): "
        "rate_limiter: bad config: 'limit' is required\n"
    ) in result.stdout


def test_plugin_inspect_with_config(tmp_path):
    """A given config is what C{wasmgate_init} gets; refusing it fails."""
    good = run(
        WASMGATE, "plugin", "inspect", str(RATE_LIMITER),
        "--plugin-config-json", '{"limit": 10, "window": "60s", "key": "client_ip"}',
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.endswith("  loads: yes\n")
    (tmp_path / "rl.yaml").write_text("limit: 10\nwindow: 60s\n")
    from_file = run(WASMGATE, "plugin", "inspect", str(RATE_LIMITER), "--plugin-config", str(tmp_path / "rl.yaml"))
    assert from_file.returncode == 0, from_file.stdout + from_file.stderr
    assert from_file.stdout.endswith("  loads: yes\n")
    (tmp_path / "rl.json").write_text('{"limit": 10}')
    for option, value in [("--plugin-config-json", '{"limit": 10}'), ("--plugin-config", str(tmp_path / "rl.json"))]:
        bad = run(WASMGATE, "plugin", "inspect", str(RATE_LIMITER), option, value)
        assert bad.returncode == 1
        assert bad.stdout.endswith(
            "  loads: NO\n    - wasmgate_init refused the plugin's config (returned 1): "
            "rate_limiter: bad config: 'window' is required (e.g. \"60s\")\n"
        ), bad.stdout
    not_a_mapping = run(WASMGATE, "plugin", "inspect", str(RATE_LIMITER), "--plugin-config-json", "[1]")
    assert not_a_mapping.returncode == 2
    assert "--plugin-config-json: expected a mapping, got list" in not_a_mapping.stderr


def test_plugin_inspect_a_configured_plugin(tmp_path):
    """C{-c gateway.yaml NAME} loads the plugin with the config the gateway gives it."""
    result = run(WASMGATE, "plugin", "inspect", "-c", str(EXAMPLE), "rate_limiter")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"plugin rate_limiter: {RATE_LIMITER} (")
    assert result.stdout.endswith("  loads: yes\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"plugins: [{{name: rl, path: {RATE_LIMITER}, config: {{limit: 0, window: 1m}}}}]\n"
        "routes: [{match: {path_prefix: /}, upstream: u, filters: [rl]}]\n"
        "upstreams: {u: {targets: ['http://127.0.0.1:1']}}\n"
    )
    bad = run(WASMGATE, "plugin", "inspect", "-c", str(path), "rl")
    assert bad.returncode == 1
    assert "  loads: NO\n    - wasmgate_init refused the plugin's config" in bad.stdout
    assert "limit" in bad.stdout.splitlines()[-1]
    missing = run(WASMGATE, "plugin", "inspect", "-c", str(path), "nope")
    assert missing.returncode == 1
    assert f"{path}: no plugin named 'nope' (plugins: rl)" in missing.stderr


def test_plugin_inspect_without_config_still_fails_a_broken_module(tmp_path):
    """
    Without a config only C{wasmgate_init} refusing it is forgiven: a module
    that cannot load for another reason is still NO, with that reason.
    """
    import wasmtime

    from tests import wasm_guests

    cases = {
        "refuses": (wasm_guests.INIT_REFUSES, None),
        "unknown_import": (wasm_guests.UNKNOWN_IMPORT, "env.launch_missiles"),
        "no_memory": (wasm_guests.NO_MEMORY, "missing export 'memory'"),
        "init_traps": (INIT_TRAPS, "initialisation failed (trap)"),
    }
    for name, (wat, reason) in cases.items():
        path = tmp_path / f"{name}.wasm"
        path.write_bytes(wasmtime.wat2wasm(wat))
        result = run(WASMGATE, "plugin", "inspect", str(path))
        if reason is None:
            assert result.returncode == 0, result.stdout
            assert "  loads: yes (its wasmgate_init refused an empty config" in result.stdout
            continue
        assert result.returncode == 1, result.stdout
        assert "refused an empty config" not in result.stdout
        [problem] = result.stdout.split("  loads: NO\n")[1].splitlines()
        assert problem.startswith("    - ") and reason in problem, result.stdout


_NOT_SOURCE_AT_TOP = {".git", "bench", "plugins", "tests", "build", "dist", ".ruff_cache", ".benchmarks"}
_NOT_SOURCE = ("*.egg-info", "__pycache__", "dropin.cache", ".pytest_cache")


def _not_source(directory: str, names: list[str]) -> set[str]:
    """What a copy of the checkout to build from leaves out."""
    import shutil

    ignored = set(shutil.ignore_patterns(*_NOT_SOURCE)(directory, names))
    if Path(directory) == ROOT:
        ignored |= _NOT_SOURCE_AT_TOP & set(names)
    return ignored

_FIND_FROM_WHEEL = """
import json, os, sys
checkout, installed = (os.path.realpath(p) for p in sys.argv[1:3])
# Only the unpacked wheel: not the editable checkout, not the current directory.
sys.path[:] = [installed] + [p for p in sys.path if p and os.path.realpath(p) != checkout]
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
import twisted, twisted.plugins
makers = {m.tapname: m for m in getPlugins(IServiceMaker, twisted.plugins)}
maker = makers["wasmgate"]
options = maker.options()
options.parseOptions(["-c", "mine.yaml"])
import wasmgate, twisted.plugins.wasmgate_plugin as plugin
from wasmgate.twistd import make_twistd_service
print(json.dumps({"twisted": twisted.__file__, "plugin": plugin.__file__,
                  "wasmgate": wasmgate.__file__, "config": options["config"]}))
"""


def test_twistd_plugin_ships_in_the_wheel(tmp_path):
    """
    A wheel of the project carries the twistd plugin as a bare module in
    Twisted's C{twisted.plugins} namespace (no C{__init__.py} that would
    shadow Twisted's own), and Twisted's plugin discovery finds it there,
    with the checkout out of the way.
    """
    import shutil
    import zipfile

    source = tmp_path / "src"  # build a copy: setuptools writes build/ and egg-info beside it
    shutil.copytree(ROOT, source, ignore=_not_source)
    # setuptools and wheel (a test extra) are installed: build offline.
    command = [
        sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
        "-q", "-w", str(tmp_path / "dist"),
    ]
    built = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=source, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (tmp_path / "dist").glob("wasmgate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/wasmgate_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not [n for n in names if n.startswith("twisted/") and n != "twisted/plugins/wasmgate_plugin.py"]
    assert "wasmgate/__init__.py" in names and "wasmgate/wasm/_raw.py" in names
    templates = sorted(p.name for p in (ROOT / "wasmgate" / "_template").iterdir())
    assert templates and all(f"wasmgate/_template/{t}" in names for t in templates)  # plugin new

    installed = tmp_path / "installed"
    zipfile.ZipFile(wheel).extractall(installed)
    found = subprocess.run(
        [sys.executable, "-c", _FIND_FROM_WHEEL, str(ROOT), str(installed)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
    )
    assert found.returncode == 0, found.stderr
    where = json.loads(found.stdout)
    assert where["plugin"].startswith(str(installed)), where
    assert where["wasmgate"].startswith(str(installed)), where
    assert not where["twisted"].startswith(str(installed)), where  # Twisted's own package
    assert where["config"] == "mine.yaml"


def test_check_warns_when_a_redactor_runs_before_a_limiter_keyed_on_the_header(tmp_path):
    """The issue's trap: every API key becomes REDACTED before the limiter sees it."""
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"plugins:\n  - {{name: pii_redactor, path: {ROOT / 'plugins' / 'pii_redactor.wasm'}}}\n"
        f"  - {{name: rate_limiter, path: {RATE_LIMITER},"
        " config: {limit: 10, window: 1m, key: 'header:x-api-key'}}\n"
        "routes: [{name: api, match: {path_prefix: /}, upstream: u, filters: [pii_redactor, rate_limiter]}]\n"
        "upstreams: {u: {targets: ['http://127.0.0.1:1']}}\n"
    )
    check = run(WASMGATE, "check", "-c", str(path))
    assert check.returncode == 0, check.stderr
    assert check.stderr == (
        f"{path}: routes[0].filters: warning: on route api, pii_redactor replaces header x-api-key"
        " with REDACTED before rate_limiter sees it, but rate_limiter is keyed on that header"
        " (plugins[1].config.key: header:x-api-key), so every client gets the same key;"
        " list rate_limiter before pii_redactor\n"
    )


def test_version_from_both_commands():
    """Both print wasmgate's version first, then what runs filters and serves HTTP."""
    import platform
    from importlib import metadata

    expected = (
        f"wasmgate {metadata.version('wasmgate')}\n"
        f"wasmtime {metadata.version('wasmtime')}\n"
        f"Twisted {metadata.version('twisted')}\n"
        f"httptools {metadata.version('httptools')}\n"
        f"Python {platform.python_version()} ({platform.python_implementation()})\n"
    )
    assert metadata.version("wasmgate") == _setup_cfg_version()
    for command in ([WASMGATE, "--version"], [TWISTD, "wasmgate", "--version"]):
        result = run(*command)
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected, command


def _setup_cfg_version() -> str:
    import configparser

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    return setup["metadata"]["version"]
