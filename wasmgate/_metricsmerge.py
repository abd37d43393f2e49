# -*- test-case-name: tests.test_metricsmerge,tests.test_workers -*-
"""
One C{/metrics} page for a gateway of several workers: each worker's page
parsed and added up (counters, histograms and most gauges summed; a few
gauges that every worker measures alike take their minimum or maximum), so
a scrape sees one gateway and no per-worker duplicates.

A worker that dies takes its counts with it; what it had counted at its
last scrape is carried, so the gateway's counters never go backwards (which
Prometheus would read as a reset) when a worker is restarted.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

SampleKey = tuple[str, tuple[tuple[str, str], ...]]
"""A sample's name and its sorted labels."""

GAUGE_MERGE: dict[str, Callable[[Iterable[float]], float]] = {
    "wasmgate_tls_cert_not_after_seconds": min,
    "wasmgate_upstream_healthy": max,
    "wasmgate_plugin_memory_limit_bytes": max,
    "process_start_time_seconds": min,
    "process_max_fds": min,
}
"""Gauges every worker measures alike: not summed."""

_CUMULATIVE = ("counter", "histogram", "summary")


class WorkerPage:
    """One worker's parsed C{/metrics}: its families' types and help, and its samples."""

    def __init__(self, text: str) -> None:
        self.families: dict[str, tuple[str, str]] = {}
        self.samples: dict[str, dict[SampleKey, float]] = {}
        for family in text_string_to_metric_families(text):
            self.families[family.name] = (family.type, family.documentation)
            samples = self.samples.setdefault(family.name, {})
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = samples.get(key, 0.0) + sample.value

    def total(self, sample_name: str) -> float:
        """The sum of every sample called C{sample_name} (e.g. all requests)."""
        return sum(
            value
            for samples in self.samples.values()
            for (name, _), value in samples.items()
            if name == sample_name
        )


class MetricsMerge:
    """Adds up worker pages, and keeps what dead workers had counted."""

    def __init__(self, *, drop: Iterable[str] = ()) -> None:
        self._drop = frozenset(drop)
        self._carried: dict[str, dict[SampleKey, float]] = {}
        self._carried_families: dict[str, tuple[str, str]] = {}

    def retire(self, page: Optional[WorkerPage]) -> None:
        """A worker died: keep its cumulative counts from C{page}, its last."""
        if page is None:
            return
        for name, (kind, documentation) in page.families.items():
            if kind not in _CUMULATIVE or name in self._drop:
                continue
            self._carried_families[name] = (kind, documentation)
            carried = self._carried.setdefault(name, {})
            for key, value in page.samples.get(name, {}).items():
                carried[key] = carried.get(key, 0.0) + value

    def families(self, pages: Iterable[WorkerPage]) -> list[Metric]:
        """The merged families of C{pages} and of the workers retired."""
        kinds: dict[str, tuple[str, str]] = dict(self._carried_families)
        values: dict[str, dict[SampleKey, list[float]]] = {}
        for name, carried in self._carried.items():
            into = values.setdefault(name, {})
            for key, value in carried.items():
                into.setdefault(key, []).append(value)
        for page in pages:
            for name, kind in page.families.items():
                if name in self._drop:
                    continue
                kinds.setdefault(name, kind)
                into = values.setdefault(name, {})
                for key, value in page.samples.get(name, {}).items():
                    into.setdefault(key, []).append(value)
        result = []
        for name in sorted(kinds):
            kind, documentation = kinds[name]
            merge = GAUGE_MERGE.get(name, sum) if kind == "gauge" else sum
            metric = Metric(name, documentation, kind)
            for (sample_name, labels), found in values.get(name, {}).items():
                metric.add_sample(sample_name, dict(labels), merge(found))
            result.append(metric)
        return result


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def render(families: list[Metric]) -> bytes:
    """The Prometheus text format of C{families}."""
    return generate_latest(_Families(families))  # type: ignore[arg-type]
