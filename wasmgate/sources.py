# -*- test-case-name: tests.test_sources -*-
"""
Where plugin modules come from: a local file, an C{https://} URL or an
C{s3://bucket/key} object; always checked against the config's C{sha256:}
pin, and remote ones kept in an on-disk cache so that a gateway restarted
while the network (or the bucket) is down still starts.

S3 endpoints: C{s3://bucket/key} uses boto3's standard credential chain
and endpoint. For an S3-compatible store (MinIO, Ceph, moto, ...) either put
the endpoint in the URL, C{s3://bucket/key?endpoint_url=http://host:9000},
which keeps it next to the plugin it belongs to in gateway.yaml, or set
C{AWS_ENDPOINT_URL_S3} / C{AWS_ENDPOINT_URL} in the environment, which
boto3 honours by itself. The URL parameter wins. C{version_id=...} fetches
one version of a versioned object.

A pinned module found in the cache is used without fetching it again: its
bytes are exactly what the pin names. An unpinned one is fetched each time
(so an updated object is picked up) and the cache is only a fallback.
"""
from __future__ import annotations

import hashlib
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS

from wasmgate._files import write_atomically
from wasmgate.config import PluginConfig
from wasmgate.wasm.filter import PluginLoadError

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_USER_AGENT = "wasmgate-plugin-fetch"

S3ClientFactory = Callable[[Optional[str]], Any]
"""C{factory(endpoint_url or None) -> a boto3 S3 client}."""


class _FetchError(Exception):
    """The remote copy could not be had (network, HTTP status, S3 error)."""


@dataclass(frozen=True)
class _S3Location:
    bucket: str
    key: str
    endpoint_url: Optional[str]
    version_id: Optional[str]


