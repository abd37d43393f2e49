"""
Per-call cost of one filter call, raw path vs checked path.

    python bench/filter_call.py [--n 20000]

Measures L{WasmFilter.run_request} on the calling thread (encode, write
into guest memory, the call, read + validate + apply the output), for
JSON-ABI guests (pass-through, header-rewrite, counter), one bare export
call, and the same request padded to a 1 KiB payload; then the Extism ABI
(docs/extism.md): a pass-through plugin, a plugin that reads its whole
1 KiB input through the kernel and writes it back as its output (the
payload round trip alone, and through run_request, where that output is
applied as a ResponseAction). Not part of CI; prints microseconds per call.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import wasmtime  # noqa: E402

from tests import extism_guests, wasm_guests  # noqa: E402
from wasmgate.state import MemoryCounterStore  # noqa: E402
from wasmgate.wasm.engine import WasmEngine  # noqa: E402
from wasmgate.wasm.filter import WasmFilter  # noqa: E402
from wasmgate.wasm.messages import FilterRequest  # noqa: E402


def request() -> FilterRequest:
    return FilterRequest(
        method="GET",
        path="/api/v1/users/42",
        query="page=2",
        headers=[
            ("host", "api.example.com"),
            ("user-agent", "bench/1.0"),
            ("accept", "application/json"),
            ("x-remove-me", "1"),
        ],
        client_ip="192.0.2.10",
    )


def request_1k() -> FilterRequest:
    """The bench request padded so its JSON payload is about 1 KiB."""
    req = request()
    req.headers.append(("x-padding", "p" * (1024 - len(json_payload(req)) - 16)))
    return req


def json_payload(req: FilterRequest) -> bytes:
    from wasmgate.wasm._extism_seed import encode_request

    return encode_request(req, include_body=False)


def per_call(fn, n: int) -> float:
    for _ in range(min(n // 10, 1000)):
        fn()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - started) / n)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    guests = {
        "pass-through": wasm_guests.PASS_THROUGH,
        "header-rewrite": wasm_guests.HEADER_REWRITE,
        "counter_incr": wasm_guests.COUNTER,
    }
    print("%-16s %10s %10s" % ("us per call", "raw", "checked"))
    rows: dict[str, list[float]] = {}
    for raw in (True, False):
        engine = WasmEngine(raw_calls=raw)
        engine.start()
        try:
            for label, wat in guests.items():
                f = WasmFilter(
                    name="bench",
                    module=engine.compile(wasmtime.wat2wasm(wat)),
                    engine=engine,
                    state=MemoryCounterStore(),
                )
                rows.setdefault(label, []).append(per_call(lambda: f.run_request(request()), args.n))
                f.close()
            f = WasmFilter(
                name="bench",
                module=engine.compile(wasmtime.wat2wasm(wasm_guests.PASS_THROUGH)),
                engine=engine,
            )
            f.run_request(request())
            ctx = f._local.ctx
            ctx.store.set_epoch_deadline(1 << 40)  # the bare loop runs longer than one call's deadline
            call = ctx.abi_state["request"]
            rows.setdefault("bare export", []).append(per_call(lambda: call(0, 0), args.n * 5))
            big = request_1k()
            rows.setdefault("json 1KiB req", []).append(per_call(lambda: f.run_request(big), args.n))
            f.close()
            payload = json_payload(big)
            assert 1000 <= len(payload) <= 1100, len(payload)
            extism_guests_rows = {
                "extism pass": (extism_guests.echo(""), lambda f: f.run_request(request())),
                "extism 1KiB trip": (extism_guests.ROUND_TRIP, None),
                "extism 1KiB req": (extism_guests.ROUND_TRIP, lambda f: f.run_request(big)),
            }
            for label, (wat, run) in extism_guests_rows.items():
                f = WasmFilter(name="bench", module=engine.compile(wasmtime.wat2wasm(wat)), engine=engine)
                if run is None:
                    ctx = f._instance()
                    ctx.store.set_epoch_deadline(1 << 40)
                    call = f.abi.call
                    assert call(ctx, payload) == payload

                    def run(f, call=call, ctx=ctx):
                        return call(ctx, payload)

                rows.setdefault(label, []).append(per_call(lambda: run(f), args.n))
                f.close()
        finally:
            engine.stop()
    for label, (raw_us, checked_us) in rows.items():
        print("%-16s %10.2f %10.2f" % (label, raw_us, checked_us))


if __name__ == "__main__":
    main()
