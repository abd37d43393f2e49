# -*- test-case-name: tests.test_tls -*-
"""
Tests for L{wasmgate.tls}: real certificates (L{tests.certs}), a real
twisted.web site behind the store on a loopback port, and real TLS clients
(Python's C{ssl} in a thread, Twisted's C{Agent}).
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Awaitable, Callable

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry
from twisted.internet import reactor, threads
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.logger import Logger, formatEvent
from twisted.web.client import Agent, readBody
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.certs import Issued, issue, make_ca, write_file, write_pair
from wasmgate.tls import (
    CertificateError,
    CertificateSpec,
    CertificateStore,
    TLSMetrics,
    check_certificates,
    tls_endpoint,
    upstream_tls_policy,
    validate_certificates,
)

HOSTS = {
    "api": ["api.example.com"],
    "www": ["www.example.com", "example.com"],
    "apps": ["*.apps.example.com"],
}
SERIALS = {"api": 1001, "www": 1002, "apps": 1003}


class _Ok(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"ok"


@dataclass
class Setup:
    tmp: Path
    ca: Issued
    specs: list[CertificateSpec]

    def paths(self, name: str) -> tuple[Path, Path]:
        return self.tmp / f"{name}.pem", self.tmp / f"{name}.key"

    def write(self, name: str, issued: Issued, **kw) -> None:
        write_pair(issued, *self.paths(name), **kw)

    @property
    def ca_file(self) -> str:
        return str(self.tmp / "ca.pem")


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    """
    A CA and three certificates (two hosts and a wildcard) on disk.
    """
    ca = make_ca()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    specs = []
    for name, hosts in HOSTS.items():
        write_pair(
            issue(ca, hosts, serial=SERIALS[name]),
            tmp_path / f"{name}.pem",
            tmp_path / f"{name}.key",
        )
        specs.append(
            CertificateSpec(
                hosts=tuple(hosts),
                cert=str(tmp_path / f"{name}.pem"),
                key=str(tmp_path / f"{name}.key"),
            )
        )
    return Setup(tmp_path, ca, specs)


class Events(list):
    """
    A twisted.logger observer that keeps events, rendered on demand.
    """

    def __call__(self, event: dict) -> None:
        self.append(event)

    def texts(self, level: str) -> list[str]:
        return [formatEvent(e) for e in self if e["log_level"].name == level]


Serve = Callable[[CertificateStore], Awaitable[int]]


@pytest_twisted.async_yield_fixture
async def serve():
    """
    Start a site answering "ok" behind a store on 127.0.0.1:0.
    """
    ports = []

    async def start(store: CertificateStore) -> int:
        endpoint = tls_endpoint(
            serverFromString(reactor, "tcp:0:interface=127.0.0.1"), store
        )
        port = await endpoint.listen(Site(_Ok()))
        ports.append(port)
        return port.getHost().port

    yield start
    for port in ports:
        await port.stopListening()


# -- blocking clients (run in a thread)


def client_context(
    cafile: str | None,
    *,
    alpn: list[str] | None = None,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if ciphers:
        ctx.set_ciphers(ciphers)
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


@dataclass(frozen=True)
class Handshake:
    serial: int
    version: str
    alpn: str | None


def _peer_serial(sock: ssl.SSLSocket) -> int:
    der = sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def handshake(port: int, server_name: str | None, ctx: ssl.SSLContext) -> Handshake:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            return Handshake(
                _peer_serial(tls), tls.version(), tls.selected_alpn_protocol()
            )


def handshake_error(
    port: int, server_name: str | None, ctx: ssl.SSLContext
) -> ssl.SSLError:
    try:
        handshake(port, server_name, ctx)
    except ssl.SSLError as e:
        return e
    raise AssertionError("handshake succeeded")


class KeepAlive:
    """
    An HTTP/1.1 keep-alive connection to the gateway with a chosen SNI name.
    """

    def __init__(self, port: int, server_name: str, ctx: ssl.SSLContext) -> None:
        self.conn = http.client.HTTPSConnection(
            server_name, port, context=ctx, timeout=5
        )
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.conn.sock = ctx.wrap_socket(raw, server_hostname=server_name)

    def get(self) -> tuple[int, bytes]:
        self.conn.request("GET", "/")
        response = self.conn.getresponse()
        return response.status, response.read()

    def serial(self) -> int:
        return _peer_serial(self.conn.sock)

    def close(self) -> None:
        self.conn.close()


def run(f, *args, **kw):
    return threads.deferToThread(f, *args, **kw)


# -- SNI, ALPN, versions


@pytest_twisted.ensureDeferred
async def test_sni_chooses_certificate(setup: Setup, serve: Serve) -> None:
    """
    Exact names, then a one-label wildcard, then the first entry for names
    nothing matches and for clients that send no SNI.
    """
    port = await serve(CertificateStore(setup.specs))
    verified = client_context(setup.ca_file)
    unverified = client_context(None)
    expected = [
        ("api.example.com", verified, SERIALS["api"]),
        ("www.example.com", verified, SERIALS["www"]),
        ("example.com", verified, SERIALS["www"]),
        ("shop.apps.example.com", verified, SERIALS["apps"]),
        ("API.Example.COM", unverified, SERIALS["api"]),
        ("a.b.apps.example.com", unverified, SERIALS["api"]),  # one label deep
        ("apps.example.com", unverified, SERIALS["api"]),
        ("unknown.test", unverified, SERIALS["api"]),
        (None, unverified, SERIALS["api"]),
    ]
    for name, ctx, serial in expected:
        result = await run(handshake, port, name, ctx)
        assert (name, result.serial) == (name, serial)


@pytest_twisted.ensureDeferred
async def test_request_over_tls_negotiates_http11(setup: Setup, serve: Serve) -> None:
    port = await serve(CertificateStore(setup.specs))
    ctx = client_context(setup.ca_file, alpn=["h2", "http/1.1"])
    conn = await run(KeepAlive, port, "www.example.com", ctx)
    try:
        assert await run(conn.get) == (200, b"ok")
        assert conn.conn.sock.selected_alpn_protocol() == "http/1.1"
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_alpn_without_overlap_continues_without_alpn(
    setup: Setup, serve: Serve
) -> None:
    port = await serve(CertificateStore(setup.specs))
    result = await run(
        handshake, port, "api.example.com", client_context(setup.ca_file, alpn=["h2"])
    )
    assert result.alpn is None


@pytest_twisted.ensureDeferred
async def test_tls12_and_tls13_accepted(setup: Setup, serve: Serve) -> None:
    port = await serve(CertificateStore(setup.specs))
    for version, name in [
        (ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
        (ssl.TLSVersion.TLSv1_3, "TLSv1.3"),
    ]:
        ctx = client_context(setup.ca_file, minimum=version, maximum=version)
        result = await run(handshake, port, "api.example.com", ctx)
        assert result.version == name


@pytest_twisted.ensureDeferred
async def test_tls12_needs_forward_secret_aead(setup: Setup, serve: Serve) -> None:
    """
    A TLS 1.2 client offering only a CBC suite is refused; an AEAD one is
    accepted.
    """
    port = await serve(CertificateStore(setup.specs))
    tls12 = ssl.TLSVersion.TLSv1_2
    cbc = client_context(setup.ca_file, maximum=tls12, ciphers="ECDHE-ECDSA-AES128-SHA")
    error = await run(handshake_error, port, "api.example.com", cbc)
    assert error.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"
    gcm = client_context(
        setup.ca_file, maximum=tls12, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"
    )
    assert (await run(handshake, port, "api.example.com", gcm)).version == "TLSv1.2"


def _resumed(port: int, server_name: str, ctx: ssl.SSLContext) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            session = tls.session
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name, session=session) as tls:
            return tls.session_reused


@pytest_twisted.ensureDeferred
async def test_sessions_resume_on_sni_certificate(setup: Setup, serve: Serve) -> None:
    """
    A client resumes its TLS 1.2 session on a non-default certificate (the
    servername callback switches contexts; resumption must survive that).
    """
    port = await serve(CertificateStore(setup.specs))
    ctx = client_context(setup.ca_file, maximum=ssl.TLSVersion.TLSv1_2)
    assert await run(_resumed, port, "www.example.com", ctx)


def _tls11_client() -> ssl.SSLContext:
    """
    A client that really offers TLS 1.1 (OpenSSL 3 allows it only at
    security level 0).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return client_context(
            None,
            minimum=ssl.TLSVersion.TLSv1,
            maximum=ssl.TLSVersion.TLSv1_1,
            ciphers="DEFAULT:@SECLEVEL=0",
        )


