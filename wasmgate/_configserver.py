# -*- test-case-name: tests.test_config,tests.test_cli -*-
"""
The C{server:} section: listeners, TLS certificates, timeouts and the
client-facing limits; the largest section, so it has a module of its own.
"""
from __future__ import annotations

import os
import re
from typing import Any, Optional

from wasmgate import _schema as s
from wasmgate._configpaths import relative_path
from wasmgate._configtypes import CertificateConfig, ServerConfig, Timeouts, TLSConfig


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


def read_server(reader: s.Reader, raw: Any, base: str) -> ServerConfig:
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
            filename = reader.get(item, where, key, relative_path(base), "")
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
