# -*- test-case-name: tests.test_testing -*-
"""
Helpers for testing your own filters without a gateway (like C{treq.testing}).

    from wasmgate.testing import run_filter
    from wasmgate.wasm.messages import Answer

    result = run_filter(
        "plugins/rate_limiter.wasm", path="/api", config={"limit": 1, "window": "60s"}
    )
    assert not isinstance(result, Answer)

Everything is synchronous and real: a wasmtime engine, the filter built as
the gateway builds it, one call on the calling thread. Failures raise
L{FilterFailure} (its C{kind} says trap/timeout/oom/bad_output/state) and
modules that would not load raise L{PluginLoadError}.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Union

import wasmtime

from wasmgate.state import CounterStore, MemoryCounterStore
from wasmgate.wasm.engine import WasmEngine
from wasmgate.wasm.filter import FilterFailure, Pins, PluginLoadError, WasmFilter
from wasmgate.wasm.messages import Answer, Continue, FilterRequest, FilterResponse, Headers

__all__ = [
    "FilterFailure",
    "FilterHarness",
    "PluginLoadError",
    "load_wasm",
    "make_request",
    "memory_store",
    "run_filter",
    "run_response_filter",
]

WasmSource = Union[bytes, str, "os.PathLike[str]"]


def memory_store(*, max_keys: int = 100_000) -> MemoryCounterStore:
    """A fresh in-memory counter store (share one between calls to see state)."""
    return MemoryCounterStore(max_keys=max_keys)


def load_wasm(source: WasmSource) -> bytes:
    """
    Wasm bytes from binary wasm, WAT text, or a C{.wasm}/C{.wat} file path.
    """
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        if data[:4] == b"\0asm":
            return data
        return bytes(wasmtime.wat2wasm(data.decode("utf-8")))
    if isinstance(source, str) and source.lstrip().startswith("(module"):
        return bytes(wasmtime.wat2wasm(source))
    path = os.fspath(source)
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] == b"\0asm":
        return data
    return bytes(wasmtime.wat2wasm(data.decode("utf-8")))


def make_request(
    *,
    method: str = "GET",
    path: str = "/",
    query: str = "",
    headers: Union[Headers, dict, None] = None,
    client_ip: str = "127.0.0.1",
    body: Optional[bytes] = None,
    route: str = "",
    scheme: str = "http",
) -> FilterRequest:
    """A L{FilterRequest} with defaults; C{headers} may be a dict."""
    if headers is None:
        pairs: Headers = []
    elif isinstance(headers, dict):
        pairs = [(k.lower(), v) for k, v in headers.items()]
    else:
        pairs = [(k.lower(), v) for k, v in headers]
    return FilterRequest(
        method=method,
        path=path,
        query=query,
        headers=pairs,
        client_ip=client_ip,
        body=body,
        route=route,
        scheme=scheme,
    )


class FilterHarness:
    """
    An engine and one filter, for several calls; use as a context manager
    (or call L{close}) so the engine's ticker thread stops.
    """

    def __init__(
        self,
        wasm: WasmSource,
        *,
        name: str = "plugin",
        config: Optional[dict] = None,
        include_body: bool = False,
        state: Optional[CounterStore] = None,
        timeout_ms: float = 50,
        memory_limit_mb: float = 16,
        fuel: Optional[int] = None,
        failure_policy: str = "closed",
        log: Any = None,
        config_bytes: Optional[bytes] = None,
        export: str = "handler",
    ) -> None:
        self.engine = WasmEngine(fuel=fuel is not None)
        self.state = state if state is not None else memory_store()
        try:
            self.filter = WasmFilter(
                name=name,
                module=self.engine.compile(load_wasm(wasm)),
                engine=self.engine,
                timeout_ms=timeout_ms,
                memory_limit_mb=memory_limit_mb,
                failure_policy=failure_policy,
                fuel=fuel,
                config=config or {},
                include_body=include_body,
                config_bytes=config_bytes,
                export=export,
                state=self.state,
                log=log,
            )
        except BaseException:
            self.engine.stop()
            raise
        self._held: dict[int, tuple[FilterRequest, Pins]] = {}
        """Requests whose http-wasm instance waits for their response phase."""

    def request(
        self, request: Optional[FilterRequest] = None, *, route_config: Optional[dict] = None, **fields: Any
    ) -> Union[Answer, Continue]:
        """Run the request phase; raises L{FilterFailure} on failure."""
        req = request if request is not None else make_request(**fields)
        pins = Pins()
        result = self.filter.run_request(req, route_config=route_config, pins=pins)
        if pins:
            self._held[id(req)] = (req, pins)
        return result

    def response(
        self,
        response: Optional[FilterResponse] = None,
        *,
        request: Optional[FilterRequest] = None,
        status: int = 200,
        headers: Union[Headers, dict, None] = None,
        body: Optional[bytes] = None,
        route_config: Optional[dict] = None,
    ) -> FilterResponse:
        """
        Run the response phase (a no-op for request-only filters).

        An http-wasm guest answers a response on the instance its request
        phase was pinned to: when C{request} has not been through L{request}
        yet, its request phase runs first, as in the gateway.

        @raise ValueError: if that request phase answered by itself, so the
            gateway would never run the response phase.
        """
        if response is None:
            pairs = make_request(headers=headers).headers
            response = FilterResponse(status=status, headers=pairs, body=body)
        req = request if request is not None else make_request()
        if self.filter.pins_instances and id(req) not in self._held:
            first = self.request(req, route_config=route_config)
            if isinstance(first, Answer):
                raise ValueError(
                    "the guest answered the request itself (status %d): "
                    "no response phase runs" % (first.status,)
                )
        held = self._held.pop(id(req), None)
        pins = held[1] if held is not None else None
        return self.filter.run_response(req, response, route_config=route_config, pins=pins)

    def close(self) -> None:
        for req, pins in self._held.values():
            self.filter.abandon(req, pins)
        self._held.clear()
        self.filter.close()
        self.engine.stop()

    def __enter__(self) -> "FilterHarness":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_filter(
    wasm: WasmSource,
    request: Optional[FilterRequest] = None,
    *,
    config: Optional[dict] = None,
    include_body: bool = False,
    state: Optional[CounterStore] = None,
    timeout_ms: float = 50,
    memory_limit_mb: float = 16,
    fuel: Optional[int] = None,
    route_config: Optional[dict] = None,
    name: str = "plugin",
    config_bytes: Optional[bytes] = None,
    export: str = "handler",
    **request_fields: Any,
) -> Union[Answer, Continue]:
    """
    Load C{wasm} and run its request phase once.

    Give a L{FilterRequest}, or its fields as keywords (C{method}, C{path},
    C{query}, C{headers}, C{client_ip}, C{body}, C{route}). Any ABI runs:
    the wasmgate JSON ABI, http-wasm, Extism (C{export} names the function
    an Extism plugin's calls go to; C{config_bytes} is C{config_raw:}).
    """
    with FilterHarness(
        wasm,
        name=name,
        config=config,
        include_body=include_body,
        state=state,
        timeout_ms=timeout_ms,
        memory_limit_mb=memory_limit_mb,
        fuel=fuel,
        config_bytes=config_bytes,
        export=export,
    ) as h:
        return h.request(request, route_config=route_config, **request_fields)


def run_response_filter(
    wasm: WasmSource,
    response: Optional[FilterResponse] = None,
    *,
    request: Optional[FilterRequest] = None,
    status: int = 200,
    headers: Union[Headers, dict, None] = None,
    body: Optional[bytes] = None,
    config: Optional[dict] = None,
    include_body: bool = False,
    state: Optional[CounterStore] = None,
    timeout_ms: float = 50,
    memory_limit_mb: float = 16,
    route_config: Optional[dict] = None,
    name: str = "plugin",
) -> FilterResponse:
    """Load C{wasm} and run its response phase once on the given response."""
    with FilterHarness(
        wasm,
        name=name,
        config=config,
        include_body=include_body,
        state=state,
        timeout_ms=timeout_ms,
        memory_limit_mb=memory_limit_mb,
    ) as h:
        return h.response(
            response, request=request, status=status, headers=headers, body=body, route_config=route_config
        )
