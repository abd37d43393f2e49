# -*- test-case-name: tests.test_state_redis -*-
"""
Where a C{redis://} or C{rediss://} URL points (L{parse_redis_url}), with
errors that never repeat the password it may contain.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class RedisAddress:
    """Where a C{redis://[[user]:password@]host[:port][/db]} URL points."""

    host: str
    port: int
    db: int
    tls: bool = False
    username: Optional[str] = None
    password: Optional[str] = None

    @property
    def display(self) -> str:
        """The URL without credentials, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """
    Parse a Redis URL; C{ValueError} says what is wrong with it (without
    repeating a password it may contain).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"bad redis URL: {e}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"redis URL must start with redis:// or rediss://, not {parts.scheme or 'nothing'}")
    if not parts.hostname:
        raise ValueError("redis URL has no host")
    if parts.query or parts.fragment:
        raise ValueError("redis URL must not have a query or fragment")
    path = parts.path.strip("/")
    if not path:
        db = 0
    elif path.isdigit():
        db = int(path)
    else:
        raise ValueError(f"redis URL path must be a database number, not {path!r}")
    return RedisAddress(
        host=parts.hostname,
        port=port if port is not None else 6379,
        db=db,
        tls=parts.scheme == "rediss",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )
