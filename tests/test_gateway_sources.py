"""
Plugins fetched from an S3-compatible store (a real moto server) by a real
gateway: loaded, pinned, and reloaded when the object changes.
"""
from __future__ import annotations

import hashlib
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import pytest_twisted
import wasmtime
from twisted.internet import reactor, task, threads
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from tests import wasm_guests as guests
from tests.certs import issue, make_ca, write_pair
from tests.conftest import gateway_yaml
from tests.test_sources import aws_env, s3  # noqa: F401 (fixtures)
from wasmgate.config import ConfigError

PASS = wasmtime.wat2wasm(guests.PASS_THROUGH)
BLOCK = wasmtime.wat2wasm(guests.BLOCK_403)


def _config(upstream_url: str, url: str, extra: str = "") -> str:
    routes = "  - {name: all, match: {path_prefix: /}, filters: [remote], upstream: backend}\n"
    return gateway_yaml(upstream_url, routes=routes).replace(
        "routes:\n", f'plugins:\n  - {{name: remote, path: "{url}"{extra}}}\nroutes:\n'
    )


@pytest_twisted.ensureDeferred
async def test_s3_plugin_loads_and_reloads_when_the_object_changes(s3, upstream, start_gateway, http):  # noqa: F811
    s3.put("filters/remote.wasm", PASS)
    gw = start_gateway(_config(upstream.url, s3.url("filters/remote.wasm"), ", reload_interval: 200ms"))
    response = await http.get(gw.url + "/echo")
    assert response.code == 200
    await response.content()
    s3.put("filters/remote.wasm", BLOCK)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        response = await http.get(gw.url + "/echo")
        await response.content()
        if response.code == 403:
            break
        await task.deferLater(reactor, 0.1, lambda: None)
    assert response.code == 403


def test_s3_plugin_with_the_wrong_pin_is_refused(s3, upstream, start_gateway):  # noqa: F811
    s3.put("filters/remote.wasm", PASS)
    wrong = hashlib.sha256(BLOCK).hexdigest()
    url = s3.url("filters/remote.wasm")
    with pytest.raises(ConfigError) as info:
        start_gateway(_config(upstream.url, url, f", sha256: {wrong}"))
    [problem] = info.value.problems
    assert problem.endswith(
        f"plugins[0] (remote): s3://{s3.bucket}/filters/remote.wasm has sha256"
        f" {hashlib.sha256(PASS).hexdigest()}, but the config pins {wrong}"
    )



class _PluginServer:
    """
    An HTTPS server in its own thread (the gateway fetches its plugins
    synchronously at start, on the reactor thread): serves C{files}, or
    answers every request with C{status} when that is set.
    """

    def __init__(self, tmp_path: Any) -> None:
        ca = make_ca("plugin server CA")
        self.ca_file = str(tmp_path / "plugin-ca.pem")
        (tmp_path / "plugin-ca.pem").write_bytes(ca.cert_pem)
        write_pair(issue(ca, ["localhost"]), tmp_path / "plugin-srv.pem", tmp_path / "plugin-srv.key")
        self.files: dict[str, bytes] = {}
        self.status: int | None = None
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                data = owner.files.get(self.path)
                code = owner.status or (200 if data is not None else 404)
                body = data if code == 200 and data is not None else b"no"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tmp_path / "plugin-srv.pem"), str(tmp_path / "plugin-srv.key"))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.base = f"https://localhost:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join()
        self.httpd.server_close()


@pytest.fixture
def plugin_server(tmp_path: Any) -> Iterator[_PluginServer]:
    running = _PluginServer(tmp_path)
    yield running
    running.stop()


async def _wait_for_line(lines: list[str], *needles: str, within: float = 5.0) -> str:
    """The first log line holding every one of C{needles}, polled for."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for line in lines:
            if all(needle in line for needle in needles):
                return line
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"no log line with {needles!r} in {within}s: {lines[-3:]!r}")


@pytest_twisted.ensureDeferred
async def test_https_plugin_keeps_its_module_when_the_server_fails(
    plugin_server, upstream, start_gateway, http, tmp_path, monkeypatch
):
    """
    A plugin watched over https:// whose server starts answering 500, then
    goes away, stays loaded: the gateway keeps serving with the module it
    has (no reload) and logs a warning each time, first falling back to
    its cached copy, then, with the cache gone, keeping the current module.
    """
    # The gateway verifies plugin servers against the system trust store.
    monkeypatch.setenv("SSL_CERT_FILE", plugin_server.ca_file)
    plugin_server.files["/remote.wasm"] = BLOCK
    url = plugin_server.base + "/remote.wasm"
    text = _config(upstream.url, url, ", reload_interval: 100ms").replace(
        "plugins:\n", "filters: {cache_dir: cache}\nplugins:\n", 1
    )
    warnings: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical):
            warnings.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        gw = start_gateway(text)
        generation = gw.service.generation.number

        async def still_blocked() -> None:
            response = await http.get(gw.url + "/echo")
            await response.content()
            assert response.code == 403  # the loaded module still runs
            assert gw.service.generation.number == generation  # and was not reloaded

        await still_blocked()
        # The watch does fetch it again (and finds it unchanged).
        for _ in range(100):
            if plugin_server.hits >= 2:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        assert plugin_server.hits >= 2
        assert warnings == []
        cached = list((tmp_path / "cache" / "plugins").iterdir())
        assert [p.read_bytes() for p in cached] == [BLOCK]

        plugin_server.status = 500
        line = await _wait_for_line(warnings, "plugin remote", "HTTP 500", "using the cached copy")
        assert "Traceback" not in line
        await still_blocked()

        for path in cached:
            path.unlink()
        await _wait_for_line(warnings, "plugin remote: fetching", "HTTP 500", "keeping the current module")
        await still_blocked()

        await threads.deferToThread(plugin_server.stop)
        warnings.clear()
        line = await _wait_for_line(
            warnings, "plugin remote: fetching", "keeping the current module", "refused"
        )
        assert "Traceback" not in line
        await still_blocked()
    finally:
        globalLogPublisher.removeObserver(observe)
