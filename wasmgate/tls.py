# -*- test-case-name: tests.test_tls -*-
"""
TLS for wasmgate: terminating client connections (SNI certificate store
with in-memory rotation) and verifying upstream servers.

Server side: a L{CertificateStore} holds one hardened C{OpenSSL.SSL.Context}
per configured certificate and is itself the
L{IOpenSSLServerConnectionCreator} given to Twisted's TLS layer
(L{tls_factory}, L{tls_endpoint}).  The choice of certificate happens in
OpenSSL's servername callback, which reads the store's current mapping, so a
rotated certificate is seen by the next handshake while connections already
established keep the context they were made with.

Client side: L{upstream_tls_policy} gives the L{IPolicyForHTTPS} for the
upstream C{Agent}.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from OpenSSL import SSL
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from twisted.internet.endpoints import wrapServerTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer
from cryptography.hazmat.primitives import serialization

from wasmgate._fastmetrics import CounterFamily
from wasmgate._tlsfiles import (
    LoadedPair,
    PairError,
    date_problems,
    describe,
    load_ca_certificates,
    load_pair,
    read_snapshot,
    stat_signature,
)

if TYPE_CHECKING:
    from wasmgate.config import TLSConfig

__all__ = [
    "CertificateError",
    "CertificateReport",
    "CertificateSlot",
    "CertificateSpec",
    "CertificateStore",
    "CertificateWarning",
    "TLSMetrics",
    "certificate_specs",
    "check_certificates",
    "tls_endpoint",
    "tls_factory",
    "upstream_tls_policy",
    "validate_certificates",
]


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


@dataclass(frozen=True)
class CertificateSpec:
    """
    One C{server.tls.certificates} entry: the SNI names it answers for, a
    PEM certificate file (leaf first, then intermediates) and its key file.
    """

    hosts: tuple[str, ...]
    cert: str
    key: str


def certificate_specs(tls: "TLSConfig") -> list[CertificateSpec]:
    """The specs of a config's C{server.tls.certificates}."""
    return [CertificateSpec(hosts=c.hosts, cert=c.cert, key=c.key) for c in tls.certificates]


