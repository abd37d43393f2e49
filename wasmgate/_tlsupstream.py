# -*- test-case-name: tests.test_tls -*-
"""
Upstream (client) TLS: the C{IPolicyForHTTPS} an upstream's C{Agent} uses,
verifying the server's chain and name, or (when told to) nothing at all.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from wasmgate._tlsfiles import load_ca_certificates


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
        log = Logger(namespace="wasmgate.tls")
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
