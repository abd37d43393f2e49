# -*- test-case-name: tests.test_listen -*-
"""
A listener that cannot listen (a port in use, a privileged port, an address
this machine does not have) told in one line naming its config key, for
C{twistd wasmgate} at start and for C{wasmgate check --bind}.
"""
from __future__ import annotations

import errno
from typing import Any

from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol

from wasmgate.config import GatewayConfig


class ListenerRefused(Exception):
    """
    A configured listener could not listen; C{str()} is the line to print,
    e.g. C{server.listen[0]: 127.0.0.1:8443 is already in use}.
    """


def listener_keys(config: GatewayConfig) -> list[tuple[str, str]]:
    """C{(config key, endpoint string)} of every listener, in the order they start."""
    keys = [(f"server.listen[{i}]", description) for i, description in enumerate(config.server.listen)]
    if config.admin.listen:
        keys.append(("admin.listen", config.admin.listen))
    return keys


def bind_targets(config: GatewayConfig) -> list[tuple[str, str]]:
    """The listeners C{check --bind} tries: all but systemd's sockets (systemd holds those)."""
    return [(key, d) for key, d in listener_keys(config) if not d.startswith("systemd:")]


def refusal_line(key: str, error: CannotListenError) -> str:
    """What went wrong for the listener at config key C{key}, in one line."""
    address = _address(error)
    reason = getattr(error.socketError, "errno", None)
    if reason == errno.EADDRINUSE:
        return f"{key}: {address} is already in use"
    if reason == errno.EACCES:
        return (
            f"{key}: {address}: permission denied (ports below 1024 need root"
            " or CAP_NET_BIND_SERVICE)"
        )
    if reason == errno.EADDRNOTAVAIL:
        return f"{key}: {address}: this machine has no such address"
    why = getattr(error.socketError, "strerror", None) or str(error.socketError)
    return f"{key}: cannot listen on {address}: {why}"


def _address(error: CannotListenError) -> str:
    """C{127.0.0.1:8443}, C{[::1]:8443}, C{0.0.0.0:8443} (every address), or a UNIX path."""
    if error.interface is None:  # a UNIX socket: the port is its path
        return str(error.port)
    host = error.interface or "0.0.0.0"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{error.port}"


def name_refusals(service: Any, key: str) -> None:
    """
    Make C{service} (a listening service, as C{GatewayService} holds them)
    raise L{ListenerRefused} naming C{key} instead of a bare
    L{CannotListenError} when it cannot listen.
    """
    start = service.privilegedStartService

    def privileged_start() -> None:
        try:
            start()
        except CannotListenError as e:
            raise ListenerRefused(refusal_line(key, e)) from None

    service.privilegedStartService = privileged_start


@defer.inlineCallbacks
def bind_problems(config: GatewayConfig, *, reactor: Any) -> Any:
    """
    Listen on every configured listener, as the gateway would at start, then
    let go of them all: fires with the lines for those that cannot listen,
    in config order. Two listeners on one address fail as they would at
    start. systemd sockets are not tried: systemd holds them.
    """
    problems: list[str] = []
    ports = []
    factory = Factory.forProtocol(Protocol)
    try:
        for key, description in bind_targets(config):
            try:
                endpoint = endpoints.serverFromString(reactor, description)
                ports.append((yield endpoint.listen(factory)))
            except CannotListenError as e:
                problems.append(refusal_line(key, e))
            except (ValueError, KeyError, IndexError, TypeError) as e:
                problems.append(f"{key}: cannot listen on {description!r}: {e or type(e).__name__}")
    finally:
        yield defer.gatherResults([defer.maybeDeferred(port.stopListening) for port in ports])
    return problems
