"""
The workers scenario: wasmgate with both filters (the rate limiter counting
every request in the counter store) with 1 and then 2 worker processes,
neither pinned (both cores are the proxy's to use; wrk and the upstream
stay on theirs), and what one counter_incr costs in each store.

On a 2-core machine wrk and the upstream share a core with the second
worker, so req/s cannot double here; CPU µs per request is the number that
shows what running several processes and sharing counters costs.
"""
from __future__ import annotations

import os
import re
import urllib.request
from typing import Any, Callable

import _harness as h
import _peers as p
import counters


def _spread(admin_port: int) -> dict[str, float]:
    """Requests each worker answered (from the supervisor's /metrics)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {w: float(n) for w, n in re.findall(r'wasmgate_worker_requests_total\{worker="(\d+)"\} (\S+)', text)}


def bench_workers(
    ctx: p.Context, processes: h.Processes, ns: Any, cell: Callable[..., dict[str, Any]], *, pin: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": {}, "error": ""}
    for workers in (1, 2):
        port, admin_port = h.free_port(), h.free_port()
        d = os.path.join(ctx.workdir, f"workers-{workers}")
        os.makedirs(d, exist_ok=True)
        config = p.wasmgate_config(ctx, port=port, admin_port=admin_port, filters=True, tls=False, workers=workers)
        path = p.write_yaml(os.path.join(d, "gateway.yaml"), config)
        argv = p.wasmgate_argv(path)
        if pin:
            argv = ["taskset", "-c", "0-1", *argv]  # this script runs on one core: not inherited
        log_path = os.path.join(d, "wasmgate.log")
        gateway = processes.start(f"wasmgate-{workers}w", argv, cpu=None, log_path=log_path, cwd=d)
        try:
            status, why = h.wait_ready(gateway, "http", port, timeout=90)
            if status != 200:
                out["error"] = f"{workers} workers: {why or status}; log tail:\n{gateway.log_tail()}"
                return out
            result = cell(gateway, processes, f"http://127.0.0.1:{port}/", ns, connections=50)
            if workers > 1:
                result["spread"] = _spread(admin_port)
            out["runs"][str(workers)] = result
            print(f"   {workers} worker(s): " + (
                f"{result['rps']:,.0f} req/s, {result['cpu_us_per_request']} µs CPU/req, p99 {result['p99_ms']:.2f} ms"
                + (f", per worker {result.get('spread')}" if workers > 1 else "")
                if result.get("ok") else f"FAILED {result.get('error')}"
            ))
        finally:
            processes.stop(gateway)
    out["counters"] = counters.measure(seconds=1.0 if ns.quick else 2.0)
    print(f"   counter_incr µs: {out['counters']}")
    return out


def markdown(workers: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Workers (wasmgate + 2 wasm filters, GET, 50 connections)",
        "",
        "`server.workers: 1` and `2`, the gateway on both cores (wrk and the upstream pinned to core 1, so "
        "the second worker shares that core with them: req/s cannot double on this machine). The rate "
        "limiter counts every request: with one worker in its process's memory store, with two in the "
        "shared-memory table.",
        "",
        "| workers | req/s | p99 ms | errors | CPU µs/req | RSS MiB | requests per worker |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n, c in workers.get("runs", {}).items():
        if not c.get("ok"):
            lines.append(f"| {n} | {c.get('error', 'failed')} | | | | | |")
            continue
        spread = ", ".join(f"{v:,.0f}" for v in c.get("spread", {}).values()) or "—"
        lines.append(
            f"| {n} | {c['rps']:,.0f} | {c['p99_ms']:.2f} | {c['errors']:,} | {c['cpu_us_per_request']} | "
            f"{c['peak_rss_mib']:.0f} | {spread} |"
        )
    cost = workers.get("counters")
    if cost:
        lines += [
            "",
            "One `counter_incr` (`bench/counters.py`): memory store "
            f"{cost['memory_us']} µs; shared-memory table {cost['shared_us']} µs alone, "
            f"{cost['shared_contended_us']} µs while another process increments the same keys nonstop.",
        ]
    if workers.get("error"):
        lines += ["", f"**FAILED**: {workers['error'].strip().splitlines()[0]}"]
    return lines
