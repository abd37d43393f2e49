"""
A real upstream for the tests: a twisted.web site with endpoints that
behave in the ways a proxy must cope with, and a count of its connections.
"""
from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor as default_reactor
from twisted.web import resource, server


class _Echo(resource.Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        body = request.content.read()
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-upstream", b"yes")
        return json.dumps(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "headers": {
                    k.decode().lower(): [v.decode("latin-1") for v in vs]
                    for k, vs in request.requestHeaders.getAllRawHeaders()
                },
                "body": body.decode("latin-1"),
                "peer_port": request.getClientAddress().port,
            }
        ).encode()


class _Cookies(resource.Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        request.responseHeaders.setRawHeaders(b"set-cookie", [b"a=1; Path=/", b"b=2; Path=/"])
        return b"two cookies"


class _HopByHop(resource.Resource):
    """Answers with hop-by-hop headers a proxy must not pass on."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"connection", b"x-private-hop")
        request.setHeader(b"x-private-hop", b"secret")
        request.setHeader(b"keep-alive", b"timeout=5")
        request.setHeader(b"proxy-authenticate", b"Basic")
        request.setHeader(b"x-end-to-end", b"kept")
        return b"hop"


class _Chunked(resource.Resource):
    """A response without Content-Length, written in several chunks."""

    isLeaf = True

    def __init__(self, clock: Any) -> None:
        super().__init__()
        self.clock = clock

    def render_GET(self, request: server.Request) -> int:
        parts = [b"chunk-%d;" % i for i in range(5)]

        def write_next() -> None:
            if request.finished or getattr(request, "_disconnected", False):
                return
            if parts:
                request.write(parts.pop(0))
                self.clock.callLater(0.01, write_next)
            else:
                request.finish()

        write_next()
        return server.NOT_DONE_YET


class _Stream(resource.Resource):
    """
    C{?size=N&hold=1}: writes the first 64 KiB then, with hold, waits for
    C{release()} before writing the rest (N bytes in all).
    """

    isLeaf = True

    def __init__(self, app: "UpstreamApp") -> None:
        super().__init__()
        self.app = app

    def render_GET(self, request: server.Request) -> int:
        size = int(request.args.get(b"size", [b"1048576"])[0])
        hold = request.args.get(b"hold", [b"0"])[0] == b"1"
        request.setHeader(b"content-length", b"%d" % size)
        block = b"x" * 65536
        state = {"left": size}
        self.app.stream_finished = False

        def pump() -> None:
            # Write with backpressure: a producer the transport pauses.
            producer = _Pump(request, block, state, self.app)
            request.registerProducer(producer, True)
            producer.resumeProducing()

        first = min(len(block), size)
        request.write(block[:first])
        state["left"] -= first
        if hold:
            self.app.release = pump
        else:
            pump()
        return server.NOT_DONE_YET


class _Pump:
    def __init__(self, request: server.Request, block: bytes, state: dict, app: "UpstreamApp") -> None:
        self.request, self.block, self.state, self.app = request, block, state, app
        self.paused = False
        self.stopped = False

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and not self.stopped and self.state["left"] > 0:
            n = min(len(self.block), self.state["left"])
            self.state["left"] -= n
            self.request.write(self.block[:n])
        if self.state["left"] == 0 and not self.stopped:
            self.stopped = True
            self.request.unregisterProducer()
            self.request.finish()
            self.app.stream_finished = True

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.stopped = True


class _Slow(resource.Resource):
    """C{?delay=S}: answers after S seconds; notes when the client left."""

    isLeaf = True

    def __init__(self, app: "UpstreamApp") -> None:
        super().__init__()
        self.app = app

    def render(self, request: server.Request) -> int:
        delay = float(request.args.get(b"delay", [b"5"])[0])
        call = self.app.clock.callLater(delay, lambda: (request.write(b"slow"), request.finish()))

        def gone(reason: Any) -> None:
            if call.active():
                call.cancel()
            self.app.cancelled += 1

        request.notifyFinish().addErrback(gone)
        return server.NOT_DONE_YET


class _Status(resource.Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        code = int(request.postpath[0]) if request.postpath and request.postpath[0] else 200
        request.setResponseCode(code)
        return b"status %d" % code


class _Reset(resource.Resource):
    """Resets the connection (RST) instead of answering: a crashed upstream."""

    isLeaf = True

    def render(self, request: server.Request) -> int:
        request.transport.abortConnection()
        return server.NOT_DONE_YET


class UpstreamApp(resource.Resource):
    def __init__(self, clock: Any = default_reactor, name: str = "upstream") -> None:
        super().__init__()
        self.clock = clock
        self.name = name
        self.connections = 0
        self.requests = 0
        """Whole requests received (headers and body)."""
        self.cancelled = 0
        self.release: Any = None
        self.stream_finished = False
        self.putChild(b"echo", _Echo())
        self.putChild(b"cookies", _Cookies())
        self.putChild(b"hop", _HopByHop())
        self.putChild(b"chunked", _Chunked(clock))
        self.putChild(b"stream", _Stream(self))
        self.putChild(b"slow", _Slow(self))
        self.putChild(b"status", _Status())
        self.putChild(b"health", _Status())
        self.putChild(b"reset", _Reset())

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        return _Echo()


class CountingSite(server.Site):
    noisy = False

    def __init__(self, app: UpstreamApp) -> None:
        super().__init__(app)
        self.app = app

    def getResourceFor(self, request: server.Request) -> resource.Resource:
        self.app.requests += 1
        return super().getResourceFor(request)

    def buildProtocol(self, addr: Any) -> Any:
        self.app.connections += 1
        return super().buildProtocol(addr)

    def log(self, request: Any) -> None:
        pass
