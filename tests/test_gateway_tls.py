"""
TLS through a real gateway: SNI certificate choice, rotation without a
restart, and verified HTTPS upstreams.
"""
from __future__ import annotations

import http.client
import json
import ssl
import time

import pytest_twisted
from cryptography import x509
from twisted.internet import endpoints, reactor, task, threads
from twisted.logger import globalLogPublisher
from twisted.web import server

from tests.certs import issue, make_ca, write_pair
from tests.conftest import gateway_yaml
from tests.upstream_app import UpstreamApp
from wasmgate.tls import CertificateSpec, CertificateStore, tls_endpoint


def _setup(tmp_path):
    ca = make_ca()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    api = issue(ca, ["api.example.com"], serial=101)
    wild = issue(ca, ["*.example.org"], serial=202)
    write_pair(api, tmp_path / "api.pem", tmp_path / "api.key")
    write_pair(wild, tmp_path / "wild.pem", tmp_path / "wild.key")
    return ca


def _tls_server(upstream_url: str) -> str:
    return gateway_yaml(upstream_url, server="""
  tls:
    watch_interval: 200ms
    certificates:
      - {hosts: [api.example.com], cert: api.pem, key: api.key}
      - {hosts: ["*.example.org"], cert: wild.pem, key: wild.key}
""")


def _https_get(port: int, server_name: str, cafile: str, path: str = "/echo"):
    context = ssl.create_default_context(cafile=cafile)
    context.check_hostname = False  # we look at which certificate came
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    conn.connect()
    # Reconnect with the SNI name we want.
    conn.sock.close()
    raw = context.wrap_socket(
        __import__("socket").create_connection(("127.0.0.1", port), timeout=10),
        server_hostname=server_name,
    )
    conn.sock = raw
    der = raw.getpeercert(binary_form=True)
    serial = x509.load_der_x509_certificate(der).serial_number
    conn.request("GET", path, headers={"Host": server_name})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return serial, response.status, body


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest_twisted.ensureDeferred
async def test_sni_picks_the_certificate_and_proxies(tmp_path, upstream, start_gateway):
    _setup(tmp_path)
    gw = start_gateway(_tls_server(upstream.url))
    cafile = str(tmp_path / "ca.pem")
    port = _port(gw.url)
    serial, status, body = await threads.deferToThread(_https_get, port, "api.example.com", cafile)
    assert (serial, status) == (101, 200)
    echo = json.loads(body)
    assert echo["headers"]["x-forwarded-proto"] == ["https"]
    serial, status, _ = await threads.deferToThread(_https_get, port, "www.example.org", cafile)
    assert (serial, status) == (202, 200)
    # An unknown name gets the default (first) certificate.
    serial, status, _ = await threads.deferToThread(_https_get, port, "unknown.test", cafile)
    assert (serial, status) == (101, 200)
    # Expiry of every served certificate, on the admin port.
    import urllib.request

    metrics = await threads.deferToThread(
        lambda: urllib.request.urlopen(gw.admin_url + "/metrics", timeout=5).read().decode()
    )
    assert 'wasmgate_tls_cert_not_after_seconds{host="api.example.com"}' in metrics
    assert 'wasmgate_tls_cert_not_after_seconds{host="*.example.org"}' in metrics


@pytest_twisted.ensureDeferred
async def test_certificate_rotates_without_restart(tmp_path, upstream, start_gateway):
    ca = _setup(tmp_path)
    gw = start_gateway(_tls_server(upstream.url))
    cafile = str(tmp_path / "ca.pem")
    port = _port(gw.url)
    serial, _, _ = await threads.deferToThread(_https_get, port, "api.example.com", cafile)
    assert serial == 101
    write_pair(issue(ca, ["api.example.com"], serial=303), tmp_path / "api.pem", tmp_path / "api.key", atomic=True)
    deadline = time.monotonic() + 5
    while True:
        serial, status, _ = await threads.deferToThread(_https_get, port, "api.example.com", cafile)
        if serial == 303 or time.monotonic() > deadline:
            break
        await task.deferLater(reactor, 0.1, lambda: None)
    assert (serial, status) == (303, 200)


async def _tls_upstream(tmp_path, ca, names, serial):
    leaf = issue(ca, names, serial=serial)
    write_pair(leaf, tmp_path / f"up{serial}.pem", tmp_path / f"up{serial}.key")
    store = CertificateStore([CertificateSpec(tuple(names), str(tmp_path / f"up{serial}.pem"), str(tmp_path / f"up{serial}.key"))])
    endpoint = tls_endpoint(endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), store)
    return await endpoint.listen(server.Site(UpstreamApp(reactor)))


@pytest_twisted.ensureDeferred
async def test_https_upstream_verified_and_wrong_name_is_502(tmp_path, start_gateway, http):
    ca = make_ca("upstream CA")
    (tmp_path / "upstream-ca.pem").write_bytes(ca.cert_pem)
    good = await _tls_upstream(tmp_path, ca, ["localhost"], 1)
    bad = await _tls_upstream(tmp_path, ca, ["other.example.com"], 2)
    text = f"""
server:
  listen: "tcp:0:interface=127.0.0.1"
admin: {{listen: "tcp:0:interface=127.0.0.1"}}
routes:
  - {{match: {{path_prefix: /good}}, upstream: good}}
  - {{match: {{path_prefix: /bad}}, upstream: bad}}
upstreams:
  good: {{targets: ["https://localhost:{good.getHost().port}"], ca_file: upstream-ca.pem}}
  bad: {{targets: ["https://localhost:{bad.getHost().port}"], ca_file: upstream-ca.pem}}
"""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        gw = start_gateway(text)
        response = await http.get(gw.url + "/good/echo")
        assert response.code == 200
        assert json.loads(await response.text())["uri"] == "/good/echo"
        response = await http.get(gw.url + "/bad/echo")
        assert response.code == 502
        await response.content()
    finally:
        globalLogPublisher.removeObserver(events.append)
        await good.stopListening()
        await bad.stopListening()
    from twisted.logger import formatEvent

    lines = [formatEvent(e) for e in events]
    [line] = [line for line in lines if line.startswith("upstream bad")]
    assert "VerificationError" in line and "localhost" in line and "-> 502" in line, line


