# -*- test-case-name: tests.test_sources -*-
"""
What the HTTPS and S3 fetchers share with L{wasmgate.sources}: the error
that means "use the cached copy if there is one", and how URLs and errors
are put in messages.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit


class FetchError(Exception):
    """The remote copy could not be had (network, HTTP status, S3 error)."""


def shown_url(url: str) -> str:
    """A URL for messages: without a query string (it may hold a signature)."""
    return urlunsplit(urlsplit(url)._replace(query="", fragment=""))


def first_line(e: Any) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
