# -*- test-case-name: tests.test_proxy -*-
"""
The twisted.web site the gateway listens with: its request class, limits,
and one JSON access-log line per request instead of the combined log.
"""
from __future__ import annotations

import json
import time
import weakref
from typing import Any, Callable, Iterable, Optional

from twisted.web import server
from twisted.web.resource import Resource

from wasmgate.accesslog import AccessSink, log_sink
from wasmgate.metrics import normalise_path
from wasmgate.proxy import GatewayRequest

RequestObserver = Callable[[GatewayRequest, float], None]


class GatewaySite(server.Site):
    """
    A L{server.Site} that never parses form bodies, refuses bodies over
    C{max_body_bytes}, and logs each request as one JSON line.
    """

    requestFactory = GatewayRequest
    noisy = False

    def __init__(
        self,
        resource: Resource,
        *,
        reactor: Any,
        max_body_bytes: int,
        idle_timeout: float,
        read_timeout: float = 10.0,
        access_log: Optional[AccessSink] = log_sink,
        observers: Iterable[RequestObserver] = (),
    ) -> None:
        super().__init__(
            resource,
            requestFactory=GatewayRequest,
            timeout=idle_timeout,
            reactor=reactor,
            parsePOSTFormSubmission=False,
        )
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout
        self.access_log = access_log
        self.observers = list(observers)
        self.draining = False
        self._channels: "weakref.WeakSet[Any]" = weakref.WeakSet()

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            self._channels.add(protocol)
        return protocol

    def drain(self) -> None:
        """
        Shutting down: close kept-alive connections that wait for a request,
        and make each response in progress the last on its connection.
        """
        self.draining = True
        for protocol in list(self._channels):
            channel = getattr(protocol, "_channel", protocol)  # the HTTP/1.1 channel
            if channel.transport is None:
                continue
            if not channel.requests:
                channel.loseConnection()
            else:
                channel.persistent = False

    def log(self, request: GatewayRequest) -> None:  # type: ignore[override]
        info = request.info
        duration = time.monotonic() - info.started
        for observe in self.observers:
            observe(request, duration)
        if self.access_log is None:
            return
        path = request.path.decode("latin-1", "replace")
        line = {
            "time": round(time.time(), 3),
            "client_ip": info.client_ip or getattr(request.getClientAddress(), "host", ""),
            "method": request.method.decode("latin-1", "replace"),
            "path": path,
            "path_template": normalise_path(path),
            "route": info.route,
            "status": request.code,
            "bytes": request.sentLength,
            "duration_ms": round(duration * 1000, 3),
            "upstream": info.target,
            "filters": [f"{d.plugin}:{d.outcome}" for d in info.decisions],
        }
        user_agent = request.getHeader(b"user-agent")
        if user_agent is not None:
            line["user_agent"] = user_agent.decode("latin-1", "replace")
        if info.error:
            line["error"] = info.error
        self.access_log(json.dumps(line, separators=(",", ":")))



class QuietSite(server.Site):
    """A site for the admin port: no access log, no factory chatter."""

    noisy = False

    def log(self, request: server.Request) -> None:  # type: ignore[override]
        pass
