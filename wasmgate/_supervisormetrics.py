# -*- test-case-name: tests.test_workers -*-
"""
What only the supervisor knows, for the gateway's C{/metrics}: the config
generation and reloads (the workers' own are dropped from the sum), and
its workers: how many are ready, each one's process, restarts and requests.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

if TYPE_CHECKING:
    from wasmgate.supervisor import SupervisorService


class SupervisorMetrics:
    def __init__(self, supervisor: "SupervisorService") -> None:
        self._supervisor = supervisor
        self.reloads = {"ok": 0, "error": 0}

    def families(self) -> list[Metric]:
        supervisor = self._supervisor
        slots = supervisor.slots
        generation = GaugeMetricFamily(
            "wasmgate_config_generation", "Number of the live config generation", value=supervisor.generation
        )
        reloads = CounterMetricFamily("wasmgate_reloads", "Config reloads", labels=["result"])
        for result, count in self.reloads.items():
            reloads.add_metric([result], count)
        workers = GaugeMetricFamily("wasmgate_workers", "Worker processes by state", labels=["state"])
        for state in ("ready", "starting", "stopping", "down"):
            workers.add_metric([state], sum(1 for s in slots if s.state == state))
        info = GaugeMetricFamily(
            "wasmgate_worker_info", "The process running each worker (1 while it runs)", labels=["worker", "pid"]
        )
        restarts = CounterMetricFamily(
            "wasmgate_worker_restarts", "Workers the supervisor restarted after they died", labels=["worker"]
        )
        requests = CounterMetricFamily(
            "wasmgate_worker_requests", "Requests each worker answered (how the kernel spread connections)",
            labels=["worker"],
        )
        for slot in slots:
            worker = str(slot.index)
            if slot.alive and slot.pid is not None:
                info.add_metric([worker, str(slot.pid)], 1)
            restarts.add_metric([worker], slot.restarts)
            answered = slot.page.total("http_requests_total") if slot.page is not None else 0.0
            requests.add_metric([worker], slot.requests_carried + answered)
        return [generation, reloads, workers, info, restarts, requests]
