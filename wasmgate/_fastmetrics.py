# -*- test-case-name: tests.test_ops -*-
"""
Counters and histograms for the reactor thread, exported by a
prometheus_client collector at scrape time.

prometheus_client's own take a lock per increment and walk the buckets in
Python: some 3 µs a request for a counter and a histogram. These are plain
numbers in lists, touched by one thread (the reactor, which also serves
/metrics), with the bucket found by bisection: a fraction of that.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString


class CountSeries:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramSeries:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


class CounterFamily:
    """A counter by label values (C{name} without C{_total})."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], CountSeries] = {}
        if not self.labelnames:
            self.labels()  # a label-less counter shows from the start, at 0

    def inc(self, amount: float = 1.0) -> None:
        """Count on a label-less counter."""
        self.labels().inc(amount)

    def labels(self, *values: str) -> CountSeries:
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = CountSeries()
        return series

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in self._series.items():
            family.add_metric(values, series.value)
        return family


class HistogramFamily:
    """A histogram by label values, with fixed bucket bounds."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(float(b) for b in buckets)
        self._series: dict[tuple[str, ...], HistogramSeries] = {}

    def labels(self, *values: str) -> HistogramSeries:
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = HistogramSeries(self.bounds)
        return series

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        names = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for values, series in self._series.items():
            running = 0
            buckets = []
            for name, count in zip(names, series.counts):
                running += count
                buckets.append((name, running))
            family.add_metric(values, buckets, series.sum)
        return family


class FastCollector:
    """Registers families with a prometheus_client registry."""

    def __init__(self, *families: CounterFamily | HistogramFamily) -> None:
        self.families = families

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.collect()
