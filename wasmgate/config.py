# -*- test-case-name: tests.test_config -*-
"""
gateway.yaml, loaded and validated into frozen dataclasses.

Every mistake is reported at once, each naming the file, the key path
(C{routes[2].upstream}) and what is wrong, so an operator fixes a config in
one round instead of one error per restart.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

import yaml

from wasmgate import _schema as s

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


_TOP = ("server", "admin", "access_log", "state", "filters", "plugins", "routes", "upstreams", "tracing")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_SHA256 = re.compile(r"^(sha256:)?[0-9a-fA-F]{64}$")


def load_config(path: str) -> GatewayConfig:
    """
    Read and validate C{path}.

    @raise ConfigError: listing every problem found.
    """
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, [f"cannot read the config file: {e.strerror}"])
    return parse_config(text, source=path)


def parse_config(text: bytes | str, *, source: str) -> GatewayConfig:
    """
    Validate a YAML document; relative file paths in it are taken from the
    directory of C{source}.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(source, [f"{where}YAML syntax error: {problem}"])
    base = os.path.dirname(os.path.abspath(source))
    reader = s.Reader()
    if document is None:
        document = {}
    top = reader.mapping(document, "", _TOP)
    server = _server(reader, top.get("server"), base)
    admin = _admin(reader, top.get("admin"))
    state = _state(reader, top.get("state"))
    filters = _filters(reader, top.get("filters"), base)
    plugins = _plugins(reader, top.get("plugins"), base)
    upstreams = _upstreams(reader, top.get("upstreams"), base)
    routes = _routes(reader, top.get("routes"), plugins, upstreams)
    access_log = reader.get(top, "", "access_log", _access_log(base), "log")
    tracing = _tracing(reader, top.get("tracing"))
    _cross_checks(reader, server, plugins, state)
    if reader.problems:
        raise ConfigError(source, reader.problems)
    if filters.cache_dir is None and any("://" in p.path for p in plugins):
        # Plugins fetched from a URL must survive a restart without the
        # network: they get a cache even when none was configured.
        filters = replace(filters, cache_dir=default_cache_dir())
    return GatewayConfig(
        source=os.path.abspath(source),
        server=server,
        admin=admin,
        state=state,
        filters=filters,
        plugins=tuple(plugins),
        routes=tuple(routes),
        upstreams=upstreams,
        access_log=access_log,
        tracing=tracing,
    )


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> str:
    """
    Where fetched plugins and compiled modules go when C{filters.cache_dir}
    is not set: systemd's C{CacheDirectory=} (C{$CACHE_DIRECTORY}), else
    C{$XDG_CACHE_HOME/wasmgate}, else C{~/.cache/wasmgate}.
    """
    systemd = environ.get("CACHE_DIRECTORY", "").split(":")[0]
    if systemd:
        return systemd
    xdg = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "wasmgate")


def _access_log(base: str) -> Any:
    def convert(value: Any) -> str:
        if value is False:
            return "off"
        text = s.string(value)
        if text in ("log", "off"):
            return text
        path = _path(base)(text)
        if not os.path.isdir(os.path.dirname(path)):
            raise ValueError(f"expected log, off or a file path; no directory for {path}")
        return path

    return convert


def _path(base: str) -> Any:
    def convert(value: Any) -> str:
        return os.path.normpath(os.path.join(base, s.string(value)))

    return convert


def _listen(value: Any) -> tuple[str, ...]:
    listen = s.string_list(value)
    if not listen:
        raise ValueError("expected at least one endpoint like tcp:8080")
    for description in listen:
        kind = description.split(":", 1)[0]
        if kind not in ("tcp", "tcp6", "ssl", "unix", "systemd"):
            raise ValueError(
                f"{description!r} is not an endpoint this gateway listens on;"
                " use tcp:PORT, ssl:PORT:privateKey=...:certKey=..., unix:PATH"
                " or systemd:domain=INET:index=0"
            )
    return listen


