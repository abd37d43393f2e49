"""
L{wasmgate._metricsmerge}: worker pages add up to one gateway's, gauges
measured alike are not summed, and a dead worker's counts are carried so
counters never go backwards.
"""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from wasmgate._metricsmerge import MetricsMerge, WorkerPage, render

PAGE = """\
# HELP http_requests_total Requests answered
# TYPE http_requests_total counter
http_requests_total{route="api",status="200"} %(requests)s
# HELP http_request_duration_seconds Time
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{route="api",le="0.1"} %(fast)s
http_request_duration_seconds_bucket{route="api",le="+Inf"} %(requests)s
http_request_duration_seconds_count{route="api"} %(requests)s
http_request_duration_seconds_sum{route="api"} %(seconds)s
# HELP wasmgate_requests_in_flight In flight
# TYPE wasmgate_requests_in_flight gauge
wasmgate_requests_in_flight %(in_flight)s
# HELP wasmgate_tls_cert_not_after_seconds Expiry
# TYPE wasmgate_tls_cert_not_after_seconds gauge
wasmgate_tls_cert_not_after_seconds{host="a"} %(expiry)s
# HELP wasmgate_config_generation Generation
# TYPE wasmgate_config_generation gauge
wasmgate_config_generation %(generation)s
"""


def _page(**values: float) -> WorkerPage:
    return WorkerPage(PAGE % values)


def _samples(text: bytes) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_pages_add_up_except_gauges_measured_alike_and_dropped_names() -> None:
    merge = MetricsMerge(drop=("wasmgate_config_generation",))
    one = _page(requests=10, fast=7, seconds=1.5, in_flight=2, expiry=2000, generation=3)
    two = _page(requests=5, fast=5, seconds=0.5, in_flight=1, expiry=1000, generation=4)
    samples = _samples(render(merge.families([one, two])))
    assert samples[("http_requests_total", (("route", "api"), ("status", "200")))] == 15
    assert samples[("http_request_duration_seconds_bucket", (("le", "0.1"), ("route", "api")))] == 12
    assert samples[("http_request_duration_seconds_count", (("route", "api"),))] == 15
    assert samples[("http_request_duration_seconds_sum", (("route", "api"),))] == 2.0
    assert samples[("wasmgate_requests_in_flight", ())] == 3
    assert samples[("wasmgate_tls_cert_not_after_seconds", (("host", "a"),))] == 1000
    assert not any(name == "wasmgate_config_generation" for name, _ in samples)
    assert one.total("http_requests_total") == 10


def test_a_dead_workers_counts_are_carried_and_its_gauges_are_not() -> None:
    merge = MetricsMerge()
    dying = _page(requests=10, fast=7, seconds=1.5, in_flight=2, expiry=2000, generation=1)
    other = _page(requests=5, fast=5, seconds=0.5, in_flight=1, expiry=2000, generation=1)
    before = _samples(render(merge.families([dying, other])))
    merge.retire(dying)
    restarted = _page(requests=1, fast=1, seconds=0.1, in_flight=0, expiry=2000, generation=1)
    after = _samples(render(merge.families([restarted, other])))
    key = ("http_requests_total", (("route", "api"), ("status", "200")))
    assert before[key] == 15 and after[key] == 16  # never backwards
    assert after[("http_request_duration_seconds_bucket", (("le", "+Inf"), ("route", "api")))] == 16
    assert after[("wasmgate_requests_in_flight", ())] == 1
