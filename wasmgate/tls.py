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

The pieces live in private modules (the checks and specs in
L{wasmgate._tlscheck}, the store in L{wasmgate._tlsstore}, its rotation in
L{wasmgate._tlsrotation}, metrics in L{wasmgate._tlsmetrics}, upstream
policies in L{wasmgate._tlsupstream}); import them from here.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.endpoints import wrapServerTLS
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from wasmgate._tlscheck import (
    CertificateError,
    CertificateReport,
    CertificateSpec,
    CertificateWarning,
    certificate_specs,
    check_certificates,
    validate_certificates,
)
from wasmgate._tlsmetrics import TLSMetrics
from wasmgate._tlsstore import CertificateStore
from wasmgate._tlsupstream import upstream_tls_policy

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
