# -*- test-case-name: tests.test_ops -*-
"""
The admin site, on its own (by default loopback-only) port: liveness,
readiness, Prometheus metrics and a reload trigger.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.web import server
from twisted.web.resource import Resource

if TYPE_CHECKING:
    from wasmgate.service import GatewayService


def _plain(request: server.Request, code: int, body: bytes) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return body


class _Health(Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        return _plain(request, 200, b"ok\n")


class _Ready(Resource):
    """Ready when listening and not every upstream target is down."""

    isLeaf = True

    def __init__(self, gateway: "GatewayService") -> None:
        super().__init__()
        self.gateway = gateway

    def render_GET(self, request: server.Request) -> bytes:
        problems = self.gateway.readiness_problems()
        if problems:
            return _plain(request, 503, ("\n".join(problems) + "\n").encode())
        return _plain(request, 200, b"ready\n")


class _Reload(Resource):
    isLeaf = True

    def __init__(self, gateway: "GatewayService") -> None:
        super().__init__()
        self.gateway = gateway

    def render_POST(self, request: server.Request) -> Any:
        def done(number: int) -> None:
            request.write(_plain(request, 200, b"generation %d\n" % number))
            request.finish()

        def failed(reason: Any) -> None:
            request.write(_plain(request, 500, f"reload failed:\n{reason.getErrorMessage()}\n".encode()))
            request.finish()

        self.gateway.reload().addCallbacks(done, failed)
        return server.NOT_DONE_YET


class _QuietSite(server.Site):
    """No access log, no factory chatter."""

    noisy = False

    def log(self, request: server.Request) -> None:
        pass


def admin_site(resource: Resource, *, reactor: Any) -> server.Site:
    """The admin port's site (twisted.web: it is not on the hot path)."""
    return _QuietSite(resource, reactor=reactor)


class AdminResource(Resource):
    def __init__(self, *, gateway: "GatewayService") -> None:
        super().__init__()
        self.putChild(b"healthz", _Health())
        self.putChild(b"readyz", _Ready(gateway))
        self.putChild(b"reload", _Reload(gateway))
        metrics = getattr(gateway, "metrics", None)
        if metrics is not None:
            from prometheus_client.twisted import MetricsResource

            self.putChild(b"metrics", MetricsResource(registry=metrics.registry))