class CertificateError(ValueError):
    """
    The configured certificates cannot be served.  C{problems} holds one
    message per problem, each naming the file or host it is about.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems: tuple[str, ...] = tuple(problems)


_MIN_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}

# TLS 1.2 suites: forward secret (ECDHE) with AEAD only (Mozilla
# "intermediate" minus DHE).  TLS 1.3 suites are all AEAD; OpenSSL's
# defaults are kept for them.
_TLS12_CIPHERS = b":".join(
    [
        b"ECDHE-ECDSA-AES128-GCM-SHA256",
        b"ECDHE-RSA-AES128-GCM-SHA256",
        b"ECDHE-ECDSA-AES256-GCM-SHA384",
        b"ECDHE-RSA-AES256-GCM-SHA384",
        b"ECDHE-ECDSA-CHACHA20-POLY1305",
        b"ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def _normalize_host(host: str) -> str:
    """
    Canonical form of a configured SNI name (lower case, no trailing dot,
    IDNA A-labels), as clients send it in the handshake.

    @raise ValueError: if C{host} is not a host name or a C{*.example.com}
        wildcard.
    """
    name = host.strip().rstrip(".").lower()
    wildcard = name.startswith("*.")
    body = name[2:] if wildcard else name
    if not body:
        raise ValueError(f"{host!r} is not a host name")
    if "*" in body:
        raise ValueError(
            f"{host!r}: a wildcard may only be the whole first label, "
            f"as in '*.example.com'"
        )
    try:
        body = body.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise ValueError(f"{host!r} is not a valid host name: {e}") from None
    labels = body.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{host!r} is not a valid host name")
    if wildcard and len(labels) < 2:
        raise ValueError(
            f"{host!r}: a wildcard must be followed by at least two labels, "
            f"as in '*.example.com'"
        )
    return ("*." if wildcard else "") + body


def _covers(cert_names: Sequence[str], host: str) -> bool:
    """
    Would a client accept a certificate with these DNS names for C{host}?
    (For a configured wildcard, the certificate needs that same wildcard.)
    """
    if host in cert_names:
        return True
    if host.startswith("*."):
        return False
    _, _, parent = host.partition(".")
    return bool(parent) and f"*.{parent}" in cert_names


def _still_covers(entry: "_Entry", pair: LoadedPair) -> None:
    """
    Refuse a replacement that no longer covers a configured host the
    current certificate covers (the wrong file deployed): clients would
    fail their handshakes.

    @raise PairError: naming the hosts it leaves out.
    """
    current, new = entry.pair.dns_names(), pair.dns_names()
    lost = [host for host in entry.hosts if _covers(current, host) and not _covers(new, host)]
    if lost:
        raise PairError(
            [
                f"{entry.spec.cert}: the new certificate does not cover host(s) {', '.join(lost)}"
                f" (it is for: {', '.join(new) or 'no DNS names'})"
            ]
        )


def _select_alpn(protocols: Sequence[bytes]) -> Callable[..., bytes]:
    def select(connection: SSL.Connection, offered: list[bytes]) -> bytes:
        for proto in protocols:
            if proto in offered:
                return proto
        # Carry on without ALPN rather than failing the handshake: a client
        # that offers only other protocols may still speak HTTP/1.1.
        return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]

    return select


@dataclass(frozen=True)
class _Routes:
    """
    The servername callback's view: replaced as a whole, never mutated, so
    a handshake always sees one consistent mapping.
    """

    by_name: Mapping[str, SSL.Context]
    default: SSL.Context


@dataclass(eq=False)
class _Entry:
    """
    The store's bookkeeping for one L{CertificateSpec}.
    """

    spec: CertificateSpec
    hosts: tuple[str, ...]
    pair: LoadedPair
    context: SSL.Context
    seen: tuple[object, object]
    # (cert sha, key sha) and problems of a bad pair not reported yet
    pending: tuple[tuple[str | None, str | None], list[str]] | None = None
    # (cert sha, key sha) of the last bad pair reported, to report it once
    failed: tuple[str | None, str | None] | None = None


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


@implementer(IOpenSSLServerConnectionCreator)
class CertificateStore:
    """
    SNI certificate store and server connection creator.

    Certificates are chosen per handshake: exact host name, then a
    C{*.example.com} wildcard one label deep, then the first entry.  Files are
    re-read by L{check} (or the watcher started by L{start_watching}) and
    L{reload}; a good new pair is swapped in for new handshakes, a bad one is
    reported and the previous certificate stays in service.
    """

    def __init__(
        self,
        certificates: Sequence[CertificateSpec],
        *,
        min_version: str = "1.2",
        alpn_protocols: Sequence[bytes] = (b"http/1.1",),
        registry: CollectorRegistry | None = None,
        metrics: TLSMetrics | None = None,
        log: Logger | None = None,
        on_reload_error: (
            Callable[[CertificateSpec, Sequence[str]], object] | None
        ) = None,
    ) -> None:
        """
        Load and validate every pair; refuse to start with any bad one.
        A certificate that has expired or is not valid yet is served all
        the same, with a warning logged: refusing it would turn one
        forgotten host into an outage of every host (nginx and Envoy
        serve it too).

        @param metrics: the process's L{TLSMetrics}, shared by every store
            built over the process's life (config reloads).
        @param registry: shorthand for C{metrics=TLSMetrics(registry)}, for
            a store that is the registry's only one.  With neither, metrics
            are kept but registered nowhere (no process-global registry).
        @param on_reload_error: called with the spec and the problems each
            time a changed pair is rejected.

        @raise CertificateError: with every problem found.
        """
        if min_version not in _MIN_VERSIONS:
            raise ValueError(
                f"min_version must be one of {sorted(_MIN_VERSIONS)}, "
                f"not {min_version!r}"
            )
        problems = validate_certificates(certificates, check_hosts=False)
        if problems:
            raise CertificateError(problems)
        self._min_version = _MIN_VERSIONS[min_version]
        self._alpn = _select_alpn(tuple(alpn_protocols))
        self._log = log if log is not None else Logger(namespace=__name__, source=self)
        self._on_reload_error = on_reload_error
        self._watcher: LoopingCall | None = None
        if metrics is not None and registry is not None:
            raise ValueError("pass metrics or registry, not both")
        self._metrics = metrics if metrics is not None else TLSMetrics(registry)
        self._entries: list[_Entry] = []
        for spec in certificates:
            seen = (stat_signature(spec.cert), stat_signature(spec.key))
            try:
                pair = load_pair(
                    read_snapshot(spec.cert), read_snapshot(spec.key), check_dates=False
                )
            except PairError as e:  # changed since validation just now
                raise CertificateError(e.problems) from None
            entry = _Entry(
                spec=spec,
                hosts=tuple(_normalize_host(h) for h in spec.hosts),
                pair=pair,
                context=self._build_context(pair),
                seen=seen,
            )
            self._entries.append(entry)
        self._routes = self._make_routes()
        self._metrics.attach(self)
        for entry in self._entries:
            self._warn_dates(entry)

    def _warn_dates(self, entry: _Entry) -> None:
        for problem in date_problems(entry.spec.cert, entry.pair.leaf):
            self._log.warn(
                "TLS certificate for {hosts}: {problem}; serving it anyway, "
                "but clients that check dates will refuse it",
                hosts=", ".join(entry.hosts),
                problem=problem,
                cert_file=entry.spec.cert,
                key_file=entry.spec.key,
                not_before=entry.pair.leaf.not_valid_before_utc.isoformat(),
                not_after=entry.pair.not_after.isoformat(),
            )

    def close(self) -> None:
        """
        Stop watching and stop reporting this store's certificates in the
        metrics (when a config reload replaces it).  Connections using it
        are not affected.
        """
        self.stop_watching()
        self._metrics.detach(self)

    # -- serving

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """
        Start every connection on the default certificate; the servername
        callback switches it once the client's SNI name is known.
        """
        return SSL.Connection(self._routes.default, None)

    def context_for(self, server_name: str | bytes | None) -> SSL.Context:
        """
        The context a handshake for C{server_name} gets right now.
        """
        routes = self._routes
        if not server_name:
            return routes.default
        if isinstance(server_name, bytes):
            try:
                server_name = server_name.decode("ascii")
            except UnicodeDecodeError:
                return routes.default
        name = server_name.rstrip(".").lower()
        ctx = routes.by_name.get(name)
        if ctx is None:
            _, _, parent = name.partition(".")
            if parent:
                ctx = routes.by_name.get("*." + parent)
        return ctx if ctx is not None else routes.default

    def _on_servername(self, connection: SSL.Connection) -> None:
        try:
            ctx = self.context_for(connection.get_servername())
            if ctx is not connection.get_context():
                connection.set_context(ctx)
        except Exception:
            # An exception escaping an OpenSSL callback is easily lost.
            self._log.failure("while choosing a TLS certificate by SNI")

    def _build_context(self, pair: LoadedPair) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(self._min_version)
        ctx.set_options(
            SSL.OP_NO_COMPRESSION
            | SSL.OP_CIPHER_SERVER_PREFERENCE
            | getattr(SSL, "OP_NO_RENEGOTIATION", 0)
        )
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        ctx.set_cipher_list(_TLS12_CIPHERS)
        ctx.use_certificate(pair.leaf)
        for extra in pair.chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(pair.key)
        ctx.check_privatekey()
        # Server-side session cache and (OpenSSL's default) session tickets.
        ctx.set_session_id(b"wasmgate")
        ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        ctx.set_alpn_select_callback(self._alpn)
        ctx.set_tlsext_servername_callback(self._on_servername)
        ctx.set_info_callback(self._metrics.handshake_event)
        return ctx

    def _make_routes(self) -> _Routes:
        by_name = {}
        for entry in self._entries:
            for host in entry.hosts:
                by_name.setdefault(host, entry.context)
        return _Routes(by_name=by_name, default=self._entries[0].context)

    # -- rotation

    def serving(self) -> Mapping[str, LoadedPair]:
        """
        The pair currently served for each configured host.
        """
        return {h: e.pair for e in self._entries for h in e.hosts}

    def check(self, *, settle: bool = False) -> list[str]:
        """
        Re-read the files whose device, inode, size or mtime changed; swap in
        each changed pair that is valid, report each that is not (once per
        content).

        @param settle: hold back reporting a bad pair until its files have
            been seen unchanged by one more check, so a watcher that catches
            a rotation between the writes of the certificate and the key does
            not raise a false alarm.  (A pair that is good loads at once.)
        @return: the problems reported by this call.
        """
        return self._refresh(force=False, settle=settle)

    def reload(self) -> list[str]:
        """
        Re-read every file now (SIGHUP), reporting every bad pair again.

        @return: the problems reported.
        """
        return self._refresh(force=True, settle=False)

    def _refresh(self, *, force: bool, settle: bool) -> list[str]:
        reported: list[str] = []
        swapped = False
        for entry in self._entries:
            changed, problems = self._refresh_entry(entry, force=force, settle=settle)
            swapped = swapped or changed
            reported += problems
        if swapped:
            self._routes = self._make_routes()
        return reported

    def _refresh_entry(
        self, entry: _Entry, *, force: bool, settle: bool
    ) -> tuple[bool, list[str]]:
        spec = entry.spec
        seen = (stat_signature(spec.cert), stat_signature(spec.key))
        if not force and seen == entry.seen:
            if entry.pending is not None:
                shas, problems = entry.pending
                entry.pending = None
                self._report(entry, shas, problems)
                return False, problems
            return False, []
        entry.seen = seen
        cert, key = read_snapshot(spec.cert), read_snapshot(spec.key)
        shas = (cert.sha256, key.sha256)
        if shas == (entry.pair.cert_sha256, entry.pair.key_sha256):
            entry.pending = entry.failed = None
            return False, []
        if not force and shas == entry.failed:
            return False, []
        try:
            pair = load_pair(cert, key)
            _still_covers(entry, pair)
            context = self._build_context(pair)
        except PairError as e:
            problems = list(e.problems)
        except SSL.Error as e:
            problems = [f"{spec.cert}: OpenSSL refused the certificate or key: {e}"]
        else:
            self._swap(entry, pair, context)
            return True, []
        if settle:
            entry.pending = (shas, problems)
            return False, []
        self._report(entry, shas, problems)
        return False, problems

    def _swap(self, entry: _Entry, pair: LoadedPair, context: SSL.Context) -> None:
        old = entry.pair
        entry.pair, entry.context = pair, context
        entry.pending = entry.failed = None
        self._log.info(
            "TLS certificate for {hosts} reloaded from {cert_file}: now "
            "serving {new} (was {old}), valid until {not_after}",
            hosts=", ".join(entry.hosts),
            cert_file=entry.spec.cert,
            key_file=entry.spec.key,
            new=describe(pair.leaf),
            old=describe(old.leaf),
            not_after=pair.not_after.isoformat(),
        )

    def _report(
        self,
        entry: _Entry,
        shas: tuple[str | None, str | None],
        problems: list[str],
    ) -> None:
        entry.failed = shas
        self._metrics.reload_errors.inc()
        self._log.error(
            "TLS certificate for {hosts} not reloaded: {problems}; still "
            "serving {current}",
            hosts=", ".join(entry.hosts),
            cert_file=entry.spec.cert,
            key_file=entry.spec.key,
            problems="; ".join(problems),
            current=describe(entry.pair.leaf),
        )
        if self._on_reload_error is not None:
            try:
                self._on_reload_error(entry.spec, tuple(problems))
            except Exception:
                self._log.failure("in TLS reload error hook")

    def start_watching(self, reactor: IReactorTime, interval: float) -> None:
        """
        Call L{check} (with C{settle}) every C{interval} seconds.

        This runs on the reactor thread: each tick is two C{stat}s per pair,
        and files are read and parsed only when those change (a few KiB, well
        under a millisecond), which is cheaper than a thread hop.
        """
        if self._watcher is not None and self._watcher.running:
            raise RuntimeError("already watching certificate files")
        watcher = LoopingCall(self._watch_tick)
        watcher.clock = reactor
        self._watcher = watcher
        watcher.start(interval, now=False).addErrback(
            lambda f: self._log.failure("certificate watcher stopped", f)
        )

    def stop_watching(self) -> None:
        """
        Stop the watcher started by L{start_watching}, if running.
        """
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher.running:
            watcher.stop()

    def _watch_tick(self) -> None:
        try:
            self.check(settle=True)
        except Exception:
            self._log.failure("while checking TLS certificate files")


@implementer(IOpenSSLServerConnectionCreator)
class CertificateSlot:
    """
    What the listeners hand new connections to: the live L{CertificateStore},
    which a config reload that changes C{server.tls} replaces.  A connection
    already made keeps the contexts of the store it started with.
    """

    def __init__(self, store: CertificateStore) -> None:
        self.store = store

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return self.store.serverConnectionForTLS(tlsProtocol)


def tls_factory(
    wrapped: IProtocolFactory, store: CertificateStore
) -> TLSMemoryBIOFactory:
    """
    Wrap a protocol factory (e.g. a C{Site}) so that it speaks TLS with the
    store's certificates; listen with it on a plain TCP endpoint.
    """
    return TLSMemoryBIOFactory(store, False, wrapped)


def tls_endpoint(
    endpoint: IStreamServerEndpoint, store: CertificateStore | CertificateSlot
) -> IStreamServerEndpoint:
    """
    Wrap a plain TCP server endpoint (e.g. from C{serverFromString(reactor,
    "tcp:8443")}) so that whatever listens on it speaks TLS.
    """
    return wrapServerTLS(store, endpoint)


@dataclass(frozen=True)
class CertificateWarning:
    """
    A configured certificate that loads and is served, but that clients
    checking dates will refuse: expired or not valid yet.

    @ivar index: its position in C{server.tls.certificates}.
    @ivar problem: names the file, the date and the certificate.
    """

    index: int
    spec: CertificateSpec
    problem: str


@dataclass(frozen=True)
class CertificateReport:
    """
    What L{check_certificates} found: C{problems} stop the gateway from
    starting, C{warnings} do not.
    """

    problems: tuple[str, ...]
    warnings: tuple[CertificateWarning, ...]


def check_certificates(
    specs: Sequence[CertificateSpec],
    *,
    now: datetime | None = None,
    check_hosts: bool = True,
) -> CertificateReport:
    """
    Judge the configured certificates as start-up does, for C{wasmgate
    check}.

    Problems: files that are missing or do not parse, keys that do not
    match, malformed or duplicate SNI names and (with C{check_hosts}) names
    their certificate does not cover.  Warnings: certificates expired or
    not valid yet, which are served anyway.
    """
    if not specs:
        return CertificateReport(
            ("server.tls.certificates: no certificates configured",), ()
        )
    problems: list[str] = []
    warnings: list[CertificateWarning] = []
    owner: dict[str, str] = {}
    for index, spec in enumerate(specs):
        if not spec.hosts:
            problems.append(f"{spec.cert}: no hosts listed for this certificate")
        hosts = []
        for raw in spec.hosts:
            try:
                host = _normalize_host(raw)
            except ValueError as e:
                problems.append(f"{spec.cert}: bad host name: {e}")
                continue
            hosts.append(host)
            if host in owner:
                problems.append(
                    f"{spec.cert}: SNI name {host!r} is already used by "
                    f"{owner[host]}; each name may be listed only once"
                )
            else:
                owner[host] = spec.cert
        try:
            pair = load_pair(
                read_snapshot(spec.cert), read_snapshot(spec.key), check_dates=False
            )
        except PairError as e:
            problems += e.problems
            continue
        warnings += (
            CertificateWarning(index, spec, problem)
            for problem in date_problems(spec.cert, pair.leaf, now=now)
        )
        if check_hosts:
            names = pair.dns_names()
            for host in hosts:
                if not _covers(names, host):
                    problems.append(
                        f"{spec.cert}: certificate does not cover host "
                        f"{host!r} (it is for: {', '.join(names) or 'no DNS names'})"
                    )
    return CertificateReport(tuple(problems), tuple(warnings))


def validate_certificates(
    specs: Sequence[CertificateSpec],
    *,
    now: datetime | None = None,
    check_hosts: bool = True,
) -> list[str]:
    """
    The problems L{check_certificates} finds, which refuse start-up (an
    expired certificate is not one of them).
    """
    return list(check_certificates(specs, now=now, check_hosts=check_hosts).problems)


# -- upstream (client) TLS


@implementer(IPolicyForHTTPS)
class _VerifyingPolicy:
    """
    Verify the upstream's chain against C{trust_root} and its name against
    the URL's host (service_identity, via C{optionsForClientTLS}).
    """

    def __init__(self, trust_root: object) -> None:
        self._trust_root = trust_root

    def creatorForNetloc(
        self, hostname: bytes, port: int
    ) -> IOpenSSLClientConnectionCreator:
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._trust_root)


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedCreator:
    """
    A client connection that checks nothing about the server, but still
    sends SNI so name-based upstreams route correctly.
    """

    def __init__(self, context: SSL.Context, hostname: str) -> None:
        self._context = context
        self._sni = (
            None
            if isIPAddress(hostname) or isIPv6Address(hostname)
            else hostname.encode("idna")
        )

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if self._sni:
            connection.set_tlsext_host_name(self._sni)
        return connection


@implementer(IPolicyForHTTPS)
class _InsecurePolicy:
    def __init__(self) -> None:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_COMPRESSION)
        ctx.set_verify(SSL.VERIFY_NONE, lambda *args: True)
        self._context = ctx

    def creatorForNetloc(
        self, hostname: bytes, port: int
    ) -> IOpenSSLClientConnectionCreator:
        return _UnverifiedCreator(self._context, hostname.decode("ascii"))


def upstream_tls_policy(
    *,
    ca_file: str | None = None,
    insecure_skip_verify: bool = False,
    log: Logger | None = None,
    name: str | None = None,
) -> IPolicyForHTTPS:
    """
    The C{contextFactory} for an upstream's C{Agent}: the server's chain is
    verified against C{ca_file} (a PEM bundle) or the system's trust store,
    and its certificate must match the host in the URL.

    @param insecure_skip_verify: verify nothing (logged as a warning).
    @param name: the upstream's name, for log messages.

    @raise ValueError: if C{ca_file} cannot be read or holds no certificate.
    """
    if log is None:
        log = Logger(namespace=__name__)
    label = f"upstream {name!r}" if name else "upstream"
    if insecure_skip_verify:
        log.warn(
            "{label}: TLS certificate verification is disabled "
            "(insecure_skip_verify); the connection can be intercepted",
            label=label,
            upstream=name,
            ca_file=ca_file,
        )
        return _InsecurePolicy()
    if ca_file is None:
        return _VerifyingPolicy(platformTrust())
    certificates = [
        Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM))
        for c in load_ca_certificates(ca_file)
    ]
    return _VerifyingPolicy(trustRootFromCertificates(certificates))
