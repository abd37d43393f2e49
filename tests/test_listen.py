# -*- test-case-name: tests.test_listen -*-
"""
A port the gateway cannot listen on: one line naming the config key, from
C{twistd wasmgate} (exit 1, no traceback) and from C{wasmgate check --bind},
with real processes and real sockets.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from twisted.internet.error import CannotListenError

from wasmgate._listen import refusal_line

ROOT = Path(__file__).resolve().parent.parent
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
WASMGATE = os.path.join(os.path.dirname(sys.executable), "wasmgate")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(tmp_path: Path, *, listen: list[int], admin: int) -> Path:
    path = tmp_path / "gateway.yaml"
    endpoints = ", ".join(f'"tcp:{port}:interface=127.0.0.1"' for port in listen)
    path.write_text(
        f"server: {{listen: [{endpoints}]}}\n"
        f'admin: {{listen: "tcp:{admin}:interface=127.0.0.1"}}\n'
        "routes: [{match: {path_prefix: /}, upstream: u}]\n"
        "upstreams: {u: {targets: ['http://127.0.0.1:1']}}\n"
    )
    return path


def test_twistd_names_the_busy_listener(tmp_path, busy_port):
    path = write_config(tmp_path, listen=[free_port(), busy_port], admin=free_port())
    pidfile = tmp_path / "twistd.pid"
    twistd = run(TWISTD, f"--pidfile={pidfile}", "-n", "wasmgate", "-c", str(path), cwd=tmp_path)
    assert twistd.returncode == 1, twistd.stdout + twistd.stderr
    assert twistd.stderr == (
        f"wasmgate: cannot start: server.listen[1]: 127.0.0.1:{busy_port} is already in use\n"
    )
    assert "Traceback" not in twistd.stdout
    assert not pidfile.exists()


def test_twistd_names_a_busy_admin_port(tmp_path, busy_port):
    path = write_config(tmp_path, listen=[free_port()], admin=busy_port)
    twistd = run(TWISTD, "--pidfile=", "-n", "wasmgate", "-c", str(path), cwd=tmp_path)
    assert twistd.returncode == 1, twistd.stdout + twistd.stderr
    assert twistd.stderr == f"wasmgate: cannot start: admin.listen: 127.0.0.1:{busy_port} is already in use\n"
    assert "Traceback" not in twistd.stdout


def test_check_does_not_bind_unless_asked(tmp_path, busy_port):
    path = write_config(tmp_path, listen=[busy_port], admin=free_port())
    check = run(WASMGATE, "check", "-c", str(path), cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert check.stdout == f"{path}: ok (1 routes, 1 upstreams, 0 plugins)\n{path}: runs 1 process with 4 filter threads\n"


def test_check_bind_names_every_busy_listener(tmp_path, busy_port):
    """Two listeners on one port fail as at start: the second finds it taken."""
    twice = free_port()
    path = write_config(tmp_path, listen=[busy_port, twice, twice], admin=busy_port)
    check = run(WASMGATE, "check", "-c", str(path), "--bind", cwd=tmp_path)
    assert check.returncode == 1
    assert check.stdout == ""
    assert check.stderr.splitlines() == [
        f"{path}: server.listen[0]: 127.0.0.1:{busy_port} is already in use",
        f"{path}: server.listen[2]: 127.0.0.1:{twice} is already in use",
        f"{path}: admin.listen: 127.0.0.1:{busy_port} is already in use",
    ]


def test_check_bind_lets_go_of_what_it_listened_on(tmp_path):
    ports = [free_port(), free_port()]
    path = write_config(tmp_path, listen=ports[:1], admin=ports[1])
    check = run(WASMGATE, "check", "-c", str(path), "--bind", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert check.stdout.splitlines()[0] == (
        f"{path}: ok (1 routes, 1 upstreams, 0 plugins; listened on 2 addresses and let go)"
    )
    for port in ports:  # really listened: and nothing holds them now
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_an_address_this_machine_does_not_have(tmp_path):
    """192.0.2.1 is TEST-NET-1: never a local address."""
    path = tmp_path / "gateway.yaml"
    path.write_text(
        'server: {listen: "tcp:8080:interface=192.0.2.1"}\nadmin: {listen: "tcp:0:interface=127.0.0.1"}\n'
        "routes: [{match: {path_prefix: /}, upstream: u}]\n"
        "upstreams: {u: {targets: ['http://127.0.0.1:1']}}\n"
    )
    check = run(WASMGATE, "check", "-c", str(path), "--bind", cwd=tmp_path)
    assert check.returncode == 1
    assert check.stderr == f"{path}: server.listen[0]: 192.0.2.1:8080: this machine has no such address\n"


def test_refusal_lines_for_every_kind_of_address():
    """Addresses as twistd reports them: IPv6 in brackets, every address, a UNIX path."""
    in_use = OSError(98, "Address already in use")
    assert refusal_line("server.listen[0]", CannotListenError("::1", 8443, in_use)) == (
        "server.listen[0]: [::1]:8443 is already in use"
    )
    assert refusal_line("server.listen[0]", CannotListenError("", 8443, in_use)) == (
        "server.listen[0]: 0.0.0.0:8443 is already in use"
    )
    assert refusal_line("server.listen[0]", CannotListenError(None, "/run/gw.sock", in_use)) == (
        "server.listen[0]: /run/gw.sock is already in use"
    )
    denied = OSError(13, "Permission denied")
    assert refusal_line("server.listen[0]", CannotListenError("", 443, denied)) == (
        "server.listen[0]: 0.0.0.0:443: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    )
    other = OSError(24, "Too many open files")
    assert refusal_line("admin.listen", CannotListenError("127.0.0.1", 9090, other)) == (
        "admin.listen: cannot listen on 127.0.0.1:9090: Too many open files"
    )