def _server(reader: s.Reader, raw: Any, base: str) -> ServerConfig:
    data = reader.mapping(
        raw,
        "server",
        (
            "listen",
            "tls",
            "timeouts",
            "max_body_bytes",
            "trusted_proxies",
            "shutdown_timeout",
            "path_params",
            "max_connections",
            "banner",
            "http2",
            "h2c",
            "max_concurrent_streams",
            "workers",
        ),
    )
    listen = reader.get(data, "server", "listen", _listen, ("tcp:8080",))
    tls = _tls(reader, data.get("tls"), base) if data.get("tls") is not None else None
    times = reader.mapping(
        data.get("timeouts"),
        "server.timeouts",
        ("read", "write", "idle", "connect", "upstream", "tunnel_idle"),
    )
    defaults = Timeouts()
    positive = s.duration(minimum=0.001)
    timeouts = Timeouts(
        **{
            key: reader.get(times, "server.timeouts", key, positive, getattr(defaults, key))
            for key in ("read", "write", "idle", "connect", "upstream", "tunnel_idle")
        }
    )
    proxies = reader.get(
        data, "server", "trusted_proxies", lambda v: tuple(s.string_list(v)), ()
    )
    trusted = []
    for i, item in enumerate(proxies):
        try:
            trusted.append(s.network(item))
        except ValueError as e:
            reader.problem(f"server.trusted_proxies[{i}]", str(e))
    return ServerConfig(
        listen=listen,
        tls=tls,
        timeouts=timeouts,
        max_body_bytes=reader.get(
            data, "server", "max_body_bytes", s.integer(minimum=0), 1024 * 1024
        ),
        trusted_proxies=tuple(trusted),
        shutdown_timeout=reader.get(
            data, "server", "shutdown_timeout", s.duration(), 15.0
        ),
        path_params=reader.get(data, "server", "path_params", s.choice("route", "reject"), "route"),
        max_connections=reader.get(data, "server", "max_connections", s.integer(1, 10_000_000), None),
        banner=reader.get(data, "server", "banner", _banner, None),
        http2=reader.get(data, "server", "http2", s.boolean, True),
        h2c=reader.get(data, "server", "h2c", s.boolean, False),
        max_concurrent_streams=reader.get(
            data, "server", "max_concurrent_streams", s.integer(1, 10_000), 100
        ),
        workers=reader.get(data, "server", "workers", _workers, 1),
    )


def _workers(value: Any) -> int:
    if value == "auto":
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
        raise ValueError(f"expected auto or a number of processes from 1 to 256, got {value!r}")
    return value


def _banner(value: Any) -> Optional[str]:
    if value is False:
        return None
    text = s.string(value)
    if not re.match(r"^[\x21-\x7e][\x20-\x7e]*$", text):
        raise ValueError("expected printable ASCII (a product token like wasmgate/1), or false")
    return text


def _tls(reader: s.Reader, raw: Any, base: str) -> TLSConfig:
    data = reader.mapping(
        raw, "server.tls", ("certificates", "watch_interval", "min_version")
    )
    certificates = []
    entries = data.get("certificates")
    if not isinstance(entries, list) or not entries:
        reader.problem(
            "server.tls.certificates",
            "expected a non-empty list of {hosts, cert, key}",
        )
        entries = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(entries):
        where = f"server.tls.certificates[{i}]"
        item = reader.mapping(entry, where, ("hosts", "cert", "key"))
        hosts = reader.get(item, where, "hosts", s.string_list, ())
        for host in hosts:
            lowered = host.lower()
            if lowered in seen:
                reader.problem(
                    f"{where}.hosts",
                    f"{host!r} is already served by {seen[lowered]}",
                )
            seen[lowered] = where
        files = {}
        for key in ("cert", "key"):
            filename = reader.get(item, where, key, _path(base), "")
            if filename and not os.access(filename, os.R_OK):
                reader.problem(f"{where}.{key}", f"cannot read {filename}")
            files[key] = filename
        certificates.append(
            CertificateConfig(hosts=hosts, cert=files["cert"], key=files["key"])
        )
    return TLSConfig(
        certificates=tuple(certificates),
        watch_interval=reader.get(
            data, "server.tls", "watch_interval", s.duration(minimum=0.05), 5.0
        ),
        min_version=reader.get(
            data,
            "server.tls",
            "min_version",
            lambda v: s.choice("1.2", "1.3")(str(v)),
            "1.2",
        ),
    )


def _tracing(reader: s.Reader, raw: Any) -> Optional[TracingConfig]:
    if raw is None or raw is False:
        return None
    data = reader.mapping(raw, "tracing", ("otlp_endpoint", "sample_ratio", "max_queue", "service_name", "timeout"))
    endpoint = reader.get(data, "tracing", "otlp_endpoint", s.string, "")
    if not endpoint:
        reader.problem("tracing.otlp_endpoint", "required: the OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces")
    elif urlsplit(endpoint).scheme not in ("http", "https"):
        reader.problem("tracing.otlp_endpoint", f"expected an http:// or https:// URL, got {endpoint!r}")
    ratio = reader.get(data, "tracing", "sample_ratio", _ratio, 0.01)
    return TracingConfig(
        otlp_endpoint=endpoint,
        sample_ratio=ratio,
        max_queue=reader.get(data, "tracing", "max_queue", s.integer(1, 1_000_000), 2048),
        service_name=reader.get(data, "tracing", "service_name", s.string, "wasmgate"),
        timeout=reader.get(data, "tracing", "timeout", s.duration(0.001), 5.0),
    )


