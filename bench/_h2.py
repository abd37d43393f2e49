"""
The HTTP/2 rows: wasmgate with TLS and both filters, driven over HTTP/1.1
by wrk and over HTTP/2 (ALPN h2) by h2load (Debian's nghttp2-client), one
stream per connection and ten, with the gateway's CPU time per request.
"""
from __future__ import annotations

import os
import re
import shutil
from typing import Any, Callable, Optional

import _harness as h
import _peers as p

_FINISHED = re.compile(r"finished in ([\d.]+)s, ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout")
_LATENCY = re.compile(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)")


def _ms(text: str) -> float:
    value = float(re.match(r"[\d.]+", text).group(0))  # type: ignore[union-attr]
    return value / 1000 if text.endswith("us") else value * 1000 if text.endswith("s") and not text.endswith("ms") else value


def _h2load(processes: h.Processes, url: str, *, connections: int, streams: int, seconds: int, warmup: int, cpu: Optional[int]) -> dict[str, Any]:
    argv = ["h2load", "-t1", f"-c{connections}", f"-m{streams}", f"-D{seconds}", f"--warm-up-time={warmup}", url]
    started = processes.start("h2load", argv, cpu=cpu, capture=True)
    try:
        out, err = started.popen.communicate(timeout=seconds + warmup + 30)
    finally:
        processes.stop(started)
    text = out.decode("utf-8", "replace")
    finished, requests, latency = _FINISHED.search(text), _REQUESTS.search(text), _LATENCY.search(text)
    if not (finished and requests and latency):
        tail = (err.decode("utf-8", "replace") + text).strip().splitlines()[-5:]
        return {"ok": False, "error": "h2load failed: " + " | ".join(tail)}
    total, done, ok, failed, errored, timeouts = (int(x) for x in requests.groups())
    return {
        "ok": True,
        "requests": ok,
        "rps": float(finished.group(2)),
        "seconds": float(finished.group(1)),
        "errors": failed + errored + timeouts + (done - ok),
        "mean_ms": _ms(latency.group(3)),
        "max_ms": _ms(latency.group(2)),
    }


def bench_h2(
    ctx: p.Context, processes: h.Processes, ns: Any, cell: Callable[..., dict[str, Any]], *, proxy_cpu: Optional[int], load_cpu: Optional[int]
) -> dict[str, Any]:
    out: dict[str, Any] = {"error": "", "cells": {}}
    if shutil.which("h2load") is None:
        out["error"] = "h2load is not installed (apt-get install nghttp2-client)"
        return out
    port, admin_port = h.free_port(), h.free_port()
    d = os.path.join(ctx.workdir, "h2")
    os.makedirs(d, exist_ok=True)
    config = p.wasmgate_config(ctx, port=port, admin_port=admin_port, filters=True, tls=True)
    path = p.write_yaml(os.path.join(d, "gateway.yaml"), config)
    gateway = processes.start("wasmgate-h2", p.wasmgate_argv(path), cpu=proxy_cpu, log_path=os.path.join(d, "wasmgate.log"), cwd=d)
    try:
        status, why = h.wait_ready(gateway, "https", port, timeout=60)
        if status != 200:
            out["error"] = f"wasmgate did not start: {why or status}; log tail:\n{gateway.log_tail()}"
            return out
        url = f"https://127.0.0.1:{port}/"
        out["cells"]["h1"] = c = cell(gateway, processes, url, ns, connections=50)
        print(f"   HTTP/1.1 (wrk, 50 connections): {c.get('rps', 0):,.0f} req/s, {c.get('cpu_us_per_request')} µs CPU/req")
        for streams in (1, 10):
            if ns.warmup:
                _h2load(processes, url, connections=50, streams=streams, seconds=ns.warmup, warmup=0, cpu=load_cpu)
            pids = gateway.tree()
            before = h.cpu_seconds(pids)
            result = _h2load(processes, url, connections=50, streams=streams, seconds=ns.duration, warmup=0, cpu=load_cpu)
            cpu = h.cpu_seconds(pids) - before
            if result.get("ok") and result["requests"]:
                result["cpu_us_per_request"] = round(cpu * 1e6 / result["requests"], 1)
            out["cells"][f"h2x{streams}"] = result
            print(f"   HTTP/2 (h2load, 50 connections x {streams} streams): " + (
                f"{result['rps']:,.0f} req/s, {result.get('cpu_us_per_request')} µs CPU/req, mean {result['mean_ms']:.2f} ms"
                if result.get("ok") else result["error"]
            ))
        return out
    finally:
        processes.stop(gateway)


def markdown(h2: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## HTTP/2 (wasmgate TLS + 2 wasm filters)",
        "",
        "The same gateway and upstream; HTTP/1.1 by wrk (50 keep-alive connections), HTTP/2 by h2load "
        "(50 connections, ALPN h2, 1 or 10 concurrent streams each). h2load reports mean and max latency, "
        "not percentiles. Upstreams are HTTP/1.1 either way.",
        "",
        "| client | req/s | latency ms | errors | CPU µs/req |",
        "|---|---:|---:|---:|---:|",
    ]
    titles = {"h1": "HTTP/1.1, wrk", "h2x1": "HTTP/2, h2load, 1 stream/conn", "h2x10": "HTTP/2, h2load, 10 streams/conn"}
    for key, title in titles.items():
        c = h2.get("cells", {}).get(key)
        if not c:
            continue
        if not c.get("ok"):
            lines.append(f"| {title} | {c.get('error', 'failed')} | | | |")
        elif key == "h1":
            lines.append(f"| {title} | {c['rps']:,.0f} | p50 {c['p50_ms']:.2f}, p99 {c['p99_ms']:.2f} | {c['errors']:,} | {c['cpu_us_per_request']} |")
        else:
            lines.append(f"| {title} | {c['rps']:,.0f} | mean {c['mean_ms']:.2f}, max {c['max_ms']:.2f} | {c['errors']:,} | {c.get('cpu_us_per_request', '—')} |")
    if h2.get("error"):
        lines += ["", f"**FAILED**: {h2['error'].strip().splitlines()[0]}"]
    return lines