def _permissive_tls11_server(setup: Setup) -> tuple[socket.socket, ssl.SSLContext]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*setup.paths("api"))
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, ctx


def _accept_once(sock: socket.socket, ctx: ssl.SSLContext) -> None:
    conn, _ = sock.accept()
    try:
        ctx.wrap_socket(conn, server_side=True).close()
    except (ssl.SSLError, OSError):
        conn.close()


@pytest_twisted.ensureDeferred
async def test_tls11_refused_by_server(setup: Setup, serve: Serve) -> None:
    """
    The TLS 1.1 client does complete a handshake with a server that allows
    1.1 (so the client side is not what refuses), and the gateway answers
    it with a protocol_version alert.
    """
    client = _tls11_client()
    sock, server_ctx = _permissive_tls11_server(setup)
    try:
        accepted = run(_accept_once, sock, server_ctx)
        control = await run(handshake, sock.getsockname()[1], "api.example.com", client)
        await accepted
    finally:
        sock.close()
    assert control.version == "TLSv1.1"

    port = await serve(CertificateStore(setup.specs))
    error = await run(handshake_error, port, "api.example.com", client)
    assert error.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


@pytest_twisted.ensureDeferred
async def test_min_version_13_refuses_tls12(setup: Setup, serve: Serve) -> None:
    port = await serve(CertificateStore(setup.specs, min_version="1.3"))
    tls12 = client_context(setup.ca_file, maximum=ssl.TLSVersion.TLSv1_2)
    error = await run(handshake_error, port, "api.example.com", tls12)
    assert error.reason == "TLSV1_ALERT_PROTOCOL_VERSION"
    ok = await run(handshake, port, "api.example.com", client_context(setup.ca_file))
    assert ok.version == "TLSv1.3"


