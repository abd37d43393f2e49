# -*- test-case-name: tests.test_config -*-
"""
What a loaded gateway.yaml is: frozen dataclasses, one per section, and
L{ConfigError}.

Kept apart from the parsing so that the many modules that only read a
config import its shape, not the YAML reader and its validators.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """
    The configuration cannot be used; C{problems} lists every reason, each
    prefixed with the file name.
    """

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = [f"{path}: {p}" for p in problems]
        super().__init__("\n".join(self.problems))

    @classmethod
    def of_lines(cls, path: str, lines: list[str]) -> "ConfigError":
        """One whose problems are C{lines} as they are (already prefixed, e.g. from a worker)."""
        error = cls(path, [])
        error.problems = list(lines)
        error.args = ("\n".join(lines),)
        return error


@dataclass(frozen=True)
class Timeouts:
    read: float = 10.0
    """Client: the whole request (headers and body) must arrive within it."""
    write: float = 10.0
    """Client: a response write may not stall for longer."""
    idle: float = 60.0
    """Client keep-alive connections idle for longer are closed."""
    connect: float = 5.0
    """Upstream: TCP (and TLS) connect."""
    upstream: float = 30.0
    """Upstream: time to the response headers (a route may override)."""
    tunnel_idle: float = 3600.0
    """A WebSocket (upgraded) connection with no bytes either way for this long is closed."""


@dataclass(frozen=True)
class CertificateConfig:
    hosts: tuple[str, ...]
    cert: str
    key: str


@dataclass(frozen=True)
class TLSConfig:
    certificates: tuple[CertificateConfig, ...]
    watch_interval: float = 5.0
    min_version: str = "1.2"


@dataclass(frozen=True)
class ServerConfig:
    listen: tuple[str, ...] = ("tcp:8080",)
    tls: Optional[TLSConfig] = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_body_bytes: int = 1024 * 1024
    trusted_proxies: tuple[Network, ...] = ()
    shutdown_timeout: float = 15.0
    path_params: str = "route"
    """C{route}: C{/admin;x} takes the C{/admin} route (as Tomcat and Spring
    read it); C{reject}: a path with C{;} parameters gets 400."""
    max_connections: Optional[int] = None
    """Client connections open at once (None: from the file descriptor limit)."""
    banner: Optional[str] = None
    """A C{Server} header for the answers the gateway writes itself (None: none)."""
    http2: bool = True
    """Offer HTTP/2 to TLS clients (ALPN C{h2})."""
    h2c: bool = False
    """Take HTTP/2 with prior knowledge without TLS (behind a TLS load balancer)."""
    max_concurrent_streams: int = 100
    """HTTP/2 streams a client may have open at once."""
    workers: int = 1
    """Worker processes (0: C{auto}, one per CPU); more than one adds a supervisor."""

    def worker_count(self) -> int:
        """How many worker processes to run (C{auto} resolved on this machine)."""
        if self.workers:
            return self.workers
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class AdminConfig:
    listen: Optional[str] = "tcp:9090:interface=127.0.0.1"


@dataclass(frozen=True)
class StateConfig:
    backend: str = "memory"
    url: Optional[str] = None
    timeout: float = 0.025
    max_keys: int = 100_000


@dataclass(frozen=True)
class FiltersConfig:
    threads: int = 4
    max_queue: int = 1024
    """Filter jobs waiting for a thread, all routes together; more: 503."""
    epoch_tick: float = 0.005
    """5 ms: a 1 ms tick costs some 6% of a filtered request's CPU (bench/)."""
    cache_dir: Optional[str] = None


@dataclass(frozen=True)
class PluginConfig:
    name: str
    path: str
    """A file path (made absolute), or an https:// or s3:// URL."""
    sha256: Optional[str] = None
    timeout_ms: int = 50
    memory_limit_mb: int = 16
    failure_policy: str = "closed"
    fuel: Optional[int] = None
    reload_interval: Optional[float] = None
    include_body: bool = False
    max_instances: int = 256
    """http-wasm guests hold an instance per request in flight: at most this many."""
    config: Mapping[str, Any] = field(default_factory=dict)
    config_bytes: Optional[bytes] = None
    """C{config_raw:} (a string, as UTF-8) or C{config_base64:}: the exact bytes
    a guest that reads raw config gets (http-wasm C{get_config}) instead of
    C{config:} as JSON."""
    export: str = "handler"
    """Extism plugins: the exported function the gateway calls."""


@dataclass(frozen=True)
class RouteConfig:
    name: str
    path_prefix: str = "/"
    host: Optional[str] = None
    filters: tuple[str, ...] = ()
    upstream: str = ""
    timeout: Optional[float] = None
    filter_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    websocket: bool = True
    """Whether WebSocket upgrades are spliced through (false: 403)."""


@dataclass(frozen=True)
class HealthCheckConfig:
    path: str = "/health"
    interval: float = 10.0
    timeout: float = 2.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    expect_status: tuple[int, int] = (200, 399)


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    targets: tuple[str, ...]
    lb: str = "round_robin"
    health_check: Optional[HealthCheckConfig] = None
    ca_file: Optional[str] = None
    insecure_skip_verify: bool = False
    max_connections_per_target: Optional[int] = None
    """Requests in flight per target; None: no cap (as nginx's max_conns=0)."""
    eject_after_failures: int = 5
    eject_for: float = 10.0
    retry_methods: tuple[str, ...] = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class TracingConfig:
    otlp_endpoint: str
    """Where spans go: an OTLP/HTTP traces URL (http://collector:4318/v1/traces)."""
    sample_ratio: float = 0.01
    """Share of new traces exported; a trusted client's sampled flag is followed."""
    max_queue: int = 2048
    """Finished requests waiting for export; beyond, their spans are dropped (counted)."""
    service_name: str = "wasmgate"
    timeout: float = 5.0
    """How long one export may take, retries included, before its batch is dropped."""


@dataclass(frozen=True)
class GatewayConfig:
    source: str
    """The file this was read from (absolute)."""
    server: ServerConfig
    admin: AdminConfig
    state: StateConfig
    filters: FiltersConfig
    plugins: tuple[PluginConfig, ...]
    routes: tuple[RouteConfig, ...]
    upstreams: Mapping[str, UpstreamConfig]
    access_log: str = "log"
    """C{log} (twisted.logger), C{off}, or the path of a file of JSON lines."""
    tracing: Optional[TracingConfig] = None

    def plugin(self, name: str) -> PluginConfig:
        for plugin in self.plugins:
            if plugin.name == name:
                return plugin
        raise KeyError(name)
