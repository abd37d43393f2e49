# -*- test-case-name: tests.test_ops -*-
"""
Prometheus metrics of one gateway process, on a registry of its own.

Label values are bounded: paths are normalised (ids become C{{id}}) and
each route keeps at most C{max_paths} distinct paths, the rest counted as
C{{other}}; never a raw path.
"""
from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from wasmgate._fastmetrics import CounterFamily, FastCollector, HistogramFamily

if TYPE_CHECKING:
    from wasmgate.generation import Generation
    from wasmgate.http.message import RequestRecord
    from wasmgate.filterjobs import BatchingRunner
    from wasmgate.http.factory import HTTPServerFactory
    from wasmgate.proxy import Gateway

_ID_SEGMENT = re.compile(
    r"""^(
        [0-9]+                                                   # 123
      | [0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}  # uuid
      | (?=[^/]*[0-9])[0-9a-fA-F]{8,}                            # hex ids, hashes
      | [A-Za-z0-9_-]{20,}                                       # long opaque tokens
    )$""",
    re.VERBOSE,
)


def normalise_path(path: str, *, max_segments: int = 6) -> str:
    """C{/users/123/orders/9f8e...} -> C{/users/{id}/orders/{id}}."""
    segments = path.split("?", 1)[0].split("/")[1:]
    out = ["{id}" if _ID_SEGMENT.match(s) else s for s in segments[:max_segments]]
    if len(segments) > max_segments:
        out.append("...")
    return "/" + "/".join(out)


class GatewayMetrics:
    """The gateway's collectors; the service and the proxy report into it."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        generation: Callable[[], "Generation"] | None = None,
        max_paths: int = 200,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.max_paths = max_paths
        self._paths: dict[str, set[str]] = {}
        self._labels: dict[tuple[str, str], str] = {}
        self._children: dict[tuple[str, str, str, str, str], tuple[Any, Any]] = {}
        self._lock = threading.Lock()
        r = self.registry
        # Counted on the reactor thread for every request: plain numbers
        # (see _fastmetrics), not prometheus_client's locked values.
        self.requests = CounterFamily(
            "http_requests", "Requests answered", ["method", "route", "path", "status", "protocol"]
        )
        self.duration = HistogramFamily(
            "http_request_duration_seconds",
            "Time from request to the end of the response",
            ["method", "route", "path"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.plugin_duration = HistogramFamily(
            "wasmgate_plugin_duration_seconds",
            "Time one filter took on one request or response",
            ["plugin"],
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1),
        )
        self.plugin_errors = Counter(
            "wasmgate_plugin_errors", "Filter failures by kind", ["plugin", "kind"], registry=r
        )
        self.upstream_requests = CounterFamily(
            "wasmgate_upstream_requests",
            "Requests sent to upstream targets, by the upstream's status (or error)",
            ["upstream", "target", "status"],
        )
        self.config_generation = Gauge(
            "wasmgate_config_generation", "Number of the live config generation", registry=r
        )
        self.reloads = Counter("wasmgate_reloads", "Config reloads", ["result"], registry=r)
        self.ejections = CounterFamily(
            "wasmgate_upstream_ejections",
            "Targets taken out of rotation after connect failures in a row",
            ["upstream", "target"],
        )
        r.register(
            FastCollector(
                self.requests, self.duration, self.upstream_requests, self.plugin_duration, self.ejections
            )
        )
        if generation is not None:
            r.register(_LiveCollector(generation))

    def _path_label(self, route: str, path: str) -> str:
        key = (route, path)
        label = self._labels.get(key)
        if label is not None:
            return label
        label = self._new_path_label(route, path)
        if len(self._labels) >= 10_000:  # raw paths are unbounded: a bounded memo
            self._labels.clear()
        self._labels[key] = label
        return label

    def _new_path_label(self, route: str, path: str) -> str:
        normal = normalise_path(path)
        with self._lock:
            seen = self._paths.setdefault(route, set())
            if normal in seen:
                return normal
            if len(seen) >= self.max_paths:
                return "{other}"
            seen.add(normal)
            return normal

    def target_ejected(self, upstream: str, target: str) -> None:
        self.ejections.labels(upstream, target).inc()

    def watch_filter_jobs(self, runner: "BatchingRunner") -> None:
        """Export the filter queue's length and what it refused or dropped."""
        self.registry.register(_FilterJobsCollector(runner))

    def watch_tunnels(self, gateway: "Gateway") -> None:
        """Export the open upgraded (WebSocket) connections and their bytes."""
        self.registry.register(_TunnelCollector(gateway))

    def watch_server(self, server: "HTTPServerFactory") -> None:
        """Export the client side's connection counts."""
        self.registry.register(_ConnectionCollector(server))

    # Observers --

    def request_done(self, info: "RequestRecord", seconds: float) -> None:
        method = info.method
        if method not in _METHODS:
            method = "other"
        route = info.route or "-"
        path = self._path_label(route, info.path)
        key = (method, route, path, str(info.status), info.protocol)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(*key),
                self.duration.labels(method, route, path),
            )
        children[0].value += 1
        children[1].observe(seconds)
        if info.target:
            self.upstream_requests.labels(info.upstream, info.target, info.upstream_status or "error").inc()
        for decision in info.decisions:
            self.plugin_duration.labels(decision.plugin).observe(decision.seconds)

    def plugin_failed(self, plugin: str, kind: str) -> None:
        self.plugin_errors.labels(plugin, kind).inc()


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})


