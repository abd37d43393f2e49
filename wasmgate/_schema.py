# -*- test-case-name: tests.test_config -*-
"""
A small reader for YAML mappings that collects every problem it meets.

The config loader walks the document with one L{Reader}; each accessor
returns a usable default after recording a problem, so one pass reports all
mistakes at once instead of stopping at the first.
"""
from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Any, Callable, Optional, TypeVar

T = TypeVar("T")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

_MISSING = object()


def parse_duration(value: Any) -> float:
    """
    Seconds from C{500ms}, C{10s}, C{1m}, C{2h} or a bare number of seconds.

    @raise ValueError: with a message fit to show the user.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 500ms, 10s or 1m, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(
                f"expected a duration like 500ms, 10s or 1m, got {value!r}"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(value), type(value).__name__)


class Reader:
    """
    Typed access to a parsed YAML document, recording problems as
    C{"key.path: what is wrong"} strings.
    """

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}" if path else message)

    def mapping(
        self, value: Any, path: str, allowed: tuple[str, ...]
    ) -> dict[str, Any]:
        """
        C{value} as a mapping whose keys must be among C{allowed}; unknown
        keys are problems with a did-you-mean.
        """
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, f"expected a mapping, got {_type_name(value)}")
            return {}
        for key in value:
            if not isinstance(key, str) or key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                known = ", ".join(allowed)
                self.problem(
                    _join(path, str(key)),
                    f"unknown key{suggestion}; known keys: {known}",
                )
        return value

    def get(
        self,
        data: dict[str, Any],
        path: str,
        key: str,
        convert: Callable[[Any], T],
        default: Any = _MISSING,
    ) -> T:
        """
        C{convert(data[key])}; a missing key without a default, or a
        C{ValueError}/C{TypeError} from C{convert}, is a problem.
        """
        where = _join(path, key)
        if key not in data or data[key] is None:
            if default is _MISSING:
                self.problem(where, "required but missing")
                return None  # type: ignore[return-value]
            return default  # type: ignore[no-any-return]
        try:
            return convert(data[key])
        except (ValueError, TypeError) as e:
            self.problem(where, str(e))
            return default if default is not _MISSING else None  # type: ignore


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# Converters: each takes the raw YAML value and returns the typed one or
# raises ValueError with a message for the user.


def string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {_type_name(value)}")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_type_name(value)}")
    return value


def integer(
    minimum: Optional[int] = None, maximum: Optional[int] = None
) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_type_name(value)}")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}, got {value}")
        return value

    return convert


def duration(minimum: float = 0.0) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds < minimum:
            raise ValueError(f"must be at least {minimum:g}s, got {value!r}")
        return seconds

    return convert


def choice(*options: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in options:
            hint = difflib.get_close_matches(str(value), options, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(
                f"must be one of {', '.join(options)}, got {value!r}{suggestion}"
            )
        return str(value)

    return convert


def string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(
        isinstance(item, str) and item for item in value
    ):
        raise ValueError(f"expected a list of strings, got {_type_name(value)}")
    return tuple(value)


def network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise ValueError(
            f"expected an IP address or CIDR like 10.0.0.0/8, got {value!r}"
        ) from None


def any_mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping, got {_type_name(value)}")
    return value


def did_you_mean(name: str, known: list[str]) -> str:
    hint = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""
