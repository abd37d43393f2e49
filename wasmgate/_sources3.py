# -*- test-case-name: tests.test_sources,tests.test_gateway_sources -*-
"""
Plugin modules from C{s3://bucket/key} (parameters C{endpoint_url} and
C{version_id}), through boto3, which is imported only when one is used
(the C{s3} extra).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from wasmgate._sourcefetch import FetchError, first_line, shown_url
from wasmgate.config import PluginConfig
from wasmgate.wasm.failures import PluginLoadError

S3ClientFactory = Callable[[Optional[str]], Any]
"""C{factory(endpoint_url or None) -> a boto3 S3 client}."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str
    endpoint_url: Optional[str]
    version_id: Optional[str]


def s3_location(plugin: PluginConfig) -> S3Location:
    parts = urlsplit(plugin.path)
    key = unquote(parts.path.lstrip("/"))
    if not parts.netloc or not key:
        raise PluginLoadError(plugin.name, f"{shown_url(plugin.path)}: expected s3://BUCKET/KEY")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"endpoint_url", "version_id"})
    if unknown:
        raise PluginLoadError(
            plugin.name,
            f"{shown_url(plugin.path)}: unknown parameter(s) {', '.join(unknown)}"
            " (known: endpoint_url, version_id)",
        )
    return S3Location(
        bucket=parts.netloc,
        key=key,
        endpoint_url=query.get("endpoint_url", [None])[-1],
        version_id=query.get("version_id", [None])[-1],
    )


def default_s3_client(endpoint_url: Optional[str]) -> Any:
    import boto3
    from botocore.config import Config

    # A session per client: boto3's default session is not thread-safe.
    session = boto3.session.Session()
    config = Config(connect_timeout=10, read_timeout=30, retries={"max_attempts": 3})
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def get_s3(plugin: PluginConfig, client_factory: S3ClientFactory, max_bytes: int) -> bytes:
    """The object at C{plugin.path}; blocks, so call it in a thread."""
    where = s3_location(plugin)
    shown = shown_url(plugin.path)
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise PluginLoadError(
            plugin.name, f"{shown}: s3:// plugin sources need boto3 (the 's3' extra)"
        ) from None
    try:
        client = client_factory(where.endpoint_url)
        extra = {"VersionId": where.version_id} if where.version_id else {}
        answer = client.get_object(Bucket=where.bucket, Key=where.key, **extra)
        length = answer.get("ContentLength")
        if length is not None and length > max_bytes:
            answer["Body"].close()
            raise FetchError(f"{shown} is larger than {max_bytes} bytes")
        with answer["Body"] as body:
            return body.read()  # type: ignore[no-any-return]
    except ClientError as e:
        error = e.response.get("Error", {})
        code = error.get("Code", "?")
        message = error.get("Message") or ""
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = f"S3 error {code}" + (f" (HTTP {status})" if status else "")
        raise FetchError(f"cannot fetch {shown}: {detail}{': ' + message if message else ''}") from None
    except BotoCoreError as e:  # no credentials, endpoint unreachable, ...
        raise FetchError(f"cannot fetch {shown}: {first_line(e)}") from None
