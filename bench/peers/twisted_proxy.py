"""
The floor of what a Twisted reverse proxy costs: one upstream, Agent over a
keep-alive HTTPConnectionPool, responses streamed back as they arrive, no
routing, no filters, no metrics, no access log. bench/run compares wasmgate
against it to see what the gateway adds on top of Twisted itself.

    python bench/peers/twisted_proxy.py --port 8080 --upstream http://127.0.0.1:9000
"""
from __future__ import annotations

import argparse
import io
import sys
from typing import Any, Optional

from twisted.internet import protocol
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource

# RFC 9110 7.6.1 hop-by-hop headers, plus Host (the Agent sets it from the URL
# otherwise) and Content-Length (the body producer carries it).
_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)


class _Relay(protocol.Protocol):
    """Writes the upstream body to the client as it arrives."""

    def __init__(self, request: server.Request) -> None:
        self.request = request

    def dataReceived(self, data: bytes) -> None:
        if not self.request.finished and not self.request._disconnected:
            self.request.write(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not reason.check(ResponseDone, PotentialDataLoss):
            self.request.channel and self.request.channel.loseConnection()
            return
        if not self.request.finished and not self.request._disconnected:
            self.request.finish()


class ProxyResource(Resource):
    """Every request goes to C{upstream} with its method, path, headers and body."""

    isLeaf = True

    def __init__(self, *, agent: Agent, upstream: bytes) -> None:
        super().__init__()
        self.agent = agent
        self.upstream = upstream.rstrip(b"/")

    def render(self, request: server.Request) -> Any:
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            lower = name.lower()
            if lower in _HOP or lower == b"content-length":
                continue
            headers.setRawHeaders(name, values)
        peer = request.getClientAddress()
        headers.addRawHeader(b"x-forwarded-for", getattr(peer, "host", "").encode())
        body: Optional[FileBodyProducer] = None
        content = request.content.read() if request.content is not None else b""
        if content or request.method in (b"POST", b"PUT", b"PATCH"):
            body = FileBodyProducer(io.BytesIO(content))
        d = self.agent.request(request.method, self.upstream + request.uri, headers, body)
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallbacks(self._respond, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        return server.NOT_DONE_YET

    def _respond(self, response: IResponse, request: server.Request) -> None:
        request.setResponseCode(response.code, response.phrase)
        out = request.responseHeaders
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in _HOP:
                out.setRawHeaders(name, values)
        response.deliverBody(_Relay(request))

    def _failed(self, failure: Failure, request: server.Request) -> None:
        if failure.check(CancelledError) or request.finished or request._disconnected:
            return
        request.setResponseCode(502)
        request.setHeader(b"content-type", b"text/plain")
        request.write(b"bad gateway\n")
        request.finish()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT")
    parser.add_argument("--pool-size", type=int, default=64, help="idle keep-alive connections kept")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = args.pool_size
    pool.retryAutomatically = False
    agent = Agent(reactor, pool=pool)
    site = server.Site(ProxyResource(agent=agent, upstream=args.upstream.encode()))
    site.displayTracebacks = False
    reactor.listenTCP(args.port, site, backlog=511, interface=args.interface)
    print(f"twisted proxy listening on {args.interface}:{args.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
