# -*- test-case-name: tests.test_tls -*-
"""
What the configured certificates are and what they are worth: the specs of
C{server.tls.certificates}, their SNI names in canonical form, and the
judgement start-up and C{wasmgate check} pass on them (L{check_certificates}).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Sequence

from wasmgate._tlsfiles import PairError, date_problems, load_pair, read_snapshot

if TYPE_CHECKING:
    from wasmgate.config import TLSConfig


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


_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def normalize_host(host: str) -> str:
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


def covers(cert_names: Sequence[str], host: str) -> bool:
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
                host = normalize_host(raw)
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
                if not covers(names, host):
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