def test_bad_min_version(setup: Setup) -> None:
    with pytest.raises(ValueError, match="min_version"):
        CertificateStore(setup.specs, min_version="1.1")


@pytest_twisted.ensureDeferred
async def test_chain_in_cert_file_is_served(tmp_path: Path, serve: Serve) -> None:
    """
    A client trusting only the root verifies a leaf issued by an
    intermediate sent from the certificate file.
    """
    root = make_ca("root")
    intermediate = make_ca("intermediate", issuer=root)
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    leaf = issue(intermediate, ["api.example.com"], serial=77)
    write_pair(leaf, tmp_path / "c.pem", tmp_path / "k.pem", chain=[intermediate])
    spec = CertificateSpec(
        ("api.example.com",), str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    )
    port = await serve(CertificateStore([spec]))
    ctx = client_context(str(tmp_path / "root.pem"))
    assert (await run(handshake, port, "api.example.com", ctx)).serial == 77


# -- rotation


@pytest_twisted.ensureDeferred
async def test_rotation_keeps_open_connections(setup: Setup, serve: Serve) -> None:
    """
    After check(), new handshakes get the new certificate while a
    keep-alive connection made before goes on serving requests.
    """
    registry = CollectorRegistry()
    store = CertificateStore(setup.specs, registry=registry)
    port = await serve(store)
    ctx = client_context(setup.ca_file)
    conn = await run(KeepAlive, port, "api.example.com", ctx)
    try:
        assert await run(conn.get) == (200, b"ok")
        assert store.check() == []  # nothing changed

        new_not_after = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(
            days=30
        )
        setup.write(
            "api", issue(setup.ca, HOSTS["api"], serial=2001, not_after=new_not_after)
        )
        assert store.check() == []

        fresh = await run(handshake, port, "api.example.com", ctx)
        assert fresh.serial == 2001
        # other hosts are untouched
        assert (await run(handshake, port, "www.example.com", ctx)).serial == SERIALS[
            "www"
        ]
        assert await run(conn.get) == (200, b"ok")
        assert conn.serial() == SERIALS["api"]
    finally:
        conn.close()
    assert (
        registry.get_sample_value(
            "wasmgate_tls_cert_not_after_seconds", {"host": "api.example.com"}
        )
        == new_not_after.timestamp()
    )
    assert registry.get_sample_value("wasmgate_tls_reload_errors_total") == 0