class _TunnelCollector:
    """WebSocket tunnels: open now, and bytes through them (read at scrape time)."""

    def __init__(self, gateway: "Gateway") -> None:
        self._gateway = gateway

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        gateway = self._gateway
        tunnels = list(gateway.tunnels)
        yield GaugeMetricFamily("wasmgate_tunnels_open", "WebSocket tunnels open", value=len(tunnels))
        carried = CounterMetricFamily(
            "wasmgate_tunnel_bytes", "Bytes through WebSocket tunnels", labels=["direction"]
        )
        carried.add_metric(["in"], gateway.tunnel_bytes_in + sum(t.bytes_in for t in tunnels))
        carried.add_metric(["out"], gateway.tunnel_bytes_out + sum(t.bytes_out for t in tunnels))
        yield carried


class _FilterJobsCollector:
    """The filter job queue (read at scrape time)."""

    def __init__(self, runner: "BatchingRunner") -> None:
        self._runner = runner

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        runner = self._runner
        yield GaugeMetricFamily(
            "wasmgate_filter_queue", "Filter jobs waiting for a thread", value=runner.queued()
        )
        yield CounterMetricFamily(
            "wasmgate_filter_queue_rejected",
            "Requests answered 503 because filters.max_queue jobs were waiting",
            value=runner.rejected,
        )
        yield CounterMetricFamily(
            "wasmgate_filter_jobs_dropped",
            "Queued filter jobs not run because their client had left",
            value=runner.dropped,
        )


class _ConnectionCollector:
    """Client connections: open now, and closed at the limit (read at scrape time)."""

    def __init__(self, server: "HTTPServerFactory") -> None:
        self._server = server

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        server = self._server
        yield GaugeMetricFamily(
            "wasmgate_connections_open", "Client connections open", value=len(server.connections)
        )
        yield CounterMetricFamily(
            "wasmgate_connections_refused",
            "Client connections closed at once: server.max_connections were open, none idle",
            value=server.refused_connections,
        )
        yield CounterMetricFamily(
            "wasmgate_connections_idle_closed",
            "Kept-alive idle client connections closed to make room for new ones",
            value=server.idle_closed,
        )


class _LiveCollector:
    """Gauges read from the live generation at scrape time."""

    def __init__(self, generation: Callable[[], "Generation"]) -> None:
        self._generation = generation

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        generation = self._generation()
        healthy = GaugeMetricFamily(
            "wasmgate_upstream_healthy", "1 if the target gets traffic", labels=["upstream", "target"]
        )
        for name, upstream in generation.upstreams.items():
            for target in upstream.targets:
                up = target.healthy and target.available(upstream.now())
                healthy.add_metric([name, target.url], 1.0 if up else 0.0)
        yield healthy
        memory = GaugeMetricFamily(
            "wasmgate_plugin_memory_bytes", "Linear memory of a filter's instances", labels=["plugin"]
        )
        instances = GaugeMetricFamily(
            "wasmgate_plugin_instances", "Live instances of a filter", labels=["plugin"]
        )
        for name, wasm_filter in generation.filters.items():
            memory.add_metric([name], float(wasm_filter.memory_bytes()))
            instances.add_metric([name], float(wasm_filter.instance_count()))
        yield memory
        yield instances
