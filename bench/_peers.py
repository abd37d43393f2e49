"""
The rows of the comparison: for each proxy, the files it needs (rendered
into the run's temporary directory) and the command that starts it.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from typing import Any, Optional

import yaml

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
PEERS = os.path.join(BENCH, "peers")

# High enough that no limiter ever says no during a run.
RATE_LIMIT = 100_000_000
UPSTREAM_BODY = "hello from the static upstream: a fixed 200 body for wasmgate's bench\\n"


@dataclass(frozen=True)
class Context:
    """What every peer's start-up needs to know about this run."""

    workdir: str
    upstream_port: int
    nginx_modules: str
    cert: str
    key: str


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    scheme: str = "http"
    # Also measured for new connections (Connection: close, handshakes).
    connections: bool = False
    # Seconds to wait for the first answer.
    ready_timeout: float = 15.0


ROWS: tuple[Row, ...] = (
    Row("nginx", "nginx proxy_pass"),
    Row("nginx-lua", "nginx + Lua filters"),
    Row("node", "Node http-proxy + JS filters"),
    Row("twisted", "bare Twisted Agent proxy"),
    Row("wasmgate", "wasmgate, no filters", connections=True, ready_timeout=60.0),
    Row("wasmgate-filters", "wasmgate + 2 wasm filters", ready_timeout=60.0),
    Row("wasmgate-tls", "wasmgate TLS, no filters", scheme="https", connections=True, ready_timeout=60.0),
)
BASELINE = "wasmgate-filters"


def render(template: str, out: str, **values: Any) -> str:
    with open(os.path.join(PEERS, template)) as f:
        text = f.read()
    for name, value in values.items():
        text = text.replace(f"@{name}@", str(value))
    leftover = re.findall(r"@[A-Z_]+@", text)
    if leftover:
        raise ValueError(f"{template}: unfilled placeholders {leftover}")
    with open(out, "w") as f:
        f.write(text)
    return out


def _nginx_dir(ctx: Context, name: str) -> str:
    d = os.path.join(ctx.workdir, name)
    for sub in ("", "body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    return d


def nginx_argv(conf: str, prefix: str) -> list[str]:
    return ["nginx", "-p", prefix, "-e", os.path.join(prefix, "error.log"), "-c", conf]


def upstream_command(ctx: Context) -> list[str]:
    d = _nginx_dir(ctx, "upstream")
    conf = render(
        "nginx/upstream.conf",
        os.path.join(d, "nginx.conf"),
        DIR=d,
        PORT=ctx.upstream_port,
        BODY=UPSTREAM_BODY,
    )
    return nginx_argv(conf, d)


def wasmgate_config(
    ctx: Context,
    *,
    port: int,
    admin_port: int,
    filters: bool,
    tls: bool,
    plugin_dir: Optional[str] = None,
    limit: int = RATE_LIMIT,
    workers: int = 1,
) -> dict[str, Any]:
    plugin_dir = plugin_dir or os.path.join(ROOT, "plugins")
    config: dict[str, Any] = {
        "server": {
            "listen": f"tcp:{port}:interface=127.0.0.1",
            "trusted_proxies": ["127.0.0.1/32"],
            "workers": workers,
        },
        "admin": {"listen": f"tcp:{admin_port}:interface=127.0.0.1"},
        # Like every peer here (nginx's access_log off, Node and the bare
        # Twisted proxy log nothing): through twisted.logger the access log
        # costs ~25-50 us/request, measured separately; this bench leaves
        # it out.
        "access_log": "off",
        "routes": [{"name": "all", "match": {"path_prefix": "/"}, "upstream": "backend"}],
        "upstreams": {"backend": {"targets": [f"http://127.0.0.1:{ctx.upstream_port}"]}},
    }
    if tls:
        config["server"]["tls"] = {
            "certificates": [{"hosts": ["localhost"], "cert": ctx.cert, "key": ctx.key}]
        }
    if filters:
        config["plugins"] = [
            {
                "name": "rate_limiter",
                "path": os.path.join(plugin_dir, "rate_limiter.wasm"),
                "timeout_ms": 50,
                "config": {"limit": limit, "window": "60s", "key": "client_ip"},
            },
            {
                "name": "pii_redactor",
                "path": os.path.join(plugin_dir, "pii_redactor.wasm"),
                "config": {"headers": ["authorization", "cookie", "x-api-key"]},
            },
        ]
        config["routes"][0]["filters"] = ["rate_limiter", "pii_redactor"]
    return config


def write_yaml(path: str, data: dict[str, Any]) -> str:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    os.replace(tmp, path)  # a reload never sees half a file
    return path


def twistd() -> list[str]:
    found = shutil.which("twistd") or os.path.join(os.path.dirname(sys.executable), "twistd")
    return [found]


def wasmgate_argv(config_path: str) -> list[str]:
    return twistd() + ["-n", "--pidfile=", "wasmgate", "-c", config_path]


def peer_command(row: Row, ctx: Context, *, port: int, admin_port: int) -> tuple[list[str], Optional[str]]:
    """The argv that starts this row's proxy on C{port}, and its cwd."""
    upstream = f"http://127.0.0.1:{ctx.upstream_port}"
    if row.key in ("nginx", "nginx-lua"):
        d = _nginx_dir(ctx, row.key)
        template = "nginx/proxy.conf" if row.key == "nginx" else "nginx/proxy_lua.conf"
        conf = render(
            template,
            os.path.join(d, "nginx.conf"),
            DIR=d,
            PORT=port,
            UPSTREAM_PORT=ctx.upstream_port,
            MODULES=ctx.nginx_modules,
            PEERS=PEERS,
            RL_LIMIT=RATE_LIMIT,
        )
        return nginx_argv(conf, d), d
    if row.key == "node":
        script = os.path.join(PEERS, "node", "proxy.js")
        return ["node", script, "--port", str(port), "--upstream", upstream, "--limit", str(RATE_LIMIT)], None
    if row.key == "twisted":
        script = os.path.join(PEERS, "twisted_proxy.py")
        return [sys.executable, script, "--port", str(port), "--upstream", upstream], None
    if row.key.startswith("wasmgate"):
        d = os.path.join(ctx.workdir, row.key)
        os.makedirs(d, exist_ok=True)
        config = wasmgate_config(
            ctx,
            port=port,
            admin_port=admin_port,
            filters=row.key == "wasmgate-filters",
            tls=row.scheme == "https",
        )
        path = write_yaml(os.path.join(d, "gateway.yaml"), config)
        return wasmgate_argv(path), d
    raise ValueError(f"unknown row {row.key!r}")
