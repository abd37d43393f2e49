# -*- test-case-name: tests.test_exchange_lifetime -*-
"""
A finished exchange is freed by reference counting, not left to the garbage
collector: the gateway tunes the collector to run rarely, so every cycle
left behind by a request is memory held under load (tens of MiB at 500
connections before the forward let go of its exchange).
"""
from __future__ import annotations

import gc
import shutil
from pathlib import Path

import pytest_twisted

from tests.conftest import gateway_yaml
from wasmgate import proxy
from wasmgate.http.message import RequestBody
from wasmgate.wasm import chain

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"

FILTERS = """
plugins:
  - name: rate_limiter
    path: rate_limiter.wasm
    config: {limit: 1000000, window: 60s, key: client_ip}
  - name: pii_redactor
    path: pii_redactor.wasm
"""

ROUTES = """
  - {name: filtered, match: {path_prefix: /f}, upstream: backend,
     filters: [rate_limiter, pii_redactor]}
  - {name: plain, match: {path_prefix: /}, upstream: backend}
"""


def _alive(cls: type) -> int:
    """How many instances of C{cls} the collector tracks, reachable or not."""
    return sum(1 for o in gc.get_objects() if type(o) is cls)


@pytest_twisted.ensureDeferred
async def test_finished_exchanges_need_no_garbage_collection(
    upstream, start_gateway, http, tmp_path
):
    for name in ("rate_limiter", "pii_redactor"):
        shutil.copy(PLUGINS / f"{name}.wasm", tmp_path / f"{name}.wasm")
    gw = start_gateway(gateway_yaml(upstream.url, extra=FILTERS, routes=ROUTES))
    # Warm up: pools, instances and the client's connection exist before.
    for path in ("/f/echo", "/echo"):
        await (await http.get(gw.url + path, headers={"Authorization": "x"})).content()
    gc.collect()
    gc.disable()
    try:
        before = (_alive(proxy.Exchange), _alive(chain.RequestRun), _alive(RequestBody))
        for _ in range(20):
            for path in ("/f/echo", "/echo"):
                response = await http.get(gw.url + path, headers={"Authorization": "x"})
                await response.content()
                assert response.code == 200
                # A body, streamed upstream on the plain route, read by
                # the redactor on the filtered one.
                response = await http.post(gw.url + path, data=b"x" * 1024)
                await response.content()
                assert response.code == 200
        after = (_alive(proxy.Exchange), _alive(chain.RequestRun), _alive(RequestBody))
    finally:
        gc.enable()
    # Eighty requests later, at most the one in flight per path is left.
    assert after[0] - before[0] <= 2, after
    assert after[1] - before[1] <= 2, after
    assert after[2] - before[2] <= 2, after
