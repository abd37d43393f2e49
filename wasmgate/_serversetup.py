# -*- test-case-name: tests.test_ops,tests.test_limits,tests.test_workers -*-
"""
What the client side of a gateway process is built from: the listening
endpoints (described in the config, or inherited from a supervisor), the
certificate store, per-connection settings and the descriptor limit.
"""
from __future__ import annotations

import socket
from typing import Optional, Sequence

from twisted.internet import endpoints
from twisted.internet.interfaces import IReactorCore, IStreamServerEndpoint

from wasmgate.config import ConfigError, GatewayConfig
from wasmgate.http.factory import ServerSettings
from wasmgate.http.upstream import MAX_IDLE_UPSTREAM
from wasmgate.tls import CertificateError, CertificateStore, TLSMetrics, certificate_specs

InheritedSocket = tuple[int, int]
"""A listening socket a supervisor passed down: (file descriptor, address family)."""


def listen_endpoints(
    config: GatewayConfig, reactor: IReactorCore, inherited: Optional[Sequence[InheritedSocket]] = None
) -> list[IStreamServerEndpoint]:
    """
    One endpoint per C{server.listen} entry: the one it describes, or the
    socket a supervisor opened for it (C{inherited}, in the same order).

    @raise ConfigError: naming the entry that cannot be listened on.
    """
    if inherited is not None:
        return [endpoints.AdoptedStreamServerEndpoint(reactor, fd, family) for fd, family in inherited]
    result = []
    for i, description in enumerate(config.server.listen):
        try:
            result.append(endpoints.serverFromString(reactor, with_backlog(description)))
        except (ValueError, KeyError, IndexError, TypeError) as e:
            why = str(e) or type(e).__name__
            if description.startswith("systemd:") and isinstance(e, (KeyError, IndexError)):
                why = "systemd passed no such socket (LISTEN_FDS); is the wasmgate.socket unit active?"
            raise ConfigError(
                config.source, [f"server.listen[{i}]: cannot listen on {description!r}: {why}"]
            ) from None
    return result


def accept_one_at_a_time(port: object) -> bool:
    """
    Make a listening port shared with other workers accept one connection
    per readiness event, as nginx does by default (C{multi_accept off}): a
    burst of new connections is then spread over the workers woken for it,
    instead of the first one to wake taking them all (Twisted's ports
    accept up to a hundred at a time). False if C{port} is not one whose
    accept batch can be set, which costs only balance.
    """
    if not isinstance(getattr(port, "numberAccepts", None), int) or not hasattr(port, "doRead"):
        return False
    batched = port.doRead  # type: ignore[attr-defined]

    def do_read() -> object:
        port.numberAccepts = 1  # type: ignore[attr-defined]
        return batched()

    port.doRead = do_read  # type: ignore[attr-defined]
    return True


def address_family(host: object) -> int:
    """The C{socket.AF_*} of a listening port's C{getHost()}."""
    from twisted.internet.address import IPv6Address, UNIXAddress

    if isinstance(host, UNIXAddress):
        return socket.AF_UNIX
    if isinstance(host, IPv6Address):
        return socket.AF_INET6
    return socket.AF_INET


def with_backlog(description: str) -> str:
    """
    A TCP listener gets nginx's accept backlog (511) unless the endpoint
    string sets one: Twisted's default of 50 drops SYNs when hundreds of
    clients connect at once, and they retry only after a second.
    """
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return description + ":backlog=511"
    return description


def server_settings(config: GatewayConfig) -> ServerSettings:
    server = config.server
    return ServerSettings(
        max_body_bytes=server.max_body_bytes,
        read_timeout=server.timeouts.read,
        idle_timeout=server.timeouts.idle,
        write_timeout=server.timeouts.write,
        max_connections=server.max_connections or default_max_connections(),
        banner=server.banner.encode("ascii") if server.banner else None,
        http2=server.http2,
        h2c=server.h2c,
        max_concurrent_streams=server.max_concurrent_streams,
    )


def certificate_store(config: GatewayConfig, metrics: TLSMetrics) -> CertificateStore:
    tls = config.server.tls
    assert tls is not None
    try:
        return CertificateStore(
            certificate_specs(tls),
            min_version=tls.min_version,
            metrics=metrics,
            alpn_protocols=(b"h2", b"http/1.1") if config.server.http2 else (b"http/1.1",),
        )
    except CertificateError as e:
        raise ConfigError(config.source, [f"server.tls: {p}" for p in e.problems]) from None


def raise_fd_limit() -> int:
    """
    Raise this process's open-file limit to its hard limit where it may (a
    gateway holds two descriptors per request in flight); the limit now.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def default_max_connections() -> int:
    """
    C{server.max_connections} when not set: half the file descriptors left
    after a reserve (256, and the upstream pool's idle connections) (each
    client connection may need an upstream one too), so the gateway turns
    clients away before it runs out of descriptors.
    """
    return max(64, (raise_fd_limit() - 256 - MAX_IDLE_UPSTREAM) // 2)
