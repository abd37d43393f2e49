# -*- test-case-name: tests.test_sources,tests.test_gateway_sources -*-
"""
Plugin modules over C{https://}: through treq in the reactor, or through
the standard library before the reactor runs; redirects to plain HTTP and
bodies over the size limit are refused either way.
"""
from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS

from wasmgate._sourcefetch import FetchError, first_line, shown_url
from wasmgate.config import PluginConfig
from wasmgate.wasm.failures import PluginLoadError

_USER_AGENT = "wasmgate-plugin-fetch"


def https_client(reactor: Any, tls_policy: IPolicyForHTTPS, timeout: float) -> Any:
    """A treq C{HTTPClient} with a pool of its own for plugin fetches."""
    from treq.client import HTTPClient

    # Not persistent: fetches are rare, no idle connection is kept.
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, contextFactory=tls_policy, pool=pool, connectTimeout=timeout)
    return HTTPClient(agent)


def fetch_https(
    plugin: PluginConfig, get_client: Callable[[], Any], *, reactor: Any, timeout: float, max_bytes: int
) -> Deferred[bytes]:
    """
    The module at C{plugin.path}, read through the treq client that
    C{get_client()} gives; fails with L{FetchError} where the cached copy may do.
    """
    from treq import collect

    url = plugin.path
    shown = shown_url(url)
    try:
        client = get_client()
    except ValueError as e:  # an unreadable ca_file
        return defer.fail(PluginLoadError(plugin.name, f"{shown}: {e}"))
    d = client.get(url, headers={"User-Agent": [_USER_AGENT]}, timeout=timeout, reactor=reactor)

    def got(response: Any) -> Deferred[bytes]:
        final = getattr(getattr(response, "request", None), "absoluteURI", b"") or b""
        if final and not final.startswith(b"https://"):
            response.deliverBody(_Ignore())
            raise FetchError(f"{shown} redirected to a non-https URL")
        if not 200 <= response.code < 300:
            response.deliverBody(_Ignore())
            phrase = response.phrase.decode("latin-1", "replace")
            raise FetchError(f"GET {shown} answered HTTP {response.code} {phrase}".rstrip())
        parts: list[bytes] = []
        size = [0]

        def collector(data: bytes) -> None:
            size[0] += len(data)
            if size[0] > max_bytes:
                raise FetchError(f"{shown} is larger than {max_bytes} bytes")
            parts.append(data)

        return collect(response, collector).addCallback(lambda _: b"".join(parts))

    def failed(reason: Failure) -> Failure:
        if reason.check(FetchError):
            return reason
        raise FetchError(f"cannot fetch {shown}: {_network_error(reason, timeout)}")

    return d.addCallback(got).addErrback(failed)


def get_https_sync(
    plugin: PluginConfig, *, ca_file: Optional[str], timeout: float, max_bytes: int
) -> bytes:
    """L{fetch_https} without the reactor, through the standard library."""
    shown = shown_url(plugin.path)
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        raise PluginLoadError(plugin.name, f"{shown}: cannot use ca_file {ca_file}: {e}") from None
    request = urllib.request.Request(plugin.path, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            if not response.geturl().startswith("https://"):
                raise FetchError(f"{shown} redirected to a non-https URL")
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as e:
        raise FetchError(f"GET {shown} answered HTTP {e.code} {e.reason}".rstrip()) from None
    except urllib.error.URLError as e:
        raise FetchError(f"cannot fetch {shown}: {first_line(e.reason)}") from None
    except (OSError, ssl.SSLError) as e:  # timeouts, resets
        raise FetchError(f"cannot fetch {shown}: {first_line(e)}") from None
    if len(data) > max_bytes:
        raise FetchError(f"{shown} is larger than {max_bytes} bytes")
    return data


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
    return first_line(value)


class _Ignore(Protocol):
    """Drop a body we will not read (and its connection)."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()