@pytest_twisted.ensureDeferred
async def test_reload_adds_a_certificate_and_refuses_a_bad_one(tmp_path, upstream, start_gateway):
    """
    A reload that adds a host to server.tls serves its certificate to new
    handshakes; a reload naming a key that does not match keeps the old
    store whole.
    """
    ca = _setup(tmp_path)
    gw = start_gateway(_tls_server(upstream.url))
    cafile = str(tmp_path / "ca.pem")
    port = _port(gw.url)
    serial, _, _ = await threads.deferToThread(_https_get, port, "new.example.net", cafile)
    assert serial == 101  # not configured yet: the default certificate
    write_pair(issue(ca, ["new.example.net"], serial=404), tmp_path / "new.pem", tmp_path / "new.key")
    config = tmp_path / "gateway.yaml"
    text = config.read_text()
    added = "      - {hosts: [new.example.net], cert: new.pem, key: new.key}\n"
    config.write_text(text.replace("      - {hosts: [api.example.com]", added + "      - {hosts: [api.example.com]"))
    await gw.service.reload()
    serial, status, _ = await threads.deferToThread(_https_get, port, "new.example.net", cafile)
    assert (serial, status) == (404, 200)
    serial, _, _ = await threads.deferToThread(_https_get, port, "www.example.org", cafile)
    assert serial == 202

    # The api key swapped for another: refused, the current store stays.
    write_pair(issue(ca, ["other.example.com"], serial=505), tmp_path / "other.pem", tmp_path / "other.key")
    config.write_text(config.read_text().replace("key: new.key", "key: other.key"))
    try:
        await gw.service.reload()
    except Exception as e:
        assert "server.tls" in str(e) and "new.pem" in str(e)
    else:
        raise AssertionError("a mismatched key was accepted")
    serial, status, _ = await threads.deferToThread(_https_get, port, "new.example.net", cafile)
    assert (serial, status) == (404, 200)


def _sni_get(port: int, server_name: str, cafile: str | None) -> tuple[int, int]:
    """
    An HTTPS GET with SNI C{server_name} from the first byte (the default
    certificate is never looked at), verified against C{cafile} or, with
    L{None}, not at all: to see which certificate is sent even if expired.
    """
    if cafile is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=cafile)
    conn = http.client.HTTPSConnection(server_name, port, context=context, timeout=10)
    conn.sock = context.wrap_socket(
        __import__("socket").create_connection(("127.0.0.1", port), timeout=10),
        server_hostname=server_name,
    )
    serial = x509.load_der_x509_certificate(conn.sock.getpeercert(binary_form=True)).serial_number
    conn.request("GET", "/echo")
    response = conn.getresponse()
    response.read()
    conn.close()
    return serial, response.status


def _expire_api(tmp_path, ca):
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc)
    expired = issue(
        ca, ["api.example.com"], serial=606,
        not_before=now - timedelta(days=90), not_after=now - timedelta(days=1),
    )
    write_pair(expired, tmp_path / "api.pem", tmp_path / "api.key")
    return expired


@pytest_twisted.ensureDeferred
async def test_gateway_starts_with_an_expired_certificate(tmp_path, upstream, start_gateway):
    """
    One expired certificate does not take the other hosts down: the
    gateway starts, serves it on its name (a client that checks dates
    refuses it) and the valid one on its own, and logs a warning naming
    the file, the host and the date.
    """
    ca = _setup(tmp_path)
    expired = _expire_api(tmp_path, ca)
    cafile = str(tmp_path / "ca.pem")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        gw = start_gateway(_tls_server(upstream.url))
    finally:
        globalLogPublisher.removeObserver(events.append)
    port = _port(gw.url)
    assert await threads.deferToThread(_sni_get, port, "www.example.org", cafile) == (202, 200)
    assert await threads.deferToThread(_sni_get, port, "api.example.com", None) == (606, 200)
    try:
        await threads.deferToThread(_sni_get, port, "api.example.com", cafile)
    except ssl.SSLCertVerificationError as e:
        assert "certificate has expired" in str(e)
    else:
        raise AssertionError("a client checking dates accepted the expired certificate")

    from twisted.logger import LogLevel, formatEvent

    [warning] = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn and "api.pem" in formatEvent(e)]
    assert str(tmp_path / "api.pem") in warning and "api.example.com" in warning
    assert f"expired at {expired.cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}" in warning


def test_gateway_refuses_an_expired_certificate_with_the_wrong_key(tmp_path, upstream, start_gateway):
    from wasmgate.config import ConfigError

    ca = _setup(tmp_path)
    _expire_api(tmp_path, ca)
    (tmp_path / "api.key").write_bytes(issue(ca, ["api.example.com"]).key_pem)
    try:
        start_gateway(_tls_server(upstream.url))
    except ConfigError as e:
        assert "server.tls" in str(e) and "private key does not match" in str(e)
        assert str(tmp_path / "api.key") in str(e)
        assert "expired" not in str(e)  # a warning, not a reason to refuse
    else:
        raise AssertionError("a mismatched key was accepted")
