# -*- test-case-name: tests.test_http_server -*-
"""
The gateway's HTTP wire protocols: an HTTP/1.1 server on llhttp
(C{httptools}) for clients, and a keep-alive client pool for upstreams.
Both hand plain request and response objects to the wire-independent
exchange core in L{wasmgate.proxy}.
"""