@pytest_twisted.ensureDeferred
async def test_watcher_picks_up_atomic_replacement(setup: Setup, serve: Serve) -> None:
    events = Events()
    store = CertificateStore(setup.specs, log=Logger(observer=events))
    port = await serve(store)
    ctx = client_context(setup.ca_file)
    store.start_watching(reactor, 0.2)
    try:
        setup.write("apps", issue(setup.ca, HOSTS["apps"], serial=3003), atomic=True)
        serial = None
        for _ in range(100):  # generous: up to 5 s
            await deferLater(reactor, 0.05, lambda: None)
            serial = (await run(handshake, port, "x.apps.example.com", ctx)).serial
            if serial == 3003:
                break
        assert serial == 3003
    finally:
        store.stop_watching()
    assert any("serial 0xbbb" in text for text in events.texts("info"))


@pytest_twisted.ensureDeferred
async def test_bad_replacements_keep_old_certificate(
    setup: Setup, serve: Serve
) -> None:
    """
    Garbage, a key that belongs to another certificate, an expired and a
    not-yet-valid certificate, and one for other hosts are each rejected once, logged with the file
    and the reason, and counted; the old certificate stays in service.
    """
    events = Events()
    registry = CollectorRegistry()
    hook_calls = []
    store = CertificateStore(
        setup.specs,
        log=Logger(observer=events),
        registry=registry,
        on_reload_error=lambda spec, problems: hook_calls.append((spec.cert, problems)),
    )
    port = await serve(store)
    ctx = client_context(setup.ca_file)
    cert_path, key_path = setup.paths("www")
    now = datetime.now(timezone.utc)

    def errors() -> float:
        return registry.get_sample_value("wasmgate_tls_reload_errors_total")

    cases = [
        (
            lambda: cert_path.write_bytes(b"this is not a certificate\n"),
            "not a PEM certificate",
        ),
        (
            lambda: write_file(cert_path, issue(setup.ca, HOSTS["www"]).cert_pem),
            "private key does not match",
        ),
        (
            lambda: setup.write(
                "www",
                issue(
                    setup.ca,
                    HOSTS["www"],
                    not_before=now - timedelta(days=3),
                    not_after=now - timedelta(days=1),
                ),
            ),
            "certificate expired at",
        ),
        (
            lambda: setup.write(
                "www", issue(setup.ca, HOSTS["www"], not_before=now + timedelta(days=1))
            ),
            "not valid until",
        ),
        (
            lambda: setup.write("www", issue(setup.ca, ["elsewhere.example.org"])),
            "does not cover host(s) www.example.com",
        ),
    ]
    for count, (breakage, reason) in enumerate(cases, start=1):
        breakage()
        problems = store.check()
        assert len(problems) == 1 and reason in problems[0], problems
        assert errors() == count
        logged = events.texts("error")[-1]
        assert str(cert_path if "key" not in reason else key_path) in logged
        assert reason in logged and "still serving" in logged
        assert (await run(handshake, port, "www.example.com", ctx)).serial == SERIALS[
            "www"
        ]
        # the same bad files are reported once, not on every check
        assert store.check() == []
        assert errors() == count
    assert [cert for cert, _ in hook_calls] == [str(cert_path)] * len(cases)

    setup.write("www", issue(setup.ca, HOSTS["www"], serial=4004))
    assert store.check() == []
    assert (await run(handshake, port, "www.example.com", ctx)).serial == 4004
    assert errors() == len(cases)


