# -*- test-case-name: tests.test_workers -*-
"""
The supervisor's listening sockets: opened once (or taken from systemd),
never accepted on here, and passed to every worker, which all accept on
the same sockets. A connection waiting in the accept queue is taken by
whichever worker is free; a worker that dies leaves the queue to the others.
"""
from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol

from wasmgate._listen import ListenerRefused, refusal_line
from wasmgate._serversetup import address_family, listen_endpoints
from wasmgate.config import GatewayConfig


class _WorkersAccept(Factory):
    """Stands in for the workers' factory on the supervisor's ports: never used."""

    noisy = False
    protocol = Protocol

    def logPrefix(self) -> str:
        return "shared with the workers"


class SharedListeners(service.Service):
    """Every C{server.listen} socket, in config order, bound at the privileged start."""

    def __init__(self, config: GatewayConfig, *, reactor: Any) -> None:
        self._endpoints = listen_endpoints(config, reactor)
        self.ports: list[IListeningPort] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        factory = _WorkersAccept()
        for i, endpoint in enumerate(self._endpoints):
            try:
                d = endpoint.listen(factory)
            except CannotListenError as e:
                raise ListenerRefused(refusal_line(f"server.listen[{i}]", e)) from None
            found: list[Any] = []
            d.addBoth(found.append)
            [result] = found  # TCP, UNIX and adopted sockets listen at once
            if isinstance(getattr(result, "value", None), CannotListenError):
                raise ListenerRefused(refusal_line(f"server.listen[{i}]", result.value)) from None
            if not IListeningPort.providedBy(result):
                result.raiseException()
            result.stopReading()  # the workers accept, not the supervisor
            self.ports.append(result)

    def startService(self) -> None:
        if not self.ports:
            self.privilegedStartService()
        super().startService()

    def filenos(self) -> list[int]:
        return [port.fileno() for port in self.ports]  # type: ignore[attr-defined]

    def families(self) -> list[int]:
        return [address_family(port.getHost()) for port in self.ports]

    def stopService(self) -> Any:
        super().stopService()
        ports, self.ports = self.ports, []
        for port in ports:
            port.stopListening()
