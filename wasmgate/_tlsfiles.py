# -*- test-case-name: tests.test_tls -*-
"""
Reading and validating PEM certificate/key files.

Kept apart from L{wasmgate.tls} so that the start-up check, the
rotation watcher and C{wasmgate check} all judge a pair of files by the
same rules and word their errors the same way.  Nothing here touches the
reactor or holds state: every function takes bytes or paths and returns
values or raises L{PairError}.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

__all__ = [
    "FileSnapshot",
    "LoadedPair",
    "PairError",
    "date_problems",
    "describe",
    "load_ca_certificates",
    "load_pair",
    "read_snapshot",
    "stat_signature",
]


class PairError(Exception):
    """
    A certificate/key pair cannot be used.  C{problems} are complete
    sentences, each naming the file they are about.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems: tuple[str, ...] = tuple(problems)


StatSignature = tuple[int, int, int, int]


def stat_signature(path: str) -> StatSignature | None:
    """
    What cheaply tells us a file may have changed: device, inode (an
    atomic rename or a symlink swap changes it), size and mtime in ns.
    L{None} if the file cannot be stat'ed (the read will say why).
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class FileSnapshot:
    """
    The bytes of a file as read once, so parsing and fingerprinting see
    the same content even if the file is rewritten meanwhile.
    """

    path: str
    data: bytes | None
    error: str | None
    sha256: str | None

    @property
    def ok(self) -> bool:
        return self.data is not None


def read_snapshot(path: str) -> FileSnapshot:
    """
    Read C{path} whole.  Errors are captured, not raised, so one missing
    file does not hide a problem with its partner.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        reason = e.strerror or str(e)
        return FileSnapshot(path, None, f"{path}: cannot read file: {reason}", None)
    return FileSnapshot(path, data, None, hashlib.sha256(data).hexdigest())


_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)
_PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)


@dataclass(frozen=True)
class LoadedPair:
    """
    A parsed, validated certificate chain and its private key.
    """

    cert_path: str
    key_path: str
    chain: tuple[x509.Certificate, ...]
    key: _PrivateKey
    cert_sha256: str
    key_sha256: str

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc

    @property
    def serial(self) -> int:
        return self.leaf.serial_number

    def dns_names(self) -> tuple[str, ...]:
        """
        The DNS names the leaf is good for (SANs; the CN only when there
        are no SANs, as clients still do for old certificates).
        """
        return dns_names(self.leaf)


def dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(a.value).lower() for a in cns)
    return tuple(n.lower() for n in san.value.get_values_for_type(x509.DNSName))


def describe(cert: x509.Certificate) -> str:
    """
    A short human name for a certificate in log lines.
    """
    names = dns_names(cert)
    label = names[0] if names else cert.subject.rfc4514_string() or "(no name)"
    return f"{label}, serial {cert.serial_number:#x}"


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def date_problems(
    path: str, leaf: x509.Certificate, *, now: datetime | None = None
) -> list[str]:
    """
    What is wrong with the validity dates of C{leaf} (read from C{path})
    at C{now}: expired, or not valid yet.  Empty if it is current.
    """
    when = now if now is not None else datetime.now(timezone.utc)
    problems = []
    if leaf.not_valid_after_utc <= when:
        problems.append(
            f"{path}: certificate expired at "
            f"{_iso(leaf.not_valid_after_utc)} ({describe(leaf)})"
        )
    if leaf.not_valid_before_utc > when:
        problems.append(
            f"{path}: certificate is not valid until "
            f"{_iso(leaf.not_valid_before_utc)} ({describe(leaf)})"
        )
    return problems


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def _parse_chain(snap: FileSnapshot) -> tuple[tuple[x509.Certificate, ...], list[str]]:
    assert snap.data is not None
    if b"-----BEGIN" not in snap.data:
        return (), [f"{snap.path}: not a PEM certificate file (no '-----BEGIN' line)"]
    try:
        chain = tuple(x509.load_pem_x509_certificates(snap.data))
    except ValueError as e:
        return (), [f"{snap.path}: cannot parse PEM certificate: {e}"]
    problems = []
    for i, (cert, issuer) in enumerate(zip(chain, chain[1:])):
        if cert.issuer != issuer.subject:
            problems.append(
                f"{snap.path}: certificate chain out of order: certificate "
                f"#{i + 1} ({describe(cert)}) was issued by "
                f"{cert.issuer.rfc4514_string()!r}, but the next certificate "
                f"is {issuer.subject.rfc4514_string()!r} (the leaf must come "
                f"first, then its issuers)"
            )
    return chain, problems