class PluginSource:
    """
    Fetches plugin modules; one per process (or per reload) is enough.

    @param cache_dir: where fetched modules are kept (created on demand);
        C{None}: no cache, a restart needs the network.
    @param ca_file: a PEM bundle to verify C{https://} servers against
        instead of the system's trust store.
    @param tls_policy: the C{contextFactory} for the HTTPS agent (default:
        built from C{ca_file}); used by L{fetch} only.
    @param treq_client: the treq C{HTTPClient} to fetch with (default: one
        with its own non-persistent pool); used by L{fetch} only.
    @param s3_client_factory: builds the boto3 client (default: a new
        boto3 session's C{client("s3", endpoint_url=...)}).
    """

    def __init__(
        self,
        *,
        reactor: Any,
        cache_dir: Optional[str],
        ca_file: Optional[str] = None,
        tls_policy: Optional[IPolicyForHTTPS] = None,
        treq_client: Any = None,
        s3_client_factory: Optional[S3ClientFactory] = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        log: Optional[Logger] = None,
    ) -> None:
        self.reactor = reactor
        self.cache_dir = cache_dir
        self.ca_file = ca_file
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._tls_policy = tls_policy
        self._treq = treq_client
        self._s3_factory = s3_client_factory or _default_s3_client
        self._log = log if log is not None else Logger(namespace=__name__, source=self)

    # -- the three entry points

    def fetch(self, plugin: PluginConfig) -> Deferred[bytes]:
        """
        The module's bytes, checked against its pin. Call from the reactor
        thread; never blocks it.

        @return: fails with L{PluginLoadError}.
        """
        try:
            kind = _kind(plugin)
        except PluginLoadError:
            return defer.fail()
        if kind == "file":
            return self._in_thread(_read_file, plugin)
        cache = self._cache_path(plugin.path)
        d = self._in_thread(self._read_cache, plugin, cache)

        def have_cached(cached: Optional[bytes]) -> Any:
            if cached is not None and plugin.sha256 is not None:
                return cached
            fetched = self._fetch_https(plugin) if kind == "https" else self._fetch_s3(plugin)
            return fetched.addCallbacks(
                lambda data: self._in_thread(self._fetched, plugin, data, cache),
                lambda f: self._failed(f, plugin, cached, cache),
            )

        return d.addCallback(have_cached)

    def fetch_sync(self, plugin: PluginConfig) -> bytes:
        """
        L{fetch} without the reactor (for start-up, before it runs): the
        same checks and cache, HTTPS through the standard library.
        """
        kind = _kind(plugin)
        if kind == "file":
            return _read_file(plugin)
        cache = self._cache_path(plugin.path)
        cached = self._read_cache(plugin, cache)
        if cached is not None and plugin.sha256 is not None:
            return cached
        try:
            if kind == "https":
                data = self._get_https_sync(plugin)
            else:
                data = self._get_s3(plugin)
        except _FetchError as e:
            return self._fall_back(plugin, str(e), cached, cache)
        return self._fetched(plugin, data, cache)

    def fetch_blocking(self, plugin: PluginConfig) -> bytes:
        """
        From any thread but the reactor's: L{fetch} run in the reactor and
        waited for when the reactor runs, else L{fetch_sync}.
        """
        if getattr(self.reactor, "running", False) and not isInIOThread():
            return threads.blockingCallFromThread(self.reactor, self.fetch, plugin)  # type: ignore[no-any-return]
        return self.fetch_sync(plugin)

    # -- https

    def _client(self) -> Any:
        if self._treq is None:
            from treq.client import HTTPClient

            if self._tls_policy is None:
                from wasmgate.tls import upstream_tls_policy

                self._tls_policy = upstream_tls_policy(ca_file=self.ca_file, name="plugin source")
            # Not persistent: fetches are rare, no idle connection is kept.
            pool = HTTPConnectionPool(self.reactor, persistent=False)
            agent = Agent(
                self.reactor, contextFactory=self._tls_policy, pool=pool, connectTimeout=self.timeout
            )
            self._treq = HTTPClient(agent)
        return self._treq

    def _fetch_https(self, plugin: PluginConfig) -> Deferred[bytes]:
        from treq import collect

        url = plugin.path
        shown = _shown(url)
        try:
            client = self._client()
        except ValueError as e:  # an unreadable ca_file
            return defer.fail(PluginLoadError(plugin.name, f"{shown}: {e}"))
        d = client.get(
            url, headers={"User-Agent": [_USER_AGENT]}, timeout=self.timeout, reactor=self.reactor
        )

        def got(response: Any) -> Deferred[bytes]:
            final = getattr(getattr(response, "request", None), "absoluteURI", b"") or b""
            if final and not final.startswith(b"https://"):
                response.deliverBody(_Ignore())
                raise _FetchError(f"{shown} redirected to a non-https URL")
            if not 200 <= response.code < 300:
                response.deliverBody(_Ignore())
                phrase = response.phrase.decode("latin-1", "replace")
                raise _FetchError(f"GET {shown} answered HTTP {response.code} {phrase}".rstrip())
            parts: list[bytes] = []
            size = [0]

            def collector(data: bytes) -> None:
                size[0] += len(data)
                if size[0] > self.max_bytes:
                    raise _FetchError(f"{shown} is larger than {self.max_bytes} bytes")
                parts.append(data)

            return collect(response, collector).addCallback(lambda _: b"".join(parts))

        def failed(reason: Failure) -> Failure:
            if reason.check(_FetchError):
                return reason
            raise _FetchError(f"cannot fetch {shown}: {_network_error(reason, self.timeout)}")

        return d.addCallback(got).addErrback(failed)

    def _get_https_sync(self, plugin: PluginConfig) -> bytes:
        shown = _shown(plugin.path)
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise PluginLoadError(plugin.name, f"{shown}: cannot use ca_file {self.ca_file}: {e}") from None
        request = urllib.request.Request(plugin.path, headers={"User-Agent": _USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=context) as response:
                if not response.geturl().startswith("https://"):
                    raise _FetchError(f"{shown} redirected to a non-https URL")
                data = response.read(self.max_bytes + 1)
        except urllib.error.HTTPError as e:
            raise _FetchError(f"GET {shown} answered HTTP {e.code} {e.reason}".rstrip()) from None
        except urllib.error.URLError as e:
            raise _FetchError(f"cannot fetch {shown}: {_first_line(e.reason)}") from None
        except (OSError, ssl.SSLError) as e:  # timeouts, resets
            raise _FetchError(f"cannot fetch {shown}: {_first_line(e)}") from None
        if len(data) > self.max_bytes:
            raise _FetchError(f"{shown} is larger than {self.max_bytes} bytes")
        return data

    # -- s3

    def _fetch_s3(self, plugin: PluginConfig) -> Deferred[bytes]:
        return self._in_thread(self._get_s3, plugin)

    def _get_s3(self, plugin: PluginConfig) -> bytes:
        where = _s3_location(plugin)
        shown = _shown(plugin.path)
        try:
            from botocore.exceptions import BotoCoreError, ClientError
        except ImportError:
            raise PluginLoadError(
                plugin.name, f"{shown}: s3:// plugin sources need boto3 (the 's3' extra)"
            ) from None
        try:
            client = self._s3_factory(where.endpoint_url)
            extra = {"VersionId": where.version_id} if where.version_id else {}
            answer = client.get_object(Bucket=where.bucket, Key=where.key, **extra)
            length = answer.get("ContentLength")
            if length is not None and length > self.max_bytes:
                answer["Body"].close()
                raise _FetchError(f"{shown} is larger than {self.max_bytes} bytes")
            with answer["Body"] as body:
                return body.read()  # type: ignore[no-any-return]
        except ClientError as e:
            error = e.response.get("Error", {})
            code = error.get("Code", "?")
            message = error.get("Message") or ""
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            detail = f"S3 error {code}" + (f" (HTTP {status})" if status else "")
            raise _FetchError(f"cannot fetch {shown}: {detail}{': ' + message if message else ''}") from None
        except BotoCoreError as e:  # no credentials, endpoint unreachable, ...
            raise _FetchError(f"cannot fetch {shown}: {_first_line(e)}") from None

    # -- pins and the cache

    def _cache_path(self, url: str) -> Optional[str]:
        if self.cache_dir is None:
            return None
        return os.path.join(self.cache_dir, hashlib.sha256(url.encode()).hexdigest() + ".wasm")

    def _read_cache(self, plugin: PluginConfig, cache: Optional[str]) -> Optional[bytes]:
        """The cached copy, if there is one (that matches the pin)."""
        if cache is None:
            return None
        try:
            with open(cache, "rb") as f:
                data = f.read()
        except OSError:
            return None
        if plugin.sha256 is not None and _sha256(data) != plugin.sha256.lower():
            return None  # an older version: no use for this pin
        return data

    def _fetched(self, plugin: PluginConfig, data: bytes, cache: Optional[str]) -> bytes:
        _verify(plugin, data, _shown(plugin.path))
        if cache is not None:
            try:
                write_atomically(cache, data)
            except OSError as e:
                self._log.warn(
                    "plugin {name}: cannot cache {url} in {dir}: {error}",
                    name=plugin.name, url=_shown(plugin.path), dir=self.cache_dir, error=e,
                )
        return data

    def _failed(
        self, reason: Failure, plugin: PluginConfig, cached: Optional[bytes], cache: Optional[str]
    ) -> Any:
        if not reason.check(_FetchError):
            return reason
        return self._fall_back(plugin, str(reason.value), cached, cache)

    def _fall_back(
        self, plugin: PluginConfig, error: str, cached: Optional[bytes], cache: Optional[str]
    ) -> bytes:
        if cached is None:
            raise PluginLoadError(plugin.name, error)
        self._log.warn(
            "plugin {name}: {error}; using the cached copy {cache} (sha256 {digest})",
            name=plugin.name, error=error, cache=cache, digest=_sha256(cached)[:12],
        )
        return cached

    def _in_thread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)


