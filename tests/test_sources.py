"""
Plugin sources against real servers: an HTTPS server with a test CA, and
an S3-compatible server (moto) on a free port; pins, the on-disk cache and
the error messages an operator sees.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any, Iterator

import boto3
import pytest
import pytest_twisted
from moto.server import ThreadedMotoServer
from twisted.internet import endpoints, reactor, threads
from twisted.logger import Logger, formatEvent
from twisted.web import resource, server

from tests.certs import issue, make_ca, write_pair
from wasmgate.config import PluginConfig
from wasmgate.sources import PluginSource, fetch_plugin
from wasmgate.tls import CertificateSpec, CertificateStore, tls_endpoint
from wasmgate.wasm.filter import PluginLoadError

MODULE = b"\0asm\x01\0\0\0" + b"pretend-module" * 10
OTHER = b"\0asm\x01\0\0\0" + b"another-module" * 10


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Files(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[bytes, bytes] = {}
        self.hits = 0

    def render_GET(self, request: server.Request) -> bytes:
        self.hits += 1
        data = self.files.get(request.path)
        if data is None:
            request.setResponseCode(404)
            return b"not here"
        return data


class _HTTPS:
    def __init__(self, files: _Files, port: Any, ca_file: str) -> None:
        self.files = files
        self.port = port
        self.ca_file = ca_file
        self.base = f"https://localhost:{port.getHost().port}"


@pytest.fixture
def https(tmp_path: Any) -> Iterator[_HTTPS]:
    ca = make_ca("plugin source CA")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    write_pair(issue(ca, ["localhost"]), tmp_path / "srv.pem", tmp_path / "srv.key")
    store = CertificateStore(
        [CertificateSpec(("localhost",), str(tmp_path / "srv.pem"), str(tmp_path / "srv.key"))]
    )
    endpoint = tls_endpoint(endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), store)
    files = _Files()
    site = server.Site(files)
    site.noisy = False
    port = pytest_twisted.blockon(endpoint.listen(site))
    running = _HTTPS(files, port, str(tmp_path / "ca.pem"))
    yield running
    if running.port is not None:
        pytest_twisted.blockon(running.port.stopListening())
    store.close()


def _logger() -> tuple[Logger, list[str]]:
    lines: list[str] = []
    return Logger(observer=lambda e: lines.append(formatEvent(e))), lines


def _source(tmp_path: Any, **kwargs: Any) -> PluginSource:
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    return PluginSource(reactor=reactor, **kwargs)


async def _refused(d: Any) -> PluginLoadError:
    with pytest.raises(PluginLoadError) as info:
        await d
    return info.value


# -- files


@pytest_twisted.ensureDeferred
async def test_file_source_and_its_pin(tmp_path):
    path = tmp_path / "p.wasm"
    path.write_bytes(MODULE)
    source = _source(tmp_path)
    assert await source.fetch(PluginConfig("p", str(path), sha256=_sha(MODULE))) == MODULE
    e = await _refused(source.fetch(PluginConfig("p", str(path), sha256=_sha(OTHER))))
    assert e.name == "p"
    assert e.what == f"{path} has sha256 {_sha(MODULE)}, but the config pins {_sha(OTHER)}"
    e = await _refused(source.fetch(PluginConfig("p", str(tmp_path / "missing.wasm"))))
    assert "cannot read" in e.what and "missing.wasm" in e.what
    e = await _refused(source.fetch(PluginConfig("p", "ftp://example.test/p.wasm")))
    assert "only https:// and s3://" in e.what


# -- https


@pytest_twisted.ensureDeferred
async def test_https_fetch_verified_and_cached(tmp_path, https):
    https.files.files[b"/p.wasm"] = MODULE
    url = https.base + "/p.wasm"
    data = await fetch_plugin(
        PluginConfig("p", url, sha256=_sha(MODULE)),
        reactor=reactor,
        cache_dir=str(tmp_path / "cache"),
        ca_file=https.ca_file,
    )
    assert data == MODULE
    cached = tmp_path / "cache" / (hashlib.sha256(url.encode()).hexdigest() + ".wasm")
    assert cached.read_bytes() == MODULE
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cached.name]  # no temp left


@pytest_twisted.ensureDeferred
async def test_https_is_verified_by_default(tmp_path, https):
    https.files.files[b"/p.wasm"] = MODULE
    source = _source(tmp_path)  # system trust store: does not know the test CA
    e = await _refused(source.fetch(PluginConfig("p", https.base + "/p.wasm")))
    assert e.what.startswith(f"cannot fetch {https.base}/p.wasm: TLS handshake failed: ")
    assert "certificate verify failed" in e.what
    assert not (tmp_path / "cache").exists()


@pytest_twisted.ensureDeferred
async def test_https_status_and_pin_mismatch_are_clear(tmp_path, https):
    https.files.files[b"/p.wasm"] = MODULE
    source = _source(tmp_path, ca_file=https.ca_file)
    e = await _refused(source.fetch(PluginConfig("p", https.base + "/nope.wasm?sig=secret")))
    assert e.what == f"GET {https.base}/nope.wasm answered HTTP 404 Not Found"
    assert "secret" not in e.what
    url = https.base + "/p.wasm"
    e = await _refused(source.fetch(PluginConfig("p", url, sha256=_sha(OTHER))))
    assert e.what == f"{url} has sha256 {_sha(MODULE)}, but the config pins {_sha(OTHER)}"
    assert not (tmp_path / "cache").exists(), "a module that fails its pin is not cached"


@pytest_twisted.ensureDeferred
async def test_cache_used_when_the_server_is_down(tmp_path, https):
    https.files.files[b"/p.wasm"] = MODULE
    https.files.files[b"/q.wasm"] = OTHER
    url = https.base + "/p.wasm"
    log, lines = _logger()
    source = _source(tmp_path, ca_file=https.ca_file, log=log)
    assert await source.fetch(PluginConfig("p", url)) == MODULE
    assert await source.fetch(PluginConfig("q", https.base + "/q.wasm", sha256=_sha(OTHER))) == OTHER

    # A pinned module already in the cache needs no fetch at all.
    hits = https.files.hits
    assert await source.fetch(PluginConfig("q", https.base + "/q.wasm", sha256=_sha(OTHER))) == OTHER
    assert https.files.hits == hits

    await https.port.stopListening()
    https.port = None
    # A new process (new source) without the network still starts.
    log, lines = _logger()
    restarted = _source(tmp_path, ca_file=https.ca_file, log=log)
    assert await restarted.fetch(PluginConfig("p", url)) == MODULE
    assert await restarted.fetch(PluginConfig("p", url, sha256=_sha(MODULE))) == MODULE
    assert len(lines) == 1
    assert "plugin p: cannot fetch" in lines[0] and "using the cached copy" in lines[0]
    assert "refused" in lines[0]
    # A cached copy that does not match the pin is no fallback.
    e = await _refused(restarted.fetch(PluginConfig("p", url, sha256=_sha(OTHER))))
    assert "cannot fetch" in e.what and "refused" in e.what
    # Nor is there one without a cache directory.
    uncached = PluginSource(reactor=reactor, cache_dir=None, ca_file=https.ca_file)
    e = await _refused(uncached.fetch(PluginConfig("p", url)))
    assert "cannot fetch" in e.what


@pytest_twisted.ensureDeferred
async def test_blocking_fetches_from_other_threads(tmp_path, https):
    """
    The reactor-free path (start-up) and the blocking wrapper (reloads in
    a worker thread) give the same bytes and the same errors.
    """
    https.files.files[b"/p.wasm"] = MODULE
    url = https.base + "/p.wasm"
    source = _source(tmp_path, ca_file=https.ca_file)
    plugin = PluginConfig("p", url, sha256=_sha(MODULE))
    assert await threads.deferToThread(source.fetch_sync, plugin) == MODULE
    os.unlink(tmp_path / "cache" / (hashlib.sha256(url.encode()).hexdigest() + ".wasm"))
    assert await threads.deferToThread(source.fetch_blocking, plugin) == MODULE
    bad = PluginConfig("p", https.base + "/gone.wasm")
    e = await _refused(threads.deferToThread(source.fetch_sync, bad))
    assert e.what == f"GET {https.base}/gone.wasm answered HTTP 404 Not Found"
    e = await _refused(threads.deferToThread(source.fetch_blocking, bad))
    assert e.what == f"GET {https.base}/gone.wasm answered HTTP 404 Not Found"
    untrusted = _source(tmp_path)
    e = await _refused(threads.deferToThread(untrusted.fetch_sync, PluginConfig("p", https.base + "/x.wasm")))
    assert "certificate verify failed" in e.what.lower().replace("_", " ")


# -- s3


@pytest.fixture
def aws_env(monkeypatch: Any) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


class _S3:
    def __init__(self, moto: ThreadedMotoServer) -> None:
        self.moto = moto
        host, port = moto.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.client = boto3.session.Session().client("s3", endpoint_url=self.endpoint)
        self.bucket = "plugins-" + uuid.uuid4().hex[:12]
        self.client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}?endpoint_url={self.endpoint}"


@pytest.fixture
def s3(aws_env: None) -> Iterator[_S3]:
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    running = _S3(moto)
    yield running
    moto.stop()


@pytest_twisted.ensureDeferred
async def test_s3_load_pin_and_update(tmp_path, s3):
    s3.put("filters/p.wasm", MODULE)
    source = _source(tmp_path)
    url = s3.url("filters/p.wasm")
    assert await source.fetch(PluginConfig("p", url, sha256=_sha(MODULE))) == MODULE
    e = await _refused(source.fetch(PluginConfig("p", url, sha256=_sha(OTHER))))
    assert e.what == (
        f"s3://{s3.bucket}/filters/p.wasm has sha256 {_sha(MODULE)}, but the config pins {_sha(OTHER)}"
    )
    # Unpinned: an updated object is fetched anew, not served from the cache.
    assert await source.fetch(PluginConfig("p", url)) == MODULE
    s3.put("filters/p.wasm", OTHER)
    assert await source.fetch(PluginConfig("p", url)) == OTHER
    assert await threads.deferToThread(source.fetch_sync, PluginConfig("p", url)) == OTHER


@pytest_twisted.ensureDeferred
async def test_s3_errors_name_the_code(tmp_path, s3):
    source = _source(tmp_path)
    e = await _refused(source.fetch(PluginConfig("p", s3.url("missing.wasm"))))
    assert e.what.startswith(f"cannot fetch s3://{s3.bucket}/missing.wasm: S3 error NoSuchKey (HTTP 404)")
    assert "endpoint_url" not in e.what
    e = await _refused(source.fetch(PluginConfig("p", f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/p.wasm?endpoint_url={s3.endpoint}")))
    assert "S3 error NoSuchBucket" in e.what
    e = await _refused(source.fetch(PluginConfig("p", f"s3://{s3.bucket}/p.wasm?region=x")))
    assert "unknown parameter(s) region" in e.what


@pytest_twisted.ensureDeferred
async def test_s3_endpoint_from_the_environment(tmp_path, s3, monkeypatch):
    s3.put("p.wasm", MODULE)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)
    source = _source(tmp_path)
    assert await source.fetch(PluginConfig("p", f"s3://{s3.bucket}/p.wasm")) == MODULE


@pytest_twisted.ensureDeferred
async def test_s3_down_falls_back_to_the_cache(tmp_path, s3):
    s3.put("p.wasm", MODULE)
    url = s3.url("p.wasm")
    assert await _source(tmp_path).fetch(PluginConfig("p", url)) == MODULE
    await threads.deferToThread(s3.moto.stop)
    log, lines = _logger()
    restarted = _source(tmp_path, log=log, s3_client_factory=_no_retries)
    assert await restarted.fetch(PluginConfig("p", url)) == MODULE
    assert len(lines) == 1 and "using the cached copy" in lines[0]
    uncached = PluginSource(reactor=reactor, cache_dir=None, s3_client_factory=_no_retries)
    e = await _refused(uncached.fetch(PluginConfig("p", url)))
    assert e.what.startswith(f"cannot fetch s3://{s3.bucket}/p.wasm: ")
    s3.moto = _Stopped()


def _no_retries(endpoint_url: Any) -> Any:
    """A client that gives up at once (the default retries a dead endpoint)."""
    from botocore.config import Config

    config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2)
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


class _Stopped:
    def stop(self) -> None:
        pass
