# -*- test-case-name: tests.test_cli -*-
"""
What C{twistd wasmgate} runs: the service, a refusal to start on a bad
config, and SIGHUP wired to reload.
"""
from __future__ import annotations

import signal
import sys
from typing import Any

from twisted.application import service

from wasmgate.config import ConfigError
from wasmgate.service import GatewayService, make_service


class _SignalReload(service.Service):
    """SIGHUP reloads the config; installed once the reactor runs."""

    def __init__(self, gateway: GatewayService, reactor: Any) -> None:
        self.gateway = gateway
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()
        signal.signal(signal.SIGHUP, self._hup)

    def _hup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._reload)

    def _reload(self) -> None:
        self.gateway.reload().addErrback(lambda failure: None)  # logged by reload


def make_twistd_service(config_path: str) -> service.IService:
    from twisted.internet import reactor

    try:
        gateway = make_service(config_path, reactor=reactor)
    except ConfigError as e:
        sys.stderr.write(f"wasmgate: refusing to start, the configuration has errors:\n{e}\n")
        sys.stderr.flush()
        raise SystemExit(1)
    _SignalReload(gateway, reactor).setServiceParent(gateway)
    return gateway