def fetch_plugin(
    plugin: PluginConfig,
    *,
    reactor: Any,
    cache_dir: Optional[str],
    treq_client: Any = None,
    s3_client_factory: Optional[S3ClientFactory] = None,
    tls_policy: Optional[IPolicyForHTTPS] = None,
    ca_file: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Deferred[bytes]:
    """A one-off L{PluginSource.fetch}."""
    return PluginSource(
        reactor=reactor,
        cache_dir=cache_dir,
        ca_file=ca_file,
        tls_policy=tls_policy,
        treq_client=treq_client,
        s3_client_factory=s3_client_factory,
        timeout=timeout,
    ).fetch(plugin)


# -- helpers (plain functions, safe in any thread)


def _kind(plugin: PluginConfig) -> str:
    if plugin.path.startswith("https://"):
        return "https"
    if plugin.path.startswith("s3://"):
        return "s3"
    if "://" in plugin.path:
        raise PluginLoadError(plugin.name, f"{_shown(plugin.path)}: only https:// and s3:// URLs are supported")
    return "file"


def _read_file(plugin: PluginConfig) -> bytes:
    try:
        with open(plugin.path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PluginLoadError(plugin.name, f"cannot read {plugin.path}: {e.strerror}") from None
    return _verify(plugin, data, plugin.path)


def _verify(plugin: PluginConfig, data: bytes, where: str) -> bytes:
    if plugin.sha256 is not None:
        digest = _sha256(data)
        if digest != plugin.sha256.lower():
            raise PluginLoadError(
                plugin.name, f"{where} has sha256 {digest}, but the config pins {plugin.sha256}"
            )
    return data


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _s3_location(plugin: PluginConfig) -> _S3Location:
    parts = urlsplit(plugin.path)
    key = unquote(parts.path.lstrip("/"))
    if not parts.netloc or not key:
        raise PluginLoadError(plugin.name, f"{_shown(plugin.path)}: expected s3://BUCKET/KEY")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"endpoint_url", "version_id"})
    if unknown:
        raise PluginLoadError(
            plugin.name,
            f"{_shown(plugin.path)}: unknown parameter(s) {', '.join(unknown)}"
            " (known: endpoint_url, version_id)",
        )
    return _S3Location(
        bucket=parts.netloc,
        key=key,
        endpoint_url=query.get("endpoint_url", [None])[-1],
        version_id=query.get("version_id", [None])[-1],
    )