def _ratio(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"expected a number from 0 to 1, got {value!r}")
    return float(value)


def _admin(reader: s.Reader, raw: Any) -> AdminConfig:
    if raw is False:
        return AdminConfig(listen=None)
    data = reader.mapping(raw, "admin", ("listen",))
    return AdminConfig(
        listen=reader.get(data, "admin", "listen", s.string, AdminConfig.listen)
    )


def _state(reader: s.Reader, raw: Any) -> StateConfig:
    data = reader.mapping(raw, "state", ("backend", "url", "timeout", "max_keys"))
    backend = reader.get(data, "state", "backend", s.choice("memory", "redis"), "memory")
    url = reader.get(data, "state", "url", s.string, None)
    if backend == "redis":
        if url is None:
            reader.problem("state.url", "required for the redis backend (redis://HOST:PORT/DB)")
        elif urlsplit(url).scheme not in ("redis", "rediss"):
            reader.problem("state.url", f"expected redis://HOST:PORT/DB, got {url!r}")
    return StateConfig(
        backend=backend,
        url=url,
        timeout=reader.get(data, "state", "timeout", s.duration(minimum=0.001), 0.025),
        max_keys=reader.get(data, "state", "max_keys", s.integer(minimum=1), 100_000),
    )


def _filters(reader: s.Reader, raw: Any, base: str) -> FiltersConfig:
    data = reader.mapping(raw, "filters", ("threads", "max_queue", "epoch_tick", "cache_dir"))
    return FiltersConfig(
        threads=reader.get(data, "filters", "threads", s.integer(1, 256), 4),
        max_queue=reader.get(data, "filters", "max_queue", s.integer(1, 1_000_000), 1024),
        epoch_tick=reader.get(
            data, "filters", "epoch_tick", s.duration(minimum=0.0001), 0.005
        ),
        cache_dir=reader.get(data, "filters", "cache_dir", _path(base), None),
    )


_PLUGIN_KEYS = (
    "name",
    "path",
    "sha256",
    "timeout_ms",
    "memory_limit_mb",
    "failure_policy",
    "fuel",
    "reload_interval",
    "include_body",
    "max_instances",
    "config",
    "config_raw",
    "config_base64",
    "export",
)


def _plugin_source(base: str) -> Any:
    def convert(value: Any) -> str:
        text = s.string(value)
        scheme = urlsplit(text).scheme
        if scheme in ("https", "s3"):
            return text
        if scheme in ("http", "ftp"):
            raise ValueError(f"plugins are fetched over https:// or s3:// only, got {text!r}")
        return _path(base)(text)

    return convert


def _sha256(value: Any) -> str:
    text = s.string(value)
    if not _SHA256.match(text):
        raise ValueError("expected 64 hex digits, optionally prefixed by 'sha256:'")
    return text.split(":")[-1].lower()


def _plugins(reader: s.Reader, raw: Any, base: str) -> list[PluginConfig]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        reader.problem("plugins", "expected a list of plugins")
        return []
    plugins: list[PluginConfig] = []
    names: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"plugins[{i}]"
        data = reader.mapping(entry, where, _PLUGIN_KEYS)
        name = reader.get(data, where, "name", s.string, "")
        if name and not _NAME.match(name):
            reader.problem(f"{where}.name", "use letters, digits, '_', '-' and '.' only")
        if name in names:
            reader.problem(f"{where}.name", f"a plugin named {name!r} is defined twice")
        names.add(name)
        source = reader.get(data, where, "path", _plugin_source(base), "")
        if source and "://" not in source and not os.path.isfile(source):
            reader.problem(f"{where}.path", f"no such file: {source}")
        plugins.append(
            PluginConfig(
                name=name,
                path=source,
                sha256=reader.get(data, where, "sha256", _sha256, None),
                timeout_ms=reader.get(data, where, "timeout_ms", s.integer(1, 60_000), 50),
                memory_limit_mb=reader.get(
                    data, where, "memory_limit_mb", s.integer(1, 4096), 16
                ),
                failure_policy=reader.get(
                    data, where, "failure_policy", s.choice("closed", "open"), "closed"
                ),
                fuel=reader.get(data, where, "fuel", s.integer(minimum=1), None),
                reload_interval=reader.get(
                    data, where, "reload_interval", s.duration(minimum=0.1), None
                ),
                include_body=reader.get(data, where, "include_body", s.boolean, False),
                max_instances=reader.get(data, where, "max_instances", s.integer(1, 100_000), 256),
                config=reader.get(data, where, "config", s.any_mapping, {}),
                config_bytes=_config_bytes(reader, data, where),
                export=reader.get(data, where, "export", s.string, "handler"),
            )
        )
    return plugins


