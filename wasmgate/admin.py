# -*- test-case-name: tests.test_ops -*-
"""
The admin site, on its own (by default loopback-only) port: liveness,
readiness, Prometheus metrics and a reload trigger.
"""
from __future__ import annotations

from typing import Any, Protocol, Union

from twisted.internet import defer
from twisted.web import server
from twisted.web.resource import Resource


class AdminTarget(Protocol):
    """What the admin port serves: one gateway process, or a supervisor of workers."""

    def readiness_problems(self) -> Union[list[str], "defer.Deferred[list[str]]"]:
        """Why it should not get traffic now (empty: ready)."""

    def reload(self) -> "defer.Deferred[int]":
        """Reload the config; fires with the new generation's number."""


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

    def __init__(self, gateway: AdminTarget) -> None:
        super().__init__()
        self.gateway = gateway

    def render_GET(self, request: server.Request) -> Any:
        def answer(problems: list[str]) -> None:
            if problems:
                request.write(_plain(request, 503, ("\n".join(problems) + "\n").encode()))
            else:
                request.write(_plain(request, 200, b"ready\n"))
            request.finish()

        def failed(reason: Any) -> None:
            request.write(_plain(request, 503, f"readiness unknown: {reason.getErrorMessage()}\n".encode()))
            request.finish()

        defer.maybeDeferred(self.gateway.readiness_problems).addCallbacks(answer, failed)
        return server.NOT_DONE_YET


class _Reload(Resource):
    isLeaf = True

    def __init__(self, gateway: AdminTarget) -> None:
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


class _MergedMetrics(Resource):
    """A supervisor's C{/metrics}: its workers' pages added up (text format)."""

    isLeaf = True

    def __init__(self, page: Any) -> None:
        super().__init__()
        self.page = page

    def render_GET(self, request: server.Request) -> Any:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        def answer(body: bytes) -> None:
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
            request.write(body)
            request.finish()

        def failed(reason: Any) -> None:
            request.write(_plain(request, 500, f"metrics unavailable: {reason.getErrorMessage()}\n".encode()))
            request.finish()

        defer.maybeDeferred(self.page).addCallbacks(answer, failed)
        return server.NOT_DONE_YET


class AdminResource(Resource):
    def __init__(self, *, gateway: AdminTarget) -> None:
        super().__init__()
        self.putChild(b"healthz", _Health())
        self.putChild(b"readyz", _Ready(gateway))
        self.putChild(b"reload", _Reload(gateway))
        page = getattr(gateway, "metrics_page", None)
        registry = getattr(getattr(gateway, "metrics", None), "registry", None)
        if page is not None:
            self.putChild(b"metrics", _MergedMetrics(page))
        elif registry is not None:
            from prometheus_client.twisted import MetricsResource

            self.putChild(b"metrics", MetricsResource(registry=registry))
