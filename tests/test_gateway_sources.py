"""
Plugins fetched from an S3-compatible store (a real moto server) by a real
gateway: loaded, pinned, and reloaded when the object changes.
"""
from __future__ import annotations

import hashlib
import time

import pytest
import pytest_twisted
import wasmtime
from twisted.internet import reactor, task

from tests import wasm_guests as guests
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
