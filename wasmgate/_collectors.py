# -*- test-case-name: tests.test_ops,tests.test_observability -*-
"""
Metrics read at scrape time from the live objects: upstream health, plugin
memory and instances, requests in flight, client connections, WebSocket
tunnels and the filter job queue.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from wasmgate.filterjobs import BatchingRunner
    from wasmgate.generation import Generation
    from wasmgate.http.factory import HTTPServerFactory
    from wasmgate.proxy import Gateway


class InFlightCollector:
    """Requests being answered now, on every generation still running."""

    def __init__(self, generations: Callable[[], Iterable["Generation"]]) -> None:
        self._generations = generations

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily(
            "wasmgate_requests_in_flight",
            "Requests being answered now (all config generations)",
            value=sum(g.in_flight for g in self._generations()),
        )


class TunnelCollector:
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


class FilterJobsCollector:
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


class ConnectionCollector:
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


class LiveCollector:
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
        limit = GaugeMetricFamily(
            "wasmgate_plugin_memory_limit_bytes", "Memory one instance of a filter may use (memory_limit_mb)",
            labels=["plugin"],
        )
        for name, wasm_filter in generation.filters.items():
            memory.add_metric([name], float(wasm_filter.memory_bytes()))
            instances.add_metric([name], float(wasm_filter.instance_count()))
            limit.add_metric([name], float(wasm_filter.memory_limit))
        yield memory
        yield instances
        yield limit