def _parse_key(snap: FileSnapshot) -> tuple[_PrivateKey | None, list[str]]:
    assert snap.data is not None
    if b"PRIVATE KEY-----" not in snap.data:
        return None, [f"{snap.path}: no PEM private key in file"]
    try:
        key = serialization.load_pem_private_key(snap.data, password=None)
    except TypeError:
        return None, [
            f"{snap.path}: private key is encrypted; passphrase-protected "
            f"keys are not supported"
        ]
    except (ValueError, UnsupportedAlgorithm) as e:
        return None, [f"{snap.path}: cannot parse PEM private key: {e}"]
    if not isinstance(key, _KEY_TYPES):
        return None, [f"{snap.path}: unsupported private key type {type(key).__name__}"]
    return key, []


def load_pair(
    cert: FileSnapshot,
    key: FileSnapshot,
    *,
    now: datetime | None = None,
    check_dates: bool = True,
) -> LoadedPair:
    """
    Parse and validate a certificate file (leaf first, then optional
    intermediates) and its key file.

    @param check_dates: refuse a leaf that has expired or is not valid
        yet.  Rotation does (a new pair must be better than the one in
        service); start-up does not, and warns instead (L{date_problems}),
        because refusing to start over one forgotten host takes every
        other host down with it.

    @raise PairError: with every problem found: unreadable or
        unparsable files, a key that does not belong to the leaf and
        (with C{check_dates}) a leaf that has expired or is not valid yet.
    """
    problems: list[str] = []
    chain: tuple[x509.Certificate, ...] = ()
    private_key = None
    if cert.error is not None:
        problems.append(cert.error)
    else:
        chain, more = _parse_chain(cert)
        problems += more
        if not chain and not more:
            problems.append(f"{cert.path}: no certificate in file")
    if key.error is not None:
        problems.append(key.error)
    else:
        private_key, more = _parse_key(key)
        problems += more
    if chain and private_key is not None:
        if _spki(private_key.public_key()) != _spki(chain[0].public_key()):
            problems.append(
                f"{key.path}: private key does not match the certificate in "
                f"{cert.path} ({describe(chain[0])})"
            )
    if chain and check_dates:
        problems += date_problems(cert.path, chain[0], now=now)
    if problems:
        raise PairError(problems)
    assert private_key is not None and cert.sha256 and key.sha256
    return LoadedPair(
        cert_path=cert.path,
        key_path=key.path,
        chain=chain,
        key=private_key,
        cert_sha256=cert.sha256,
        key_sha256=key.sha256,
    )


def load_ca_certificates(path: str) -> tuple[x509.Certificate, ...]:
    """
    Read a CA bundle (one or more PEM certificates).

    @raise ValueError: naming the file and what is wrong with it.
    """
    snap = read_snapshot(path)
    if snap.error is not None:
        raise ValueError(snap.error)
    chain, _ = _parse_chain(snap)  # order does not matter in a bundle
    if not chain:
        if snap.data and b"-----BEGIN" in snap.data:
            try:
                x509.load_pem_x509_certificates(snap.data)
            except ValueError as e:
                raise ValueError(f"{path}: cannot parse PEM CA certificates: {e}")
        raise ValueError(f"{path}: no PEM CA certificate in file")
    return chain