def _default_s3_client(endpoint_url: Optional[str]) -> Any:
    import boto3
    from botocore.config import Config

    # A session per client: boto3's default session is not thread-safe.
    session = boto3.session.Session()
    config = Config(connect_timeout=10, read_timeout=30, retries={"max_attempts": 3})
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def _shown(url: str) -> str:
    """A URL for messages: without a query string (it may hold a signature)."""
    return urlunsplit(urlsplit(url)._replace(query="", fragment=""))


def _network_error(reason: Failure, timeout: float) -> str:
    from twisted.internet.error import TimeoutError as TwistedTimeout

    if reason.check(defer.CancelledError, TwistedTimeout):
        return f"no answer within {timeout:g}s"
    value = reason.value
    inner = getattr(value, "reasons", None)  # ResponseNeverReceived & co.
    if inner:
        value = inner[0].value
        if isinstance(value, defer.CancelledError):
            return f"no answer within {timeout:g}s"
    from OpenSSL import SSL

    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        # [('SSL routines', '', 'certificate verify failed')] -> its reasons
        reasons = [r[-1] for r in value.args[0] if isinstance(r, tuple) and r]
        return "TLS handshake failed: " + ("; ".join(reasons) or "unknown error")
    return _first_line(value)


def _first_line(e: Any) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class _Ignore(Protocol):
    """Drop a body we will not read (and its connection)."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()
