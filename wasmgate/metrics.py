# -*- test-case-name: tests.test_ops,tests.test_observability -*-
"""
Prometheus metrics of one gateway process, on a registry of its own.

The names the deployment's dashboards use are kept (C{http_requests_total},
C{http_request_duration_seconds}); the rest are C{wasmgate_*}. Counted on
the reactor thread for every request as plain numbers (L{_fastmetrics}),
exported without C{_created} series. Label values are bounded: paths are
normalised (ids become C{{id}}), each route keeps at most C{max_paths}
distinct paths (the rest are C{{other}}), and a request no route matched
is C{unmatched}; never a raw path.
"""
from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector

from wasmgate import _collectors as live
from wasmgate._fastmetrics import CounterFamily, FastCollector, HistogramFamily

if TYPE_CHECKING:
    from wasmgate.filterjobs import BatchingRunner
    from wasmgate.generation import Generation
    from wasmgate.http.factory import HTTPServerFactory
    from wasmgate.http.message import RequestRecord
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


_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_FILTER_LATENCY = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1)


class GatewayMetrics:
    """The gateway's collectors; the service and the proxy report into it."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        generation: Callable[[], "Generation"] | None = None,
        generations: Callable[[], Iterable["Generation"]] | None = None,
        max_paths: int = 200,
    ) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.max_paths = max_paths
        self._paths: dict[str, set[str]] = {}
        self._labels: dict[tuple[str, str], str] = {}
        self._children: dict[tuple[str, str, str, str, str], tuple[Any, Any]] = {}
        self._lock = threading.Lock()
        self.requests = CounterFamily(
            "http_requests", "Requests answered", ["method", "route", "path", "status", "protocol"]
        )
        self.duration = HistogramFamily(
            "http_request_duration_seconds", "Time from request to the end of the response",
            ["method", "route", "path"], _LATENCY,
        )
        self.upstream_requests = CounterFamily(
            "wasmgate_upstream_requests",
            "Requests sent to upstream targets, by the upstream's status (or error)",
            ["upstream", "target", "status"],
        )
        self.upstream_duration = HistogramFamily(
            "wasmgate_upstream_duration_seconds",
            "Time from sending a request upstream to the end of its response", ["upstream"], _LATENCY,
        )
        self.plugin_duration = HistogramFamily(
            "wasmgate_plugin_duration_seconds", "Time one filter took on one request or response",
            ["plugin"], _FILTER_LATENCY,
        )
        self.decisions = CounterFamily(
            "wasmgate_filter_decisions",
            "What filters decided: continue, answer (reason: its status), failed or skipped (reason: the kind)",
            ["plugin", "phase", "decision", "reason"],
        )
        self.plugin_errors = CounterFamily(
            "wasmgate_plugin_errors", "Filter failures by kind", ["plugin", "kind"]
        )
        self.bytes = CounterFamily(
            "wasmgate_bytes", "Body bytes from clients (in) and to clients (out)", ["direction"]
        )
        self.ejections = CounterFamily(
            "wasmgate_upstream_ejections", "Targets taken out of rotation after connect failures in a row",
            ["upstream", "target"],
        )
        self.reloads = CounterFamily("wasmgate_reloads", "Config reloads", ["result"])
        self.config_generation = Gauge(
            "wasmgate_config_generation", "Number of the live config generation", registry=r
        )
        self._bytes_in = self.bytes.labels("in")
        self._bytes_out = self.bytes.labels("out")
        # Series an alert takes increase() of exist from the start, at 0:
        # a series that appears at its first count hides that count.
        for result in ("ok", "error"):
            self.reloads.labels(result)
        ProcessCollector(registry=r)
        r.register(
            FastCollector(
                self.requests, self.duration, self.upstream_requests, self.upstream_duration,
                self.plugin_duration, self.decisions, self.plugin_errors, self.bytes, self.ejections,
                self.reloads,
            )
        )
        if generation is not None:
            r.register(live.LiveCollector(generation))
        if generations is not None:
            r.register(live.InFlightCollector(generations))

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

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "error").inc()

    def watch_filter_jobs(self, runner: "BatchingRunner") -> None:
        """Export the filter queue's length and what it refused or dropped."""
        self.registry.register(live.FilterJobsCollector(runner))

    def watch_tunnels(self, gateway: "Gateway") -> None:
        """Export the open upgraded (WebSocket) connections and their bytes."""
        self.registry.register(live.TunnelCollector(gateway))

    def watch_server(self, server: "HTTPServerFactory") -> None:
        """Export the client side's connection counts."""
        self.registry.register(live.ConnectionCollector(server))

    # Observers --

    def request_done(self, info: "RequestRecord", seconds: float) -> None:
        method = info.method
        if method not in _METHODS:
            method = "other"
        route = info.route
        if route:
            path = self._path_label(route, info.path)
        else:
            route, path = "-", "unmatched"  # one series for every path no route took
        key = (method, route, path, str(info.status), info.protocol)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(*key),
                self.duration.labels(method, route, path),
            )
        children[0].value += 1
        children[1].observe(seconds)
        self._bytes_out.value += info.bytes
        if info.bytes_in:
            self._bytes_in.value += info.bytes_in
        if info.target:
            self.upstream_requests.labels(info.upstream, info.target, info.upstream_status or "error").inc()
            if info.upstream_ended:
                self.upstream_duration.labels(info.upstream).observe(info.upstream_ended - info.upstream_started)
        for d in info.decisions:
            self.plugin_duration.labels(d.plugin).observe(d.seconds)
            decision, _, kind = d.outcome.partition(":")
            self.decisions.labels(d.plugin, d.phase, decision, str(d.status) if d.status else kind).inc()

    def plugin_known(self, plugin: str) -> None:
        """A filter was loaded: its failure series exist from now on, at 0."""
        from wasmgate.wasm.failures import FAILURE_KINDS

        with self._lock:
            for kind in FAILURE_KINDS:
                self.plugin_errors.labels(plugin, kind)

    def plugin_failed(self, plugin: str, kind: str) -> None:
        """A filter failed (any thread)."""
        with self._lock:
            self.plugin_errors.labels(plugin, kind).inc()


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
