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
from typing import Any, Callable, Optional

from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread
from twisted.web.iweb import IPolicyForHTTPS

from wasmgate._files import write_atomically
from wasmgate._sourcefetch import FetchError, shown_url
from wasmgate._sourcehttps import fetch_https, get_https_sync, https_client
from wasmgate._sources3 import S3ClientFactory, default_s3_client, get_s3
from wasmgate.config import PluginConfig
from wasmgate.wasm.failures import PluginLoadError

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_TIMEOUT", "PluginSource", "S3ClientFactory", "fetch_plugin"]


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
        self._s3_factory = s3_client_factory or default_s3_client
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
        except FetchError as e:
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
            if self._tls_policy is None:
                from wasmgate.tls import upstream_tls_policy

                self._tls_policy = upstream_tls_policy(ca_file=self.ca_file, name="plugin source")
            self._treq = https_client(self.reactor, self._tls_policy, self.timeout)
        return self._treq

    def _fetch_https(self, plugin: PluginConfig) -> Deferred[bytes]:
        return fetch_https(
            plugin, self._client, reactor=self.reactor, timeout=self.timeout, max_bytes=self.max_bytes
        )

    def _get_https_sync(self, plugin: PluginConfig) -> bytes:
        return get_https_sync(plugin, ca_file=self.ca_file, timeout=self.timeout, max_bytes=self.max_bytes)

    # -- s3

    def _fetch_s3(self, plugin: PluginConfig) -> Deferred[bytes]:
        return self._in_thread(self._get_s3, plugin)

    def _get_s3(self, plugin: PluginConfig) -> bytes:
        return get_s3(plugin, self._s3_factory, self.max_bytes)

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
        _verify(plugin, data, shown_url(plugin.path))
        if cache is not None:
            try:
                write_atomically(cache, data)
            except OSError as e:
                self._log.warn(
                    "plugin {name}: cannot cache {url} in {dir}: {error}",
                    name=plugin.name, url=shown_url(plugin.path), dir=self.cache_dir, error=e,
                )
        return data

    def _failed(
        self, reason: Failure, plugin: PluginConfig, cached: Optional[bytes], cache: Optional[str]
    ) -> Any:
        if not reason.check(FetchError):
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
        raise PluginLoadError(plugin.name, f"{shown_url(plugin.path)}: only https:// and s3:// URLs are supported")
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
