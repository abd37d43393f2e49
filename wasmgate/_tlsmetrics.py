# -*- test-case-name: tests.test_tls -*-
"""
The TLS metrics: certificate expiry per SNI host, rejected reloads, and
handshakes by result (with the alert of a failed one).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Iterator

from OpenSSL import SSL
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from wasmgate._fastmetrics import CounterFamily

if TYPE_CHECKING:
    from wasmgate._tlsstore import CertificateStore


_ALERTS = {
    10: "unexpected_message", 20: "bad_record_mac", 40: "handshake_failure", 42: "bad_certificate",
    43: "unsupported_certificate", 45: "certificate_expired", 46: "certificate_unknown",
    47: "illegal_parameter", 48: "unknown_ca", 50: "decode_error", 51: "decrypt_error",
    70: "protocol_version", 71: "insufficient_security", 80: "internal_error",
    86: "inappropriate_fallback", 90: "user_canceled", 109: "missing_extension",
    110: "unsupported_extension", 112: "unrecognized_name", 116: "certificate_required",
    120: "no_application_protocol",
}
"""TLS alert descriptions (RFC 8446 6.2), for handshake failure reasons."""


class TLSMetrics:
    """
    C{wasmgate_tls_cert_not_after_seconds{host}} (read from the attached
    stores at scrape time, so hosts dropped by a config reload disappear),
    C{wasmgate_tls_reload_errors_total}, and
    C{wasmgate_tls_handshakes_total{result,reason}} (C{ok}, or C{failed}
    with the TLS alert the gateway sent or got: C{protocol_version},
    C{unknown_ca}, C{handshake_failure}, ...).

    Make one per registry and pass it to every L{CertificateStore}: a
    collector can be registered only once.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.reload_errors = CounterFamily(
            "wasmgate_tls_reload_errors",
            "Changed certificate/key files that were rejected "
            "(the previous certificate stays in service).",
            [],
        )
        self.handshakes = CounterFamily(
            "wasmgate_tls_handshakes", "TLS handshakes, by result and (failed) the TLS alert", ["result", "reason"]
        )
        self._ok = self.handshakes.labels("ok", "")
        self._stores: list[weakref.ReferenceType[CertificateStore]] = []
        if registry is not None:
            registry.register(self)

    def handshake_event(self, connection: SSL.Connection, where: int, ret: int) -> None:
        """OpenSSL's info callback: count handshakes done, and fatal alerts."""
        if where & SSL.SSL_CB_HANDSHAKE_DONE:
            self._ok.inc()
        elif where & SSL.SSL_CB_ALERT and ret >> 8 == 2:  # a fatal alert, either way
            self.handshakes.labels("failed", _ALERTS.get(ret & 0xFF, "alert_%d" % (ret & 0xFF))).inc()

    def attach(self, store: CertificateStore) -> None:
        self._stores = [r for r in self._stores if r() not in (None, store)]
        self._stores.append(weakref.ref(store))

    def detach(self, store: CertificateStore) -> None:
        self._stores = [r for r in self._stores if r() not in (None, store)]

    def not_after(self) -> dict[str, float]:
        """
        Expiry per host; the most recently attached store wins a host.
        """
        expiry: dict[str, float] = {}
        for ref in self._stores:
            store = ref()
            if store is not None:
                for host, pair in store.serving().items():
                    expiry[host] = pair.not_after.timestamp()
        return expiry

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._gauge()]

    def collect(self) -> Iterator[Any]:
        gauge = self._gauge()
        for host, when in sorted(self.not_after().items()):
            gauge.add_metric([host], when)
        yield gauge
        yield self.reload_errors.collect()
        yield self.handshakes.collect()

    @staticmethod
    def _gauge() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "wasmgate_tls_cert_not_after_seconds",
            "Expiry (Unix time) of the certificate served for each SNI host.",
            labels=["host"],
        )
