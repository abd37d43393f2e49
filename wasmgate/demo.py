# -*- test-case-name: tests.test_cli -*-
"""
A demo upstream: answers every request with a JSON echo of what it got
(method, path, headers, body), so one can see what the gateway changed.
"""
from __future__ import annotations

import json

from twisted.web import resource, server


class EchoResource(resource.Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        body = request.content.read()
        echo = {
            "method": request.method.decode("latin-1"),
            "uri": request.uri.decode("latin-1"),
            "headers": {
                name.decode("latin-1").lower(): [v.decode("latin-1") for v in values]
                for name, values in request.requestHeaders.getAllRawHeaders()
            },
            "body": body.decode("utf-8", "replace"),
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(echo, indent=2).encode() + b"\n"


def run_demo_upstream(*, port: int, interface: str) -> None:
    from twisted.internet import reactor

    site = server.Site(EchoResource())
    reactor.listenTCP(port, site, interface=interface)  # type: ignore[attr-defined]
    print(f"demo upstream echoing on http://{interface}:{port}/", flush=True)
    reactor.run()  # type: ignore[attr-defined]
