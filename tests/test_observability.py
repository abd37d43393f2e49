"""
Which request is this, and where did its time go: request IDs (kept from
trusted proxies only) in the response, upstream, access log and filter
logs; W3C trace context; spans of sampled requests at a real OTLP/HTTP
receiver (decoded with opentelemetry-proto); a dead collector costs
requests nothing but counted drops.
"""
from __future__ import annotations

import gzip
import json
import re
import socket
import textwrap
from typing import Any

import pytest_twisted
import treq
import wasmtime
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from twisted.internet import reactor, task, threads
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests import wasm_guests as g
from tests.conftest import read_until_closed


class OTLPReceiver(Resource):
    """An OTLP/HTTP traces endpoint: keeps every span it is sent."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[Any] = []
        self.resources: list[Any] = []

    def render_POST(self, request: Any) -> bytes:
        body = request.content.read()
        if request.getHeader("content-encoding") == "gzip":
            body = gzip.decompress(body)
        assert request.getHeader("content-type") == "application/x-protobuf"
        message = trace_service_pb2.ExportTraceServiceRequest()
        message.ParseFromString(body)
        for resource_spans in message.resource_spans:
            self.resources.append(resource_spans.resource)
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        request.setHeader("content-type", "application/x-protobuf")
        return trace_service_pb2.ExportTraceServiceResponse().SerializeToString()


_LOGS_REQUESTS = """
(module
  (import "wasmgate" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 2)
  %(alloc)s
  (func (export "handle_request") (param $ptr i32) (param $len i32) (result i64)
    (call $log (i32.const 1) (local.get $ptr) (i32.const 16))
    (i64.const 0))
)
""" % {"alloc": g.ALLOC}
"""Logs the start of each request it sees; no response phase."""


def _yaml(upstream: str, tmp_path: Any, *, tracing: str = "", trusted: str = "10.0.0.0/8") -> str:
    passes = tmp_path / "passes.wasm"
    passes.write_bytes(wasmtime.wat2wasm(g.PASS_THROUGH))
    logs = tmp_path / "logs.wasm"
    logs.write_bytes(wasmtime.wat2wasm(_LOGS_REQUESTS))
    return textwrap.dedent(
        f"""
        server:
          listen: "tcp:0:interface=127.0.0.1"
          trusted_proxies: ["{trusted}"]
        admin:
          listen: "tcp:0:interface=127.0.0.1"
        access_log: {tmp_path / "access.jsonl"}
        plugins:
          - {{name: passes, path: {passes}}}
          - {{name: logs, path: {logs}}}
        routes:
          - {{name: api, match: {{path_prefix: /}}, filters: [passes, logs], upstream: backend}}
        upstreams:
          backend: {{targets: ["{upstream}"]}}
        """
    ) + textwrap.dedent(tracing)


def _get(port: int, extra: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /orders/7 HTTP/1.1\r\nHost: shop.example\r\n" + extra + b"Connection: close\r\n\r\n")
        return read_until_closed(sock)


def _header(message: bytes, name: bytes) -> list[bytes]:
    head = message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return [v.strip() for n, _, v in (line.partition(b":") for line in head) if n.strip().lower() == name]


async def _until(check: Any, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    assert check()


@pytest_twisted.ensureDeferred
async def test_one_trace_of_four_spans_and_one_request_id_everywhere(tmp_path, recording, start_gateway):
    receiver = OTLPReceiver()
    collector = reactor.listenTCP(0, Site(receiver), interface="127.0.0.1")
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        recorder, url = recording()
        endpoint = f"http://127.0.0.1:{collector.getHost().port}/v1/traces"
        gw = start_gateway(_yaml(url, tmp_path, tracing=f"tracing: {{otlp_endpoint: '{endpoint}', sample_ratio: 1}}\n"))
        answer = await threads.deferToThread(_get, int(gw.url.rsplit(":", 1)[1]))
        assert answer.startswith(b"HTTP/1.1 200 ")

        # The ID: in the answer, upstream, the access log and the filter's log.
        [request_id] = _header(answer, b"x-request-id")
        assert re.fullmatch(rb"[0-9a-f]{32}", request_id)
        sent = recorder.received
        assert _header(sent, b"x-request-id") == [request_id]
        await _until(lambda: (tmp_path / "access.jsonl").exists() and gw.service.access_file.flush() is None
                     and (tmp_path / "access.jsonl").read_text())
        [line] = [json.loads(l) for l in (tmp_path / "access.jsonl").read_text().splitlines()]
        assert line["request_id"] == request_id.decode()
        plugin_lines = [e for e in logged if e.get("plugin") == "logs" and "request_id" in e]
        assert plugin_lines and plugin_lines[0]["request_id"] == request_id.decode()
        assert request_id.decode() in plugin_lines[0]["log_format"].format(**plugin_lines[0])

        # The trace: the upstream was told its parent is the upstream span.
        [traceparent] = _header(sent, b"traceparent")
        version, trace_id, upstream_parent, flags = traceparent.split(b"-")
        assert (version, flags) == (b"00", b"01")
        assert line["trace_id"] == trace_id.decode()

        await _until(lambda: len(receiver.spans) >= 4)
        spans = {span.name: span for span in receiver.spans}
        assert len(receiver.spans) == 4, sorted(spans)
        server = spans["GET api"]
        assert {s.trace_id.hex() for s in receiver.spans} == {trace_id.decode()}
        assert server.parent_span_id == b""
        children = [spans["filter passes request"], spans["filter logs request"], spans["upstream backend"]]
        assert all(s.parent_span_id == server.span_id for s in children)
        assert spans["upstream backend"].span_id.hex() == upstream_parent.decode()
        attributes = {a.key: a.value for a in server.attributes}
        assert attributes["http.route"].string_value == "api"
        assert attributes["http.response.status_code"].int_value == 200
        assert attributes["client.address"].string_value == "127.0.0.1"
        assert attributes["wasmgate.request_id"].string_value == request_id.decode()
        filter_attributes = {a.key: a.value for a in spans["filter logs request"].attributes}
        assert filter_attributes["wasmgate.decision"].string_value == "continue"
        upstream = {a.key: a.value for a in spans["upstream backend"].attributes}
        assert upstream["http.response.status_code"].int_value == 200
        assert upstream["wasmgate.attempts"].int_value == 1
        # Timing nests: filters, then the upstream, all within the request.
        assert server.start_time_unix_nano <= spans["filter passes request"].start_time_unix_nano
        assert spans["filter logs request"].end_time_unix_nano <= spans["upstream backend"].start_time_unix_nano
        assert spans["upstream backend"].end_time_unix_nano <= server.end_time_unix_nano
        [resource] = receiver.resources
        assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "wasmgate"
    finally:
        globalLogPublisher.removeObserver(logged.append)
        await collector.stopListening()


@pytest_twisted.ensureDeferred
async def test_ids_and_trace_context_are_taken_from_trusted_peers_only(tmp_path, recording, start_gateway):
    receiver = OTLPReceiver()
    collector = reactor.listenTCP(0, Site(receiver), interface="127.0.0.1")
    try:
        recorder, url = recording()
        endpoint = f"http://127.0.0.1:{collector.getHost().port}/v1/traces"
        # Nothing new is sampled: only what a trusted client asks for is exported.
        tracing = f"tracing: {{otlp_endpoint: '{endpoint}', sample_ratio: 0}}\n"
        trusted = start_gateway(_yaml(url, tmp_path, tracing=tracing, trusted="127.0.0.1/32"), name="trusted.yaml")
        untrusted = start_gateway(_yaml(url, tmp_path, tracing=tracing), name="untrusted.yaml")
        theirs = (
            b"X-Request-Id: edge-42\r\n"
            b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
            b"tracestate: vendor=1\r\n"
        )
        answer = await threads.deferToThread(_get, int(trusted.url.rsplit(":", 1)[1]), theirs)
        assert _header(answer, b"x-request-id") == [b"edge-42"]
        assert _header(recorder.received, b"x-request-id") == [b"edge-42"]
        [traceparent] = _header(recorder.received, b"traceparent")
        assert traceparent.startswith(b"00-0af7651916cd43dd8448eb211c80319c-") and traceparent.endswith(b"-01")
        assert _header(recorder.received, b"tracestate") == [b"vendor=1"]
        await _until(lambda: len(receiver.spans) >= 4)
        server = next(s for s in receiver.spans if s.name == "GET api")
        assert server.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
        assert server.parent_span_id.hex() == "b7ad6b7169203331"

        before = len(recorder.connections)
        answer = await threads.deferToThread(_get, int(untrusted.url.rsplit(":", 1)[1]), theirs)
        [mine] = _header(answer, b"x-request-id")
        assert mine != b"edge-42"
        sent = b"".join(bytes(c.received) for c in recorder.connections[before:])
        assert _header(sent, b"x-request-id") == [mine]
        [traceparent] = _header(sent, b"traceparent")
        assert b"0af7651916cd43dd8448eb211c80319c" not in traceparent and traceparent.endswith(b"-00")
        assert _header(sent, b"tracestate") == []
        await task.deferLater(reactor, 1.5, lambda: None)  # an export interval: nothing more came
        assert len(receiver.spans) == 4
    finally:
        await collector.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_dead_collector_costs_requests_nothing_but_counted_drops(tmp_path, upstream, start_gateway):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    endpoint = f"http://127.0.0.1:{dead.getsockname()[1]}/v1/traces"
    dead.close()
    tracing = f"tracing: {{otlp_endpoint: '{endpoint}', sample_ratio: 1, max_queue: 5, timeout: 200ms}}\n"
    gw = start_gateway(_yaml(upstream.url, tmp_path, tracing=tracing))
    port = int(gw.url.rsplit(":", 1)[1])
    for _ in range(20):
        answer = await threads.deferToThread(_get, port)
        assert answer.startswith(b"HTTP/1.1 200 ")
    spans = gw.service.spans
    await _until(lambda: spans.dropped >= 20 * 4 and not spans._queue)
    assert spans.exported == 0
    metrics = await (await treq.get(gw.admin_url + "/metrics")).text()
    dropped = re.search(r"^wasmgate_trace_spans_dropped_total (\S+)$", metrics, re.M)
    assert dropped and float(dropped.group(1)) == 80.0


def _refused_over_h2(port: int) -> dict:
    from tests.h2_client import H2Client

    client = H2Client(port)
    try:
        stream_id = client.request("/", method="POST", headers=[("content-length", "99999999")])
        client.until(lambda: client.responses[stream_id]["status"] is not None)
        return client.responses[stream_id]
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_answers_refused_at_the_wire_carry_their_request_id(tmp_path, upstream, start_gateway):
    """The ID a client sees on a 400 is the one its access-log line has (HTTP/1.1 and HTTP/2)."""
    from tests.conftest import gateway_yaml

    log = tmp_path / "refused.jsonl"
    gw = start_gateway(gateway_yaml(upstream.url, server="  h2c: true\n  banner: edge") + f"access_log: {log}\n")
    port = int(gw.url.rsplit(":", 1)[1])

    def bad() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n")
            return read_until_closed(sock)

    answer = await threads.deferToThread(bad)
    assert answer.startswith(b"HTTP/1.1 400 ")
    [request_id] = _header(answer, b"x-request-id")
    assert _header(answer, b"server") == [b"edge"]
    h2 = await threads.deferToThread(_refused_over_h2, port)
    assert h2["status"] == 413
    h2_headers = dict(h2["headers"])
    assert h2_headers[b"server"] == b"edge"
    gw.service.access_file.flush()
    ids = {json.loads(line)["status"]: json.loads(line)["request_id"] for line in log.read_text().splitlines()}
    assert ids[400] == request_id.decode() and ids[413] == h2_headers[b"x-request-id"].decode()