def _config_bytes(reader: s.Reader, data: Mapping[str, Any], where: str) -> Optional[bytes]:
    """C{config_raw} or C{config_base64}: at most one of them, and not with C{config}."""
    given = [key for key in ("config", "config_raw", "config_base64") if data.get(key) is not None]
    if len(given) > 1:
        reader.problem(f"{where}.{given[1]}", f"give only one of {', '.join(given)}")
        return None
    raw = reader.get(data, where, "config_raw", s.string, None)
    if raw is not None:
        return raw.encode("utf-8")
    encoded = reader.get(data, where, "config_base64", s.string, None)
    if encoded is None:
        return None
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        reader.problem(f"{where}.config_base64", "not valid base64")
        return None


_ROUTE_KEYS = ("name", "match", "filters", "upstream", "timeout", "filter_config", "websocket")


def _routes(
    reader: s.Reader,
    raw: Any,
    plugins: list[PluginConfig],
    upstreams: Mapping[str, UpstreamConfig],
) -> list[RouteConfig]:
    if not isinstance(raw, list) or not raw:
        reader.problem("routes", "expected a non-empty list of routes")
        return []
    plugin_names = [p.name for p in plugins]
    routes: list[RouteConfig] = []
    for i, entry in enumerate(raw):
        where = f"routes[{i}]"
        data = reader.mapping(entry, where, _ROUTE_KEYS)
        match = reader.mapping(data.get("match"), f"{where}.match", ("host", "path_prefix"))
        prefix = reader.get(match, f"{where}.match", "path_prefix", s.string, "/")
        if prefix and not prefix.startswith("/"):
            reader.problem(f"{where}.match.path_prefix", f"must start with '/', got {prefix!r}")
        host = reader.get(match, f"{where}.match", "host", s.string, None)
        host = host.lower() if host else None
        filters = reader.get(data, where, "filters", s.string_list, ())
        for j, name in enumerate(filters):
            if name not in plugin_names:
                reader.problem(
                    f"{where}.filters[{j}]",
                    f"no plugin named {name!r}{s.did_you_mean(name, plugin_names)}",
                )
        upstream = reader.get(data, where, "upstream", s.string) or ""
        if upstream and upstream not in upstreams:
            known = list(upstreams)
            reader.problem(
                f"{where}.upstream",
                f"no upstream named {upstream!r}{s.did_you_mean(upstream, known)}",
            )
        overrides = reader.get(data, where, "filter_config", s.any_mapping, {})
        for name, value in overrides.items():
            if name not in filters:
                reader.problem(
                    f"{where}.filter_config.{name}",
                    "configures a filter this route does not use",
                )
            elif not isinstance(value, dict):
                reader.problem(f"{where}.filter_config.{name}", "expected a mapping")
        default_name = f"{host or '*'}{prefix}"
        routes.append(
            RouteConfig(
                name=reader.get(data, where, "name", s.string, default_name),
                path_prefix=prefix or "/",
                host=host,
                filters=filters,
                upstream=upstream,
                timeout=reader.get(data, where, "timeout", s.duration(minimum=0.001), None),
                filter_config=overrides,
                websocket=reader.get(data, where, "websocket", s.boolean, True),
            )
        )
    return routes


_UPSTREAM_KEYS = (
    "targets",
    "lb",
    "health_check",
    "ca_file",
    "insecure_skip_verify",
    "max_connections_per_target",
    "eject_after_failures",
    "eject_for",
    "retry_methods",
)


