"""
Shared fixtures: a real upstream and real gateways, in the test's reactor,
on ports the OS picks.
"""
from __future__ import annotations

import json
import os
import socket
import textwrap
from typing import Any, Callable, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool

from treq.client import HTTPClient

from tests.upstream_app import CountingSite, UpstreamApp
from wasmgate.config import load_config
from twisted.python.threadpool import ThreadPool

from wasmgate.service import GatewayService
from wasmgate.wasm.engine import WasmEngine


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Gateways with plugins from URLs cache them in the default cache
    directory: a test's own, never the user's (twistd subprocesses inherit it).
    """
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


class CountingPool(ThreadPool):
    """A real thread pool; chains built by L{chain_of} count their hops to it in C{jobs}."""

    jobs = 0


@pytest.fixture(scope="module")
def engine() -> Iterator[WasmEngine]:
    """A started wasm engine (modules that need variants define their own)."""
    e = WasmEngine()
    e.start()
    yield e
    e.stop()


def chain_of(filters: Any, pool: ThreadPool, **kw: Any) -> Any:
    """A L{FilterChain} of C{filters} whose jobs run in C{pool} (counted in C{pool.jobs})."""
    from wasmgate.filterjobs import BatchingRunner
    from wasmgate.wasm.chain import FilterChain

    class CountingRunner(BatchingRunner):
        def run(self, fn: Any, *args: Any, **kw: Any) -> Any:
            if isinstance(pool, CountingPool):
                pool.jobs += 1
            return super().run(fn, *args, **kw)

    return FilterChain(filters, runner=CountingRunner(reactor, pool, workers=pool.max), **kw)


@pytest.fixture
def pool() -> Iterator[CountingPool]:
    """A filter thread pool of 4 that counts its jobs."""
    p = CountingPool(minthreads=1, maxthreads=4, name="test-filters")
    p.start()
    yield p
    p.stop()


class RunningUpstream:
    def __init__(self, app: UpstreamApp, port: Any) -> None:
        self.app = app
        self.port = port
        self.url = f"http://127.0.0.1:{port.getHost().port}"


@pytest.fixture
def start_upstream() -> Iterator[Callable[..., RunningUpstream]]:
    ports = []

    def start(name: str = "upstream") -> RunningUpstream:
        app = UpstreamApp(reactor, name=name)
        port = reactor.listenTCP(0, CountingSite(app), interface="127.0.0.1")
        ports.append(port)
        return RunningUpstream(app, port)

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def recording() -> Iterator[Callable[..., tuple[Any, str]]]:
    """C{recording(answer=OK)}: a raw upstream that records what it gets, and its URL."""
    from twisted.internet.protocol import Factory

    from tests.recording_upstream import OK, Recorder, RecordingUpstream

    ports = []

    def start(answer: bytes = OK) -> tuple[Recorder, str]:
        recorder = Recorder(answer)
        port = reactor.listenTCP(
            0, Factory.forProtocol(lambda: RecordingUpstream(recorder)), interface="127.0.0.1"
        )
        ports.append(port)
        return recorder, f"http://127.0.0.1:{port.getHost().port}"

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def upstream(start_upstream: Callable[..., RunningUpstream]) -> RunningUpstream:
    return start_upstream()


class RunningGateway:
    def __init__(self, service: GatewayService, path: str) -> None:
        self.service = service
        self.path = path
        self.url = f"http://127.0.0.1:{service.listeners[0]._waitingForPort.result.getHost().port}"
        admin = getattr(service, "admin", None)
        self.admin_url = (
            f"http://127.0.0.1:{admin._waitingForPort.result.getHost().port}" if admin else None
        )


@pytest.fixture
def start_gateway(tmp_path: Any) -> Iterator[Callable[[str], RunningGateway]]:
    """
    C{start_gateway(yaml_text)}: write it as gateway.yaml and run a gateway
    on it; its listen and admin ports default to ones the OS picks.
    """
    services = []

    def start(text: str, *, name: str = "gateway.yaml") -> RunningGateway:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        config = load_config(str(path))
        service = GatewayService(config, reactor=reactor)
        service.startService()
        services.append(service)
        # TCP listeners bind synchronously: their port is known already.
        return RunningGateway(service, str(path))

    yield start
    for service in services:
        if service.running:
            pytest_twisted.blockon(service.stopService())


def gateway_yaml(
    upstream_url: str | list[str], extra: str = "", routes: str = "", server: str = ""
) -> str:
    """
    A minimal config in front of C{upstream_url} (or several target URLs,
    as upstream C{backend}); pieces can be added.
    """
    targets = [upstream_url] if isinstance(upstream_url, str) else upstream_url
    routes = routes or """
  - name: all
    match: {path_prefix: /}
    upstream: backend
"""
    return f"""
server:
  listen: "tcp:0:interface=127.0.0.1"
  trusted_proxies: ["10.0.0.0/8"]
{server}
admin:
  listen: "tcp:0:interface=127.0.0.1"
routes:
{routes}
upstreams:
  backend:
    targets: {json.dumps(targets)}
{extra}
"""


@pytest.fixture
def http() -> Iterator[HTTPClient]:
    """A treq client with its own keep-alive pool, closed after the test."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    client = HTTPClient(Agent(reactor, pool=pool))
    yield client
    pytest_twisted.blockon(pool.closeCachedConnections())


@pytest.fixture
def tmp_cwd(tmp_path: Any) -> Iterator[Any]:
    old = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


def read_until_closed(sock: "socket.socket", *, ignore_errors: bool = False) -> bytes:
    """Everything C{sock} receives until the peer closes (or, with
    C{ignore_errors}, until an error such as a reset)."""
    chunks = []
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    except OSError:
        if not ignore_errors:
            raise
    return b"".join(chunks)