def test_reload_reports_bad_files_again(setup: Setup) -> None:
    registry = CollectorRegistry()
    store = CertificateStore(
        setup.specs, registry=registry, log=Logger(observer=Events())
    )
    key_path = setup.paths("api")[1]
    key_path.write_bytes(b"garbage")
    assert len(store.check()) == 1
    assert store.check() == []
    # touched, same bytes: still reported only once
    st = key_path.stat()
    os.utime(key_path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert store.check() == []
    assert "no PEM private key" in store.reload()[0]
    assert registry.get_sample_value("wasmgate_tls_reload_errors_total") == 2


def test_reload_swaps_even_if_stat_unchanged(setup: Setup) -> None:
    """
    reload() reads the files whatever their metadata says (SIGHUP after a
    copy that preserved mtime, size and inode is rare but possible).
    """
    store = CertificateStore(setup.specs)
    store.check()
    cert_path, key_path = setup.paths("api")
    st = cert_path.stat(), key_path.stat()
    setup.write("api", issue(setup.ca, HOSTS["api"], serial=5005))
    for path, old in zip((cert_path, key_path), st):
        os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    store.reload()
    assert store.serving()["api.example.com"].serial == 5005


def test_settle_waits_for_the_partner_file(setup: Setup) -> None:
    """
    A watcher that sees the new certificate before its new key is written
    raises no alarm; the pair loads once both are there.  A bad pair that
    stays bad is reported on the next tick.
    """
    events = Events()
    registry = CollectorRegistry()
    store = CertificateStore(
        setup.specs, registry=registry, log=Logger(observer=events)
    )
    cert_path, key_path = setup.paths("api")
    new = issue(setup.ca, HOSTS["api"], serial=6006)
    write_file(cert_path, new.cert_pem)
    assert store.check(settle=True) == []
    write_file(key_path, new.key_pem)
    assert store.check(settle=True) == []
    assert store.serving()["api.example.com"].serial == 6006
    assert registry.get_sample_value("wasmgate_tls_reload_errors_total") == 0
    assert events.texts("error") == []

    key_path.write_bytes(b"garbage")
    assert store.check(settle=True) == []
    assert "no PEM private key" in store.check(settle=True)[0]
    assert registry.get_sample_value("wasmgate_tls_reload_errors_total") == 1


def test_expiry_gauge_per_host(setup: Setup) -> None:
    registry = CollectorRegistry()
    store = CertificateStore(setup.specs, registry=registry)
    for name, hosts in HOSTS.items():
        expected = store.serving()[hosts[0]].not_after.timestamp()
        for host in hosts:
            value = registry.get_sample_value(
                "wasmgate_tls_cert_not_after_seconds", {"host": host}
            )
            assert value == expected


def test_metrics_shared_across_stores(setup: Setup) -> None:
    """
    A config reload builds a new store on the same metrics: no duplicate
    registration, and hosts the old store served disappear once closed.
    """
    registry = CollectorRegistry()
    metrics = TLSMetrics(registry)
    old = CertificateStore(setup.specs, metrics=metrics)
    new = CertificateStore(setup.specs[:1], metrics=metrics)

    def hosts() -> set[str]:
        return {
            sample.labels["host"]
            for family in registry.collect()
            if family.name == "wasmgate_tls_cert_not_after_seconds"
            for sample in family.samples
        }

    assert hosts() == {h for hs in HOSTS.values() for h in hs}
    old.close()
    assert hosts() == set(HOSTS["api"])
    new.close()
    assert hosts() == set()
    # a second collector of the same names on one registry is refused
    with pytest.raises(ValueError):
        CertificateStore(setup.specs, registry=registry)


def test_store_refuses_bad_initial_files(setup: Setup) -> None:
    other_key = Issued(setup.ca.cert, ec.generate_private_key(ec.SECP256R1()))
    setup.paths("www")[1].write_bytes(other_key.key_pem)
    with pytest.raises(CertificateError) as info:
        CertificateStore(setup.specs)
    assert "private key does not match" in str(info.value)
    assert str(setup.paths("www")[1]) in info.value.problems[0]


def test_store_refuses_a_certificate_that_does_not_cover_its_hosts(setup: Setup) -> None:
    """As C{wasmgate check} does, and as a rotation that loses a host is refused."""
    setup.write("api", issue(setup.ca, ["other.example.com"]))
    with pytest.raises(CertificateError) as info:
        CertificateStore(setup.specs)
    assert "does not cover host 'api.example.com'" in str(info.value)


@pytest_twisted.ensureDeferred
async def test_store_serves_out_of_date_certificates_with_a_warning(
    setup: Setup, serve: Serve
) -> None:
    """
    An expired and a not-yet-valid certificate do not stop the store: each
    is served on its names (clients that check dates refuse it, as they
    would from nginx), its expiry is in the gauge, and one warning per
    entry names the file, the hosts and the date.  The valid ones are
    served as usual.
    """
    now = datetime.now(timezone.utc)
    expired_at = (now - timedelta(days=2)).replace(microsecond=0)
    valid_from = (now + timedelta(days=2)).replace(microsecond=0)
    setup.write(
        "www",
        issue(
            setup.ca,
            HOSTS["www"],
            serial=SERIALS["www"],
            not_before=now - timedelta(days=30),
            not_after=expired_at,
        ),
    )
    setup.write(
        "apps",
        issue(setup.ca, HOSTS["apps"], serial=SERIALS["apps"], not_before=valid_from),
    )
    events = Events()
    registry = CollectorRegistry()
    store = CertificateStore(
        setup.specs, log=Logger(observer=events), registry=registry
    )
    port = await serve(store)
    verified, unverified = client_context(setup.ca_file), client_context(None)
    assert (await run(handshake, port, "api.example.com", verified)).serial == SERIALS[
        "api"
    ]
    for name, serial in [
        ("example.com", SERIALS["www"]),
        ("shop.apps.example.com", SERIALS["apps"]),
    ]:
        assert (await run(handshake, port, name, unverified)).serial == serial
    error = await run(handshake_error, port, "www.example.com", verified)
    assert "certificate has expired" in str(error)
    error = await run(handshake_error, port, "shop.apps.example.com", verified)
    assert "certificate is not yet valid" in str(error)
    assert registry.get_sample_value(
        "wasmgate_tls_cert_not_after_seconds", {"host": "example.com"}
    ) == expired_at.timestamp()

    warnings = events.texts("warn")
    assert len(warnings) == 2, warnings
    www_cert, apps_cert = setup.paths("www")[0], setup.paths("apps")[0]
    [www] = [w for w in warnings if str(www_cert) in w]
    assert "www.example.com, example.com" in www
    assert f"certificate expired at {expired_at:%Y-%m-%dT%H:%M:%SZ}" in www
    [apps] = [w for w in warnings if str(apps_cert) in w]
    assert "*.apps.example.com" in apps
    assert f"not valid until {valid_from:%Y-%m-%dT%H:%M:%SZ}" in apps
    assert events.texts("error") == []


def test_expired_certificate_is_rotated_out(setup: Setup) -> None:
    """
    A store that started on an expired certificate takes its renewal as
    any other rotation, and refuses a replacement that is expired too.
    """
    now = datetime.now(timezone.utc)
    old = dict(not_before=now - timedelta(days=30), not_after=now - timedelta(days=1))
    setup.write("api", issue(setup.ca, HOSTS["api"], serial=7007, **old))
    store = CertificateStore(setup.specs, log=Logger(observer=Events()))
    assert store.serving()["api.example.com"].serial == 7007
    setup.write("api", issue(setup.ca, HOSTS["api"], serial=7008, **old))
    [problem] = store.check()
    assert "certificate expired at" in problem
    assert store.serving()["api.example.com"].serial == 7007
    setup.write("api", issue(setup.ca, HOSTS["api"], serial=7009))
    assert store.check() == []
    assert store.serving()["api.example.com"].serial == 7009


def test_store_refuses_mismatched_key_of_expired_certificate(setup: Setup) -> None:
    """
    Being expired excuses nothing else: its key must still match.
    """
    now = datetime.now(timezone.utc)
    expired = issue(
        setup.ca,
        HOSTS["www"],
        not_before=now - timedelta(days=30),
        not_after=now - timedelta(days=1),
    )
    setup.write("www", expired)
    setup.paths("www")[1].write_bytes(issue(setup.ca, HOSTS["www"]).key_pem)
    with pytest.raises(CertificateError) as info:
        CertificateStore(setup.specs, log=Logger(observer=Events()))
    [problem] = info.value.problems
    assert problem.startswith(str(setup.paths("www")[1]))
    assert "private key does not match" in problem


# -- validate_certificates


def test_validate_good_config(setup: Setup) -> None:
    assert validate_certificates(setup.specs) == []


def test_validate_reports_each_problem(setup: Setup) -> None:
    tmp = setup.tmp
    (tmp / "garbage.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
    )
    other = issue(setup.ca, ["other.example.com"])
    (tmp / "other.pem").write_bytes(other.cert_pem)
    expired = issue(
        setup.ca,
        ["old.example.com"],
        not_before=datetime.now(timezone.utc) - timedelta(days=3),
        not_after=datetime.now(timezone.utc) - timedelta(days=1),
    )
    write_pair(expired, tmp / "old.pem", tmp / "old.key")
    specs = [
        *setup.specs,
        CertificateSpec(
            ("missing.example.com",), str(tmp / "missing.pem"), str(tmp / "missing.key")
        ),
        CertificateSpec(
            ("garbage.example.com",), str(tmp / "garbage.pem"), str(tmp / "api.key")
        ),
        CertificateSpec(
            ("other.example.com",), str(tmp / "other.pem"), str(tmp / "api.key")
        ),
        CertificateSpec(
            ("API.example.com.",), str(tmp / "api.pem"), str(tmp / "api.key")
        ),
        CertificateSpec(
            ("old.example.com",), str(tmp / "old.pem"), str(tmp / "old.key")
        ),
        CertificateSpec(
            ("nope.example.com", "a.*.example.com"),
            str(tmp / "www.pem"),
            str(tmp / "www.key"),
        ),
    ]
    problems = validate_certificates(specs)
    expected = [
        (tmp / "missing.pem", "cannot read file: No such file or directory"),
        (tmp / "missing.key", "cannot read file: No such file or directory"),
        (tmp / "garbage.pem", "cannot parse PEM certificate"),
        (tmp / "api.key", f"does not match the certificate in {tmp / 'other.pem'}"),
        (
            tmp / "api.pem",
            "SNI name 'api.example.com' is already used by " + str(tmp / "api.pem"),
        ),
        (tmp / "www.pem", "does not cover host 'nope.example.com'"),
        (tmp / "www.pem", "a wildcard may only be the whole first label"),
    ]
    for path, what in expected:
        assert any(p.startswith(str(path)) and what in p for p in problems), (
            path,
            what,
            problems,
        )
    assert len(problems) == len(expected), problems
    # An expired certificate is served, so it is a warning, not a problem.
    report = check_certificates(specs)
    assert list(report.problems) == problems
    [warning] = report.warnings
    assert warning.index == specs.index(warning.spec) == len(specs) - 2
    assert warning.problem.startswith(f"{tmp / 'old.pem'}: certificate expired at")


def test_validate_empty() -> None:
    assert validate_certificates([]) == [
        "server.tls.certificates: no certificates configured"
    ]


# -- upstream TLS


def _failure_text(error: BaseException) -> str:
    parts = [repr(error)]
    for reason in getattr(error, "reasons", []):
        parts.append(repr(reason.value))
    return " ".join(parts)


async def _upstream(serve: Serve, setup: Setup, names: list[str]) -> int:
    write_pair(issue(setup.ca, names), setup.tmp / "up.pem", setup.tmp / "up.key")
    spec = CertificateSpec(
        tuple(names), str(setup.tmp / "up.pem"), str(setup.tmp / "up.key")
    )
    return await serve(CertificateStore([spec]))


# Twisted warns for any Agent response body read this way, TLS or not.
_readbody_warning = pytest.mark.filterwarnings(
    "ignore:Using readBody with a transport:DeprecationWarning"
)


@_readbody_warning
@pytest_twisted.ensureDeferred
async def test_upstream_verified_with_ca_file(setup: Setup, serve: Serve) -> None:
    port = await _upstream(serve, setup, ["localhost"])
    agent = Agent(
        reactor,
        contextFactory=upstream_tls_policy(
            ca_file=setup.ca_file,
            insecure_skip_verify=False,
            log=Logger(observer=Events()),
        ),
    )
    response = await agent.request(b"GET", f"https://localhost:{port}/".encode())
    assert response.code == 200
    assert await readBody(response) == b"ok"


@pytest_twisted.ensureDeferred
async def test_upstream_wrong_name_fails(setup: Setup, serve: Serve) -> None:
    port = await _upstream(serve, setup, ["other.example.com"])
    agent = Agent(
        reactor,
        contextFactory=upstream_tls_policy(
            ca_file=setup.ca_file, insecure_skip_verify=False
        ),
    )
    with pytest.raises(Exception) as info:
        await agent.request(b"GET", f"https://localhost:{port}/".encode())
    text = _failure_text(info.value)
    assert "VerificationError" in text and "localhost" in text, text


@pytest_twisted.ensureDeferred
async def test_upstream_name_checked_against_url_host(
    setup: Setup, serve: Serve
) -> None:
    """
    The same trusted certificate for "localhost" is refused when the URL
    names the upstream by IP address.
    """
    port = await _upstream(serve, setup, ["localhost"])
    agent = Agent(
        reactor,
        contextFactory=upstream_tls_policy(
            ca_file=setup.ca_file, insecure_skip_verify=False
        ),
    )
    with pytest.raises(Exception) as info:
        await agent.request(b"GET", f"https://127.0.0.1:{port}/".encode())
    text = _failure_text(info.value)
    assert "VerificationError" in text and "127.0.0.1" in text, text


@pytest_twisted.ensureDeferred
async def test_upstream_unknown_ca_fails_with_system_trust(
    setup: Setup, serve: Serve
) -> None:
    port = await _upstream(serve, setup, ["localhost"])
    agent = Agent(
        reactor,
        contextFactory=upstream_tls_policy(ca_file=None, insecure_skip_verify=False),
    )
    with pytest.raises(Exception) as info:
        await agent.request(b"GET", f"https://localhost:{port}/".encode())
    assert "certificate verify failed" in _failure_text(info.value)


@_readbody_warning
@pytest_twisted.ensureDeferred
async def test_upstream_insecure_skip_verify(setup: Setup, serve: Serve) -> None:
    port = await _upstream(serve, setup, ["other.example.com"])
    events = Events()
    policy = upstream_tls_policy(
        ca_file=None,
        insecure_skip_verify=True,
        log=Logger(observer=events),
        name="legacy",
    )
    assert any(
        "'legacy'" in t and "verification is disabled" in t
        for t in events.texts("warn")
    )
    response = await Agent(reactor, contextFactory=policy).request(
        b"GET", f"https://localhost:{port}/".encode()
    )
    assert await readBody(response) == b"ok"


def test_upstream_bad_ca_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing.pem: cannot read file"):
        upstream_tls_policy(
            ca_file=str(tmp_path / "missing.pem"), insecure_skip_verify=False
        )
    (tmp_path / "empty.pem").write_bytes(b"\n")
    with pytest.raises(ValueError, match="empty.pem: no PEM CA certificate"):
        upstream_tls_policy(
            ca_file=str(tmp_path / "empty.pem"), insecure_skip_verify=False
        )
