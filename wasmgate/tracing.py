# -*- test-case-name: tests.test_observability -*-
"""
Spans of sampled requests, exported over OTLP/HTTP with the OpenTelemetry
SDK (the optional C{wasmgate[otel]} extra).

The reactor only appends a finished request's record to a bounded queue;
a thread of its own turns records into spans (a server span, one per
filter call, one for the upstream exchange, with the timings and IDs the
exchange kept) and exports them in batches. A collector that is slow or
gone costs requests nothing: when the queue is full a record is dropped,
and an export that fails drops its batch, both counted.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Iterator, Optional

if TYPE_CHECKING:
    from wasmgate.config import TracingConfig
    from wasmgate.http.message import RequestRecord


class TracingUnavailable(Exception):
    """The OpenTelemetry SDK is not installed (pip install wasmgate[otel])."""


class SpanExport:
    """The export queue and its thread; L{submit} is all the reactor does."""

    def __init__(
        self,
        *,
        endpoint: str,
        service_name: str = "wasmgate",
        max_queue: int = 2048,
        batch: int = 256,
        interval: float = 1.0,
        timeout: float = 5.0,
        exporter: Any = None,
    ) -> None:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        except ImportError:
            raise TracingUnavailable("tracing needs the OpenTelemetry SDK: pip install wasmgate[otel]") from None
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=endpoint, timeout=timeout)
        self._exporter = exporter
        self._resource = Resource.create({"service.name": service_name})
        self._scope = InstrumentationScope("wasmgate")
        self.max_queue = max_queue
        self.batch = batch
        self.interval = interval
        self.exported = 0
        """Spans the collector took."""
        self.dropped = 0
        """Spans lost: the queue was full, or their export failed."""
        self._queue: deque[RequestRecord] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="wasmgate-spans", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, record: "RequestRecord") -> None:
        """A sampled request is over: queue its spans (reactor thread)."""
        if len(self._queue) >= self.max_queue:
            self.dropped += 2 + len(record.decisions)
            return
        self._queue.append(record)
        if len(self._queue) >= self.batch:
            self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        """Export what is queued (within C{timeout}) and stop the thread."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._exporter.shutdown()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            while self._queue:
                records = []
                while self._queue and len(records) < self.batch:
                    records.append(self._queue.popleft())
                spans = [span for record in records for span in self._spans(record)]
                try:
                    ok = self._exporter.export(spans).name == "SUCCESS"
                except Exception:  # the exporter's own errors: a lost batch, counted
                    ok = False
                if ok:
                    self.exported += len(spans)
                else:
                    self.dropped += len(spans)
            if self._stopping:
                return

    def _spans(self, record: "RequestRecord") -> list[Any]:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        trace = record.trace
        trace_id = int(trace.trace_id, 16)
        flags = TraceFlags(TraceFlags.SAMPLED)

        def context(span_id: bytes, remote: bool = False) -> SpanContext:
            return SpanContext(trace_id, int(span_id, 16), is_remote=remote, trace_flags=flags)

        server = context(trace.span_id)
        common = {"resource": self._resource, "instrumentation_scope": self._scope}
        failed = Status(StatusCode.ERROR)
        spans = [
            ReadableSpan(
                f"{record.method} {record.route or 'unmatched'}",
                context=server,
                parent=context(trace.parent_id, remote=True) if trace.parent_id else None,
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": record.method,
                    "url.path": record.path,
                    "http.route": record.route,
                    "http.response.status_code": record.status,
                    "client.address": record.client_ip,
                    "server.address": record.host,
                    "network.protocol.version": record.protocol.rpartition("/")[2],
                    "wasmgate.request_id": record.request_id,
                },
                status=failed if record.status >= 500 else Status(StatusCode.UNSET),
                start_time=_ns(record.started),
                end_time=_ns(record.ended or record.started),
                **common,
            )
        ]
        for d in record.decisions:
            decision, _, kind = d.outcome.partition(":")
            attributes: dict[str, Any] = {"wasmgate.plugin": d.plugin, "wasmgate.phase": d.phase, "wasmgate.decision": decision}
            if kind:
                attributes["wasmgate.failure_kind"] = kind
            if d.status:
                attributes["http.response.status_code"] = d.status
            spans.append(
                ReadableSpan(
                    f"filter {d.plugin} {d.phase}",
                    context=context(_span_id()),
                    parent=server,
                    kind=SpanKind.INTERNAL,
                    attributes=attributes,
                    status=failed if decision == "failed" else Status(StatusCode.UNSET),
                    start_time=_ns(d.at),
                    end_time=_ns(d.at + d.seconds),
                    **common,
                )
            )
        if record.upstream_started:
            upstream_attributes: dict[str, Any] = {
                "server.address": record.target,
                "wasmgate.upstream": record.upstream,
                "wasmgate.attempts": record.attempts,
            }
            if record.upstream_status.isdigit():
                upstream_attributes["http.response.status_code"] = int(record.upstream_status)
            else:
                upstream_attributes["error.type"] = record.upstream_status or "error"
            spans.append(
                ReadableSpan(
                    f"upstream {record.upstream}",
                    context=context(trace.upstream_span_id),
                    parent=server,
                    kind=SpanKind.CLIENT,
                    attributes=upstream_attributes,
                    status=Status(StatusCode.UNSET) if record.upstream_status.isdigit() else failed,
                    start_time=_ns(record.upstream_started),
                    end_time=_ns(record.upstream_ended or record.ended or record.upstream_started),
                    **common,
                )
            )
        return spans


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _span_id() -> bytes:
    from wasmgate._ids import new_span_id

    return new_span_id()


def span_export(config: Optional["TracingConfig"]) -> Optional[SpanExport]:
    """The exporter C{tracing:} asks for, or None."""
    if config is None:
        return None
    return SpanExport(
        endpoint=config.otlp_endpoint,
        max_queue=config.max_queue,
        service_name=config.service_name,
        timeout=config.timeout,
    )


class SpanCollector:
    """What became of sampled spans: exported or dropped (read at scrape time)."""

    def __init__(self, export: SpanExport) -> None:
        self._export = export

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily(
            "wasmgate_trace_spans_exported", "Spans the OTLP collector accepted", value=self._export.exported
        )
        yield CounterMetricFamily(
            "wasmgate_trace_spans_dropped",
            "Spans lost: the export queue was full or the collector failed",
            value=self._export.dropped,
        )
