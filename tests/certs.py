# -*- test-case-name: tests.test_tls -*-
"""
Certificates for tests, made with C{cryptography}: a CA, leaves it issues
for given DNS names, and helpers that write them as PEM files.

EC P-256 keys keep generation fast (well under a millisecond each).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    """
    A certificate and its private key.
    """

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "wasmgate test CA", *, issuer: Issued | None = None) -> Issued:
    """
    A CA valid from yesterday for ten days: self-signed, or an intermediate
    signed by C{issuer}.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(issuer.key if issuer else key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(
    ca: Issued,
    names: Sequence[str],
    *,
    serial: int | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> Issued:
    """
    A server certificate for DNS C{names} signed by C{ca}; valid from an
    hour ago for a week unless told otherwise.
    """
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(
            not_before if not_before is not None else now - timedelta(hours=1)
        )
        .not_valid_after(
            not_after if not_after is not None else now + timedelta(days=7)
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert, key)


def write_file(path: Path, data: bytes, *, atomic: bool = False) -> None:
    """
    Write C{data} in place, or (C{atomic}) to a temporary file renamed over
    C{path}, as deployment tools do.
    """
    if atomic:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    else:
        path.write_bytes(data)


def write_pair(
    issued: Issued,
    cert_path: Path,
    key_path: Path,
    *,
    chain: Sequence[Issued] = (),
    atomic: bool = False,
) -> None:
    """
    Write a certificate (followed by C{chain}) and its key as PEM files.
    """
    write_file(key_path, issued.key_pem, atomic=atomic)
    write_file(
        cert_path,
        issued.cert_pem + b"".join(c.cert_pem for c in chain),
        atomic=atomic,
    )
