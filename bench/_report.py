"""
bench/run's results as markdown: one table per scenario with each row's
req/s as a ratio to wasmgate with its filters, then new connections, the
reload under load and whatever failed.
"""
from __future__ import annotations

from typing import Any, Optional


def ms(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.1f}"


def _num(x: Optional[float], fmt: str = "{:,.0f}") -> str:
    return "—" if x is None else fmt.format(x)


def _errors(cell: dict[str, Any]) -> str:
    n = cell.get("errors", 0)
    detail = cell.get("errors_detail", {})
    total = cell.get("requests", 0) + sum(detail.get(k, 0) for k in ("connect", "read", "write", "timeouts"))
    if not n:
        return "0"
    share = f" ({100 * n / total:.0f}%)" if total else ""
    return f"{n:,}{share}"


def _cores(cell: dict[str, Any]) -> str:
    cores = cell.get("cores_busy") or {}
    if "cpu0" not in cores or "cpu1" not in cores:
        return "—"
    return f"{cores['cpu0'] * 100:.0f}% / {cores['cpu1'] * 100:.0f}%"


def cell_line(title: str, cell: dict[str, Any]) -> str:
    """One line of progress for the terminal."""
    if not cell.get("ok"):
        return f"{title}: FAILED {cell.get('error', '')}"
    return (
        f"{title}: {cell['rps']:,.0f} req/s, p50 {cell['p50_ms']:.2f} ms, p99 {cell['p99_ms']:.2f} ms, "
        f"{_errors(cell)} errors, {cell['peak_rss_mib']} MiB, {_num(cell['cpu_us_per_request'], '{:.0f}')} µs CPU/req, "
        f"proxy CPU {_num(cell['cpu_util'] and cell['cpu_util'] * 100, '{:.0f}%')}, cores 0/1 busy {_cores(cell)}"
    )


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    rows = results["rows"]
    base_key = meta["baseline"]
    base_title = rows.get(base_key, {}).get("title", meta.get("baseline_title", base_key))
    lines = [
        "# wasmgate bench",
        "",
        f"Run {meta['started']} ({'--quick, ' if meta['quick'] else ''}{meta['cell_seconds']} s per cell after "
        f"{meta['warmup_seconds']} s of warm-up) on {meta['cpus']} × {meta['cpu_model']}; "
        + (
            f"the proxy pinned to core {meta['proxy_cpu']}, wrk and the static nginx upstream to core {meta['load_cpu']}."
            if meta["pinned"]
            else "nothing pinned."
        ),
        f"Load average at start {meta['loadavg_at_start']}, at end {meta.get('loadavg_at_end')}: "
        "other work on the machine shows up in these numbers.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
        "",
        f"**ratio** is a row's req/s divided by that of *{base_title}* in the same scenario. "
        "**errors** are non-2xx/3xx answers + socket errors + timeouts (2 s); "
        "**RSS** is the proxy's peak resident memory during the cell (all its processes); "
        "**CPU µs/req** is the proxy's user+system time per request; **proxy CPU** is that time over the "
        "cell's length; **cores 0/1 busy** is how busy each core was, whoever ran there (kernel accounting, "
        "approximate): core 1 near 100% means wrk and the upstream were the limit, not the proxy; core 0 "
        "well above proxy CPU means something else took the proxy's core.",
    ]
    for scenario in results["scenarios"] if rows else []:
        key = scenario["key"]
        base = rows.get(base_key, {}).get("cells", {}).get(key)
        base_rps = base["rps"] if base and base.get("ok") and rows[base_key]["status"] == "ok" else None
        lines += [
            "",
            f"## {scenario['title']}",
            "",
            "| proxy | req/s | ratio | p50 ms | p99 ms | errors | RSS MiB | CPU µs/req | proxy CPU | cores 0/1 busy |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row_key, row in rows.items():
            cell = row.get("cells", {}).get(key)
            title = row["title"] + ("" if row["status"] == "ok" else f" **({row['status'].upper()})**")
            if cell is None or not cell.get("ok"):
                why = "not measured" if cell is None else cell.get("error", "failed")
                lines.append(f"| {title} | {why} | | | | | | | | |")
                continue
            ratio = f"{cell['rps'] / base_rps:.2f}×" if base_rps else "—"
            lines.append(
                f"| {title} | {cell['rps']:,.0f} | {ratio} | {cell['p50_ms']:.2f} | {cell['p99_ms']:.2f} | "
                f"{_errors(cell)} | {cell['peak_rss_mib']:.0f} | {_num(cell['cpu_us_per_request'])} | "
                f"{_num(cell['cpu_util'] and cell['cpu_util'] * 100, '{:.0f}%')} | {_cores(cell)} |"
            )
        if base_rps is None:
            lines += ["", f"(no ratios: *{base_title}* has no clean result in this scenario)"]

    if results.get("connections"):
        lines += [
            "",
            "## New connections: TLS vs plain (wasmgate, no filters)",
            "",
            "Keep-alive is the GET 50-connection cell above; *close* is wrk with `Connection: close` "
            "(a new connection, and for TLS a full handshake, per request); *sequential* is "
            "`bench/handshakes.py`, one connection after another from a single client.",
            "",
            "| listener | keep-alive req/s | close req/s | close CPU µs/req | sequential conn+GET/s | sequential TLS handshakes/s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row_key, c in results["connections"].items():
            keep = rows.get(row_key, {}).get("cells", {}).get("get50") or {}
            close = c.get("close50") or {}
            hs = c.get("sequential_handshake")
            lines.append(
                f"| {'TLS' if c['tls'] else 'plain'} | {_num(keep.get('rps'))} | {_num(close.get('rps'))}"
                f"{' (' + _errors(close) + ' errors)' if close.get('errors') else ''} | "
                f"{_num(close.get('cpu_us_per_request'))} | {_num(c['sequential_request']['per_second'])} | "
                f"{_num(hs['per_second']) if hs else '—'} |"
            )

    if results.get("h2"):
        from _h2 import markdown as h2_markdown

        lines += h2_markdown(results["h2"])

    if results.get("workers"):
        from _workers import markdown as workers_markdown

        lines += workers_markdown(results["workers"])

    reload = results.get("reload")
    if reload:
        lines += ["", "## Reload under load (wasmgate + 2 wasm filters)", ""]
        if reload.get("wrk"):
            w = reload["wrk"]
            lines += [
                f"wrk GET with {reload['connections']} connections for {reload['seconds']} s while SIGHUP reloaded "
                f"{len(reload['reloads'])} times, each with the plugins copied to a new path and a changed limit: "
                f"{w['rps']:,.0f} req/s, p99 {w['p99_ms']:.1f} ms, max {w['max_ms']:.1f} ms, "
                f"**{_errors(w)} failed requests**{_detail(w['errors_detail'])}.",
                "",
                "| reload | generation | live in the log (ms) | on /metrics (ms) |",
                "|---:|---:|---:|---:|",
            ]
            for r in reload["reloads"]:
                if r.get("error"):
                    lines.append(f"| {r['n']} | — | {r['error'][:80]} | |")
                else:
                    lines.append(f"| {r['n']} | {r['generation']} | {ms(r['log_ms'])} | {ms(r['metrics_ms'])} |")
        if reload.get("error"):
            lines += ["", f"**FAILED**: {_first_line(reload['error'])}"]

    failed = [(row["title"], row["error"]) for row in rows.values() if row["status"] != "ok"]
    if failed:
        lines += ["", "## Failed rows", ""]
        for title, error in failed:
            first, _, rest = error.partition("\n")
            lines.append(f"- **{title}**: {first}")
            if rest.strip():
                lines += ["", "  ```", *("  " + line for line in rest.strip().splitlines()[-12:]), "  ```"]
    return "\n".join(lines) + "\n"


def _detail(detail: dict[str, int]) -> str:
    parts = [f"{k.replace('_', ' ')} {v:,}" for k, v in detail.items() if v]
    return f" ({', '.join(parts)})" if parts else ""


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