def _target(value: Any) -> str:
    text = s.string(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected http://HOST:PORT or https://HOST:PORT, got {text!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"a target is scheme://host:port only, got {text!r}")
    return f"{parts.scheme}://{parts.netloc}"


def _upstreams(
    reader: s.Reader, raw: Any, base: str
) -> dict[str, UpstreamConfig]:
    if not isinstance(raw, dict) or not raw:
        reader.problem("upstreams", "expected a mapping of upstream names to {targets: [...]}")
        return {}
    upstreams: dict[str, UpstreamConfig] = {}
    for name, entry in raw.items():
        where = f"upstreams.{name}"
        data = reader.mapping(entry, where, _UPSTREAM_KEYS)
        raw_targets = data.get("targets")
        if not isinstance(raw_targets, list) or not raw_targets:
            reader.problem(f"{where}.targets", "expected a non-empty list of http(s)://HOST:PORT")
            raw_targets = []
        targets = []
        for i, item in enumerate(raw_targets):
            try:
                targets.append(_target(item))
            except ValueError as e:
                reader.problem(f"{where}.targets[{i}]", str(e))
        check = None
        if data.get("health_check") is not None:
            check = _health_check(reader, data["health_check"], f"{where}.health_check")
        ca_file = reader.get(data, where, "ca_file", _path(base), None)
        if ca_file and not os.access(ca_file, os.R_OK):
            reader.problem(f"{where}.ca_file", f"cannot read {ca_file}")
        upstreams[str(name)] = UpstreamConfig(
            name=str(name),
            targets=tuple(targets),
            lb=reader.get(
                data, where, "lb", s.choice("round_robin", "least_requests", "ip_hash"), "round_robin"
            ),
            health_check=check,
            ca_file=ca_file,
            insecure_skip_verify=reader.get(data, where, "insecure_skip_verify", s.boolean, False),
            max_connections_per_target=reader.get(
                data, where, "max_connections_per_target", s.integer(1, 100_000), None
            ),
            eject_after_failures=reader.get(
                data, where, "eject_after_failures", s.integer(minimum=1), 5
            ),
            eject_for=reader.get(data, where, "eject_for", s.duration(), 10.0),
            retry_methods=tuple(
                m.upper()
                for m in reader.get(
                    data, where, "retry_methods", s.string_list, ("GET", "HEAD", "OPTIONS")
                )
            ),
        )
    return upstreams


def _status_range(value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    else:
        match = re.match(r"^\s*(\d{3})\s*-\s*(\d{3})\s*$", str(value))
        if not match:
            raise ValueError(f"expected a status like 200 or a range like 200-399, got {value!r}")
        low, high = int(match.group(1)), int(match.group(2))
    if not 100 <= low <= high <= 599:
        raise ValueError(f"expected statuses between 100 and 599, got {value!r}")
    return (low, high)


def _health_check(reader: s.Reader, raw: Any, where: str) -> HealthCheckConfig:
    data = reader.mapping(
        raw,
        where,
        ("path", "interval", "timeout", "healthy_threshold", "unhealthy_threshold", "expect_status"),
    )
    path = reader.get(data, where, "path", s.string, "/health")
    if not path.startswith("/"):
        reader.problem(f"{where}.path", f"must start with '/', got {path!r}")
    return HealthCheckConfig(
        path=path,
        interval=reader.get(data, where, "interval", s.duration(minimum=0.05), 10.0),
        timeout=reader.get(data, where, "timeout", s.duration(minimum=0.01), 2.0),
        healthy_threshold=reader.get(data, where, "healthy_threshold", s.integer(1, 100), 2),
        unhealthy_threshold=reader.get(data, where, "unhealthy_threshold", s.integer(1, 100), 3),
        expect_status=reader.get(data, where, "expect_status", _status_range, (200, 399)),
    )


def _cross_checks(
    reader: s.Reader, server: ServerConfig, plugins: list[PluginConfig], state: StateConfig
) -> None:
    if server.tls is not None:
        for i, description in enumerate(server.listen):
            if not description.startswith(("tcp:", "tcp6:", "systemd:")):
                reader.problem(
                    f"server.listen[{i}]",
                    f"{description!r}: with a server.tls section, listen on tcp:PORT"
                    " (the section adds TLS); an ssl: endpoint brings its own certificate",
                )
    write_ms = server.timeouts.write * 1000
    for i, plugin in enumerate(plugins):
        if state.backend == "redis" and state.timeout * 1000 >= plugin.timeout_ms:
            reader.problem(
                f"plugins[{i}].timeout_ms",
                f"{plugin.timeout_ms} ms is not above state.timeout ({state.timeout * 1000:g} ms):"
                " a filter waits for Redis inside its own deadline",
            )
        if plugin.timeout_ms >= write_ms:
            reader.problem(
                f"plugins[{i}].timeout_ms",
                f"{plugin.timeout_ms} ms is not below server.timeouts.write"
                f" ({write_ms:g} ms): a stuck filter would outlive the client",
            )
