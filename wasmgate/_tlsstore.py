# -*- test-case-name: tests.test_tls -*-
"""
The server side's SNI certificate store: one hardened C{OpenSSL.SSL.Context}
per configured certificate, chosen per handshake by OpenSSL's servername
callback from the store's current mapping (replaced as a whole when a
certificate rotates, see L{wasmgate._tlsrotation}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from OpenSSL import SSL
from prometheus_client import CollectorRegistry
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from wasmgate._tlscheck import (
    CertificateError,
    CertificateSpec,
    normalize_host,
    validate_certificates,
)
from wasmgate._tlsfiles import (
    LoadedPair,
    PairError,
    date_problems,
    load_pair,
    read_snapshot,
    stat_signature,
)
from wasmgate._tlsmetrics import TLSMetrics
from wasmgate._tlsrotation import Entry, Rotation

if TYPE_CHECKING:
    from twisted.internet.task import LoopingCall


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


@implementer(IOpenSSLServerConnectionCreator)
class CertificateStore(Rotation):
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
        problems = validate_certificates(certificates)
        if problems:
            raise CertificateError(problems)
        self._min_version = _MIN_VERSIONS[min_version]
        self._alpn = _select_alpn(tuple(alpn_protocols))
        self._log = log if log is not None else Logger(namespace="wasmgate.tls", source=self)
        self._on_reload_error = on_reload_error
        self._watcher: LoopingCall | None = None
        if metrics is not None and registry is not None:
            raise ValueError("pass metrics or registry, not both")
        self._metrics = metrics if metrics is not None else TLSMetrics(registry)
        self._entries: list[Entry] = []
        for spec in certificates:
            seen = (stat_signature(spec.cert), stat_signature(spec.key))
            try:
                pair = load_pair(
                    read_snapshot(spec.cert), read_snapshot(spec.key), check_dates=False
                )
            except PairError as e:  # changed since validation just now
                raise CertificateError(e.problems) from None
            entry = Entry(
                spec=spec,
                hosts=tuple(normalize_host(h) for h in spec.hosts),
                pair=pair,
                context=self._build_context(pair),
                seen=seen,
            )
            self._entries.append(entry)
        self._routes = self._make_routes()
        self._metrics.attach(self)
        for entry in self._entries:
            self._warn_dates(entry)

    def _warn_dates(self, entry: Entry) -> None:
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
        # A client leaving without close_notify is a client gone, as for
        # nginx: HTTP's own framing tells a cut request or body. Else
        # OpenSSL reports an error, and Twisted keeps the failure made of
        # it, with the frames of the TLS connection's last read, in a
        # reference cycle: 32 KiB and more per closed connection, until
        # the garbage collector runs.
        ctx.set_options(
            SSL.OP_NO_COMPRESSION
            | SSL.OP_CIPHER_SERVER_PREFERENCE
            | getattr(SSL, "OP_NO_RENEGOTIATION", 0)
            | getattr(SSL, "OP_IGNORE_UNEXPECTED_EOF", 0)
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

    def serving(self) -> Mapping[str, LoadedPair]:
        """
        The pair currently served for each configured host.
        """
        return {h: e.pair for e in self._entries for h in e.hosts}
