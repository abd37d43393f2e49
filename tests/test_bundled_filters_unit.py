# -*- test-case-name: tests.test_bundled_filters_unit -*-
"""
The bundled filters (plugins/*.wasm) run on plain wasmtime-py with a small
in-test host: the wasmgate JSON ABI as the gateway will drive it, but with an
in-memory counter store and a clock the tests move, so windows can slide
without sleeping.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import wasmtime

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"

ENGINE = wasmtime.Engine()

# A multiple of every window used below, so each test starts at a window edge.
START_MS = 1_700_000_040_000


class FakeHost:
    """
    The host side of module "wasmgate": clock, log and shared counters.

    Counters follow the host contract: atomic increments, TTL set when the key
    is created, expired keys read as absent. Several L{Guest}s may share one
    host, like pool threads sharing the gateway's store.
    """

    def __init__(self, *, now_ms: int = START_MS) -> None:
        self.now_ms = now_ms
        self.counters: dict[str, tuple[int, int]] = {}
        self.logs: list[tuple[int, str]] = []

    def advance(self, ms: int) -> None:
        self.now_ms += ms

    def _live(self, key: str) -> tuple[int, int] | None:
        entry = self.counters.get(key)
        if entry is not None and entry[1] <= self.now_ms:
            del self.counters[key]
            return None
        return entry

    def counter_incr(self, key: str, delta: int, ttl_ms: int) -> int:
        entry = self._live(key)
        if entry is None:
            entry = (0, self.now_ms + ttl_ms)
        value = entry[0] + delta
        self.counters[key] = (value, entry[1])
        return value

    def counter_get(self, key: str) -> int:
        entry = self._live(key)
        return 0 if entry is None else entry[0]

    def errors(self) -> list[str]:
        return [msg for level, msg in self.logs if level == 3]


class Guest:
    """One instance of a filter module, called through the JSON ABI."""

    def __init__(self, module: wasmtime.Module, host: FakeHost) -> None:
        self._store = wasmtime.Store(ENGINE)
        linker = wasmtime.Linker(ENGINE)
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()

        def read(caller: wasmtime.Caller, ptr: int, length: int) -> bytes:
            memory = caller["memory"]
            assert isinstance(memory, wasmtime.Memory)
            return memory.read(caller, ptr, ptr + length)

        def now_ms() -> int:
            return host.now_ms

        def log(caller: wasmtime.Caller, level: int, ptr: int, length: int) -> None:
            host.logs.append((level, read(caller, ptr, length).decode("utf-8")))

        def counter_incr(
            caller: wasmtime.Caller, ptr: int, length: int, delta: int, ttl: int
        ) -> int:
            return host.counter_incr(read(caller, ptr, length).decode("utf-8"), delta, ttl)

        def counter_get(caller: wasmtime.Caller, ptr: int, length: int) -> int:
            return host.counter_get(read(caller, ptr, length).decode("utf-8"))

        define: Callable[..., None] = linker.define_func
        define("wasmgate", "now_ms", wasmtime.FuncType([], [i64]), now_ms)
        define("wasmgate", "log", wasmtime.FuncType([i32, i32, i32], []), log, access_caller=True)
        define(
            "wasmgate",
            "counter_incr",
            wasmtime.FuncType([i32, i32, i64, i64], [i64]),
            counter_incr,
            access_caller=True,
        )
        define(
            "wasmgate",
            "counter_get",
            wasmtime.FuncType([i32, i32], [i64]),
            counter_get,
            access_caller=True,
        )
        self._instance = linker.instantiate(self._store, module)
        self._exports = self._instance.exports(self._store)

    def _call(self, name: str, data: bytes) -> int:
        ptr = self._exports["wasmgate_alloc"](self._store, len(data))
        memory = self._exports["memory"]
        memory.write(self._store, data, ptr)
        return self._exports[name](self._store, ptr, len(data))

    def init(self, config: Any) -> int:
        return self._call("wasmgate_init", json.dumps(config).encode())

    def _decision(self, name: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        packed = self._call(name, json.dumps(payload).encode()) & 0xFFFF_FFFF_FFFF_FFFF
        if packed == 0:
            return None
        ptr, length = packed >> 32, packed & 0xFFFF_FFFF
        out = self._exports["memory"].read(self._store, ptr, ptr + length)
        return json.loads(out)

    def request(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        return self._decision("handle_request", payload)

    def response(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        return self._decision("handle_response", payload)


@pytest.fixture(scope="module")
def rate_limiter_module() -> wasmtime.Module:
    return wasmtime.Module.from_file(ENGINE, str(PLUGINS / "rate_limiter.wasm"))


@pytest.fixture(scope="module")
def redactor_module() -> wasmtime.Module:
    return wasmtime.Module.from_file(ENGINE, str(PLUGINS / "pii_redactor.wasm"))


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


def request(
    *,
    client_ip: str = "192.0.2.1",
    route: str = "api",
    headers: dict[str, Any] | None = None,
    body: bytes | None = None,
    route_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "method": "POST" if body is not None else "GET",
        "path": "/v1/things",
        "query": "a=1",
        "headers": headers or {"host": "api.example.com", "user-agent": "test"},
        "client_ip": client_ip,
        "route": route,
    }
    if body is not None:
        payload["body"] = base64.b64encode(body).decode()
    if route_config is not None:
        payload["route_config"] = route_config
    return payload


# ------------------------------------------------------------- rate limiter


def limiter(module: wasmtime.Module, host: FakeHost, **config: Any) -> Guest:
    guest = Guest(module, host)
    assert guest.init(config) == 0, host.logs
    return guest


def remaining(decision: dict[str, Any]) -> int:
    """r= of the RateLimit header, from wherever the decision put it."""
    headers = decision["headers"] if decision.get("block") else decision["response_headers"]
    fields = dict(part.split("=") for part in headers["ratelimit"].split(";")[1:])
    return int(fields["r"])


def test_limit_counts_down_then_blocks(rate_limiter_module: wasmtime.Module, host: FakeHost) -> None:
    """
    Limit 5 per 2 s: five requests pass with remaining 4..0 in the response
    headers, the sixth gets 429 with Retry-After and the RateLimit headers.
    """
    guest = limiter(rate_limiter_module, host, limit=5, window="2s", key="client_ip")
    seen = []
    for _ in range(5):
        d = guest.request(request())
        assert d is not None and d["block"] is False
        assert d["response_headers"]["ratelimit-policy"] == '"default";q=5;w=2'
        seen.append(remaining(d))
    assert seen == [4, 3, 2, 1, 0]

    d = guest.request(request())
    assert d is not None and d["block"] is True
    assert d["status_code"] == 429
    retry = int(d["headers"]["retry-after"])
    assert retry >= 1
    assert d["headers"]["ratelimit-policy"] == '"default";q=5;w=2'
    assert d["headers"]["ratelimit"] == f'"default";r=0;t={retry}'
    assert d["headers"]["content-type"].startswith("text/plain")
    assert b"Too Many Requests" in base64.b64decode(d["body"])
    assert host.errors() == []


def test_window_slides(rate_limiter_module: wasmtime.Module, host: FakeHost) -> None:
    """
    Blocked until Retry-After has passed, then allowed again; the previous
    window still weighs on the count while it slides out.
    """
    guest = limiter(rate_limiter_module, host, limit=5, window="2s")
    for _ in range(5):
        guest.request(request())
    blocked = guest.request(request())
    assert blocked is not None and blocked["block"]
    retry_ms = int(blocked["headers"]["retry-after"]) * 1000

    # A new window has started, but the full previous one still counts.
    host.advance(2000)
    assert retry_ms > 2000
    d = guest.request(request())
    assert d is not None and d["block"], "the previous window's 5 requests should still count"

    host.advance(retry_ms - 2000)
    d = guest.request(request())
    assert d is not None and d["block"] is False


def test_denied_requests_are_not_counted(
    rate_limiter_module: wasmtime.Module, host: FakeHost
) -> None:
    """A client hammering while blocked recovers as soon as one that waited."""
    guest = limiter(rate_limiter_module, host, limit=5, window="2s")
    for _ in range(5):
        guest.request(request())
    first = guest.request(request())
    assert first is not None and first["block"]
    for _ in range(20):
        d = guest.request(request())
        assert d is not None and d["block"]
    host.advance(int(first["headers"]["retry-after"]) * 1000)
    d = guest.request(request())
    assert d is not None and d["block"] is False


def test_counter_keys_and_ttl(rate_limiter_module: wasmtime.Module, host: FakeHost) -> None:
    """Keys are rl:<route>:<key>:<window index>, created with TTL 2 * window."""
    guest = limiter(rate_limiter_module, host, limit=5, window="2s")
    guest.request(request(client_ip="198.51.100.7", route="api"))
    index = START_MS // 2000
    assert host.counters == {f"rl:api:198.51.100.7:{index}": (1, START_MS + 4000)}


def test_instances_share_the_host_counters(
    rate_limiter_module: wasmtime.Module, host: FakeHost
) -> None:
    """The limit holds across instances (pool threads) sharing the host's store."""
    guests = [limiter(rate_limiter_module, host, limit=5, window="2s") for _ in range(3)]
    decisions = [guests[i % 3].request(request()) for i in range(7)]
    assert [d is not None and d["block"] for d in decisions] == [False] * 5 + [True] * 2


def test_keys_are_independent(rate_limiter_module: wasmtime.Module, host: FakeHost) -> None:
    guest = limiter(rate_limiter_module, host, limit=2, window="10s")
    for _ in range(2):
        guest.request(request(client_ip="192.0.2.1"))
    a = guest.request(request(client_ip="192.0.2.1"))
    b = guest.request(request(client_ip="192.0.2.2"))
    assert a is not None and a["block"]
    assert b is not None and b["block"] is False and remaining(b) == 1


def test_header_key(rate_limiter_module: wasmtime.Module, host: FakeHost) -> None:
    """
    key: header:X-API-Key limits per header value whatever the IP; requests
    without the header are limited per client IP, apart from header users.
    """
    guest = limiter(rate_limiter_module, host, limit=2, window="10s", key="header:X-API-Key")

    def call(api_key: str | None, ip: str) -> bool:
        headers: dict[str, Any] = {"host": "api.example.com"}
        if api_key is not None:
            headers["x-api-key"] = api_key
        d = guest.request(request(client_ip=ip, headers=headers))
        assert d is not None
        return bool(d["block"])

    # One key, two IPs: one bucket.
    assert [call("k1", "192.0.2.1"), call("k1", "192.0.2.2"), call("k1", "192.0.2.3")] == [
        False,
        False,
        True,
    ]
    # Another key from the same IP is unaffected.
    assert call("k2", "192.0.2.1") is False
    # No header: bucketed by IP, unaffected by k1 being exhausted.
    assert [call(None, "192.0.2.9"), call(None, "192.0.2.9"), call(None, "192.0.2.9")] == [
        False,
        False,
        True,
    ]
    assert call(None, "192.0.2.10") is False
    # A header value equal to an IP does not share that IP's bucket.
    assert call("192.0.2.9", "192.0.2.50") is False


def test_route_config_overrides(rate_limiter_module: wasmtime.Module, host: FakeHost) -> None:
    """A route's route_config replaces the given keys, with its own buckets."""
    guest = limiter(rate_limiter_module, host, limit=5, window="2s")
    strict = {"limit": 2, "window": "1m"}
    d1 = guest.request(request(route="login", route_config=strict))
    d2 = guest.request(request(route="login", route_config=strict))
    d3 = guest.request(request(route="login", route_config=strict))
    assert d1 is not None and d1["response_headers"]["ratelimit-policy"] == '"default";q=2;w=60'
    assert [remaining(d1), remaining(d2)] == [1, 0]
    assert d3 is not None and d3["block"] and d3["status_code"] == 429
    # The same client on the base config is untouched.
    d = guest.request(request(route="api"))
    assert d is not None and d["block"] is False and remaining(d) == 4


def test_bad_route_config_fails_the_request(
    rate_limiter_module: wasmtime.Module, host: FakeHost
) -> None:
    """A broken override traps (the gateway's failure policy applies) and says why."""
    guest = limiter(rate_limiter_module, host, limit=5, window="2s")
    with pytest.raises(wasmtime.Trap):
        guest.request(request(route="login", route_config={"limit": -1}))
    assert any("route_config" in e and "login" in e and "limit" in e for e in host.errors())


@pytest.mark.parametrize(
    "config, reason",
    [
        ({}, "'limit' is required"),
        ({"limit": 5}, "'window' is required"),
        ({"limit": 0, "window": "1s"}, "positive integer"),
        ({"limit": 2.5, "window": "1s"}, "positive integer"),
        ({"limit": "5", "window": "1s"}, "positive integer"),
        ({"limit": 5, "window": "soon"}, "'window'"),
        ({"limit": 5, "window": "0s"}, "'window'"),
        ({"limit": 5, "window": "1s", "key": "cookie"}, "'key'"),
        ({"limit": 5, "window": "1s", "key": "header:"}, "'key'"),
        ({"limit": 5, "window": "1s", "limt": 3}, "unknown key 'limt'"),
        ([1, 2], "must be an object"),
    ],
)
def test_bad_config_refused(
    rate_limiter_module: wasmtime.Module, host: FakeHost, config: Any, reason: str
) -> None:
    guest = Guest(rate_limiter_module, host)
    assert guest.init(config) != 0
    assert len(host.errors()) == 1
    assert reason in host.errors()[0]


@pytest.mark.parametrize(
    "window, seconds",
    [("500ms", 1), ("2s", 2), ("1.5s", 2), ("1m", 60), (30, 30), ("1h", 3600)],
)
def test_window_durations(
    rate_limiter_module: wasmtime.Module, host: FakeHost, window: Any, seconds: int
) -> None:
    guest = limiter(rate_limiter_module, host, limit=3, window=window)
    d = guest.request(request())
    assert d is not None
    assert d["response_headers"]["ratelimit-policy"] == f'"default";q=3;w={seconds}'


# --------------------------------------------------------------- redactor


def luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()][::-1]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(digits))
    return total % 10 == 0


def redactor(module: wasmtime.Module, host: FakeHost, **config: Any) -> Guest:
    guest = Guest(module, host)
    assert guest.init(config) == 0, host.logs
    return guest


def test_default_headers_redacted(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    """authorization, cookie, x-api-key become REDACTED; nothing else is touched."""
    guest = redactor(redactor_module, host)
    d = guest.request(
        request(
            headers={
                "host": "api.example.com",
                "authorization": "Bearer secret",
                "cookie": ["a=1", "b=2"],
                "x-api-key": "k",
                "accept": "application/json",
            }
        )
    )
    assert d is not None and d.get("block") is False
    assert d["headers"] == {
        "authorization": "REDACTED",
        "cookie": "REDACTED",
        "x-api-key": "REDACTED",
    }
    assert "body" not in d
    # Nothing to redact: continue unchanged.
    assert guest.request(request(headers={"host": "api.example.com"})) is None


def test_configured_headers(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    guest = redactor(redactor_module, host, headers=["X-Secret"])
    d = guest.request(
        request(headers={"x-secret": "s", "authorization": "Bearer keep-this"})
    )
    assert d is not None and d["headers"] == {"x-secret": "REDACTED"}


CARD_16 = "4111 1111 1111 1111"
CARD_DASHED = "5500-0000-0000-0004"
CARD_13 = "4222222222222"
NOT_A_CARD = "1234567812345678"


def test_json_body_emails_and_cards(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    """Emails and Luhn-valid cards are masked; a Luhn-failing number stays."""
    assert luhn_ok(CARD_16) and luhn_ok(CARD_DASHED) and luhn_ok(CARD_13)
    assert not luhn_ok(NOT_A_CARD)
    doc = {
        "email": "jane.doe+tag@mail.example.co.uk",
        "note": "write to bob@example.com\nor call",
        # json.dumps writes \u00e9 here: the mask must not swallow the escape.
        "greeting": "\u00e9jane@example.com",
        "cards": [CARD_16, CARD_DASHED, CARD_13],
        "order": NOT_A_CARD,
        "amount": 12.5,
        "name": "Zoë",
    }
    body = json.dumps(doc).encode()
    guest = redactor(redactor_module, host, headers=[], emails=True, card_numbers=True)
    d = guest.request(request(headers={"content-type": "application/json"}, body=body))
    assert d is not None and d["block"] is False
    out = json.loads(base64.b64decode(d["body"]))
    assert out == {
        "email": "[REDACTED_EMAIL]",
        "note": "write to [REDACTED_EMAIL]\nor call",
        "greeting": "\u00e9[REDACTED_EMAIL]",
        "cards": ["[REDACTED_CARD]"] * 3,
        "order": NOT_A_CARD,
        "amount": 12.5,
        "name": "Zoë",
    }
    assert "headers" not in d


def test_card_run_with_trailing_number(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    """The card inside a longer digit run is found; the digits around it stay."""
    guest = redactor(redactor_module, host, headers=[], card_numbers=True)
    body = f"card {CARD_16} 2024, pi 3.14159265358979323846, id 41111111111111111111".encode()
    d = guest.request(request(headers={"content-type": "text/plain"}, body=body))
    assert d is not None
    assert base64.b64decode(d["body"]) == (
        b"card [REDACTED_CARD] 2024, pi 3.14159265358979323846, id 41111111111111111111"
    )


def test_text_body_keeps_other_bytes(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    """Bytes that are not valid UTF-8 pass through unchanged around a mask."""
    guest = redactor(redactor_module, host, headers=[], emails=True)
    body = b"\xff\xfe raw a@b.io \x80"
    d = guest.request(request(headers={"content-type": "text/plain; charset=latin-1"}, body=body))
    assert d is not None
    assert base64.b64decode(d["body"]) == b"\xff\xfe raw [REDACTED_EMAIL] \x80"


def test_bodies_untouched_when_disabled(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    body = json.dumps({"email": "a@example.com", "card": CARD_16}).encode()
    guest = redactor(redactor_module, host)
    d = guest.request(
        request(headers={"content-type": "application/json", "authorization": "x"}, body=body)
    )
    assert d is not None and "body" not in d
    assert guest.request(request(headers={"content-type": "application/json"}, body=body)) is None
    resp = guest.response(
        {"status_code": 200, "headers": {"content-type": "application/json"},
         "body": base64.b64encode(body).decode(), "request": {"route": "api"}}
    )
    assert resp is None


def test_other_content_types_untouched(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    """Only JSON/text/form bodies are rewritten; compressed ones never."""
    guest = redactor(redactor_module, host, headers=[], emails=True)
    body = b"a@example.com"
    assert guest.request(request(headers={"content-type": "image/png"}, body=body)) is None
    assert guest.request(request(headers={}, body=body)) is None
    assert (
        guest.request(
            request(headers={"content-type": "text/plain", "content-encoding": "gzip"}, body=body)
        )
        is None
    )
    d = guest.request(request(headers={"content-type": "application/problem+json"}, body=body))
    assert d is not None and base64.b64decode(d["body"]) == b"[REDACTED_EMAIL]"


def test_response_set_cookie(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    guest = redactor(redactor_module, host, redact_response_headers=["Set-Cookie"])
    d = guest.response(
        {
            "status_code": 200,
            "headers": {"set-cookie": ["sid=1; HttpOnly", "t=2"], "content-type": "text/html"},
            "request": {"method": "GET", "path": "/", "query": "", "client_ip": "192.0.2.1", "route": "api"},
        }
    )
    assert d == {"headers": {"set-cookie": "REDACTED"}}
    # Without the header there is nothing to do.
    assert guest.response({"status_code": 204, "headers": {}, "request": {}}) is None


def test_response_body(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    guest = redactor(redactor_module, host, emails=True, card_numbers=True)
    body = json.dumps({"user": {"email": "x@example.org", "card": CARD_13}}).encode()
    d = guest.response(
        {
            "status_code": 200,
            "headers": {"content-type": "application/json; charset=utf-8"},
            "body": base64.b64encode(body).decode(),
            "request": {"route": "api"},
        }
    )
    assert d is not None
    assert json.loads(base64.b64decode(d["body"])) == {
        "user": {"email": "[REDACTED_EMAIL]", "card": "[REDACTED_CARD]"}
    }


def test_patterns(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    guest = redactor(
        redactor_module,
        host,
        headers=[],
        patterns=[
            {"pattern": r"\d{3}-\d{2}-\d{4}", "mask": "[REDACTED_SSN]"},
            r"tok_[A-Za-z0-9]+",
            r"secret\.value",
        ],
    )
    body = json.dumps(
        {"ssn": "123-45-6789", "t": "id tok_AbC123 end", "s": "secret.value / secretXvalue", "n": "12-34-5678"}
    ).encode()
    d = guest.request(request(headers={"content-type": "application/json"}, body=body))
    assert d is not None
    assert json.loads(base64.b64decode(d["body"])) == {
        "ssn": "[REDACTED_SSN]",
        "t": "id [REDACTED] end",
        "s": "[REDACTED] / secretXvalue",
        "n": "12-34-5678",
    }


def test_route_config_override(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    """A route may switch body redaction on for itself only."""
    guest = redactor(redactor_module, host, headers=[])
    body = b"mail me: a@example.com"
    headers = {"content-type": "text/plain"}
    assert guest.request(request(headers=headers, body=body)) is None
    d = guest.request(request(headers=headers, body=body, route_config={"emails": True}))
    assert d is not None and base64.b64decode(d["body"]) == b"mail me: [REDACTED_EMAIL]"


@pytest.mark.parametrize(
    "config, reason",
    [
        ({"headers": "authorization"}, "'headers' must be a list"),
        ({"emails": "yes"}, "'emails' must be true or false"),
        ({"patterns": ["(a|b)"]}, "not supported"),
        ({"patterns": ["a*"]}, "empty string"),
        ({"patterns": ["[z-a]"]}, "range out of order"),
        ({"patterns": ["[abc"]}, "unterminated ["),
        ({"patterns": ["x{3,1}"]}, "m < n"),
        ({"patterns": [{"pattern": "x", "colour": "red"}]}, "unknown key 'colour'"),
        ({"mask_emails": True}, "unknown key 'mask_emails'"),
    ],
)
def test_redactor_bad_config_refused(
    redactor_module: wasmtime.Module, host: FakeHost, config: Any, reason: str
) -> None:
    guest = Guest(redactor_module, host)
    assert guest.init(config) != 0
    assert len(host.errors()) == 1 and reason in host.errors()[0], host.errors()


def redact_json(guest: Guest, body: bytes, content_type: str = "application/json") -> bytes:
    d = guest.request(request(headers={"content-type": content_type}, body=body))
    assert d is not None, "nothing was masked"
    return base64.b64decode(d["body"])


def test_json_number_card_becomes_string(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    """
    A card that is a bare JSON number (sign included) becomes the string
    "[REDACTED_CARD]", in objects and nested arrays, compact or not; a card
    inside a string is replaced in place. The result is valid JSON.
    """
    guest = redactor(redactor_module, host, headers=[], emails=True, card_numbers=True)
    body = (
        b'{"card": 4111111111111111, "n": [[5500000000000004,-4222222222222],'
        b'{"deep": [378282246310005]}], "s": "pay 4111-1111-1111-1111 now",'
        b'"4111111111111111": "key", "email": "a@example.com", "ok": 1}'
    )
    out = redact_json(guest, body)
    assert json.loads(out) == {
        "card": "[REDACTED_CARD]",
        "n": [["[REDACTED_CARD]", "[REDACTED_CARD]"], {"deep": ["[REDACTED_CARD]"]}],
        "s": "pay [REDACTED_CARD] now",
        "[REDACTED_CARD]": "key",
        "email": "[REDACTED_EMAIL]",
        "ok": 1,
    }
    # +json media types are JSON too; a top-level number is a document.
    assert json.loads(redact_json(guest, b"4111111111111111", "application/vnd.api+json")) == (
        "[REDACTED_CARD]"
    )


def test_json_numbers_that_are_not_cards(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    """Fractions, exponents and numbers with more than 19 digits are left alone."""
    guest = redactor(redactor_module, host, headers=[], card_numbers=True)
    body = (
        b'{"a": 4111111111111111.5, "b": 4111111111111111e2, "c": 0.4111111111111111,'
        b' "d": 1e4111111111111111, "e": 41111111111111111111}'
    )
    assert guest.request(request(headers={"content-type": "application/json"}, body=body)) is None


@pytest.mark.parametrize(
    "number",
    [
        "0000000000000000",  # all zeros pass Luhn
        "4444444444444448",  # not all one digit: still a card
        "1234567812345670",  # Luhn-valid, first digit 1
        "7992739871300",  # Luhn-valid, first digit 7
        "8000000000000003",
        "9999999999999995",
        "1700000040000",  # a millisecond timestamp that passes Luhn
    ],
)
def test_card_prefix_required(
    redactor_module: wasmtime.Module, host: FakeHost, number: str
) -> None:
    """Luhn-valid numbers are masked only with a card network's first digit (2-6)."""
    assert luhn_ok(number), number
    guest = redactor(redactor_module, host, headers=[], card_numbers=True)
    masked = number[0] in "23456"
    for content_type, body in [
        ("application/json", json.dumps({"s": number, "n": int(number)}).encode()),
        ("text/plain", f"number {number} here".encode()),
    ]:
        d = guest.request(request(headers={"content-type": content_type}, body=body))
        if masked:
            assert d is not None and number.encode() not in base64.b64decode(d["body"])
        else:
            assert d is None, (content_type, base64.b64decode(d["body"]))


@pytest.mark.parametrize("digit", "0123456789")
def test_repeated_digit_is_not_a_card(
    redactor_module: wasmtime.Module, host: FakeHost, digit: str
) -> None:
    """A run of one digit is never a card, even where it passes Luhn (2, 4 * 17; 6 * 13)."""
    guest = redactor(redactor_module, host, headers=[], card_numbers=True)
    for length in (13, 16, 17, 19):
        run = digit * length
        body = f"{run} {'-'.join(run[k:k + 4] for k in range(0, length, 4))}".encode()
        assert guest.request(request(headers={"content-type": "text/plain"}, body=body)) is None


def test_text_body_cards_stay_bare(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    """Outside JSON a card is replaced in place, with no quotes added."""
    guest = redactor(redactor_module, host, headers=[], card_numbers=True)
    body = b'{"card": 4111111111111111} -5500000000000004'
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        d = guest.request(request(headers={"content-type": content_type}, body=body))
        assert d is not None
        assert base64.b64decode(d["body"]) == b'{"card": [REDACTED_CARD]} -[REDACTED_CARD]'


def test_pattern_mask_escaped_in_json(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    """A configured mask with a quote, backslash or newline stays inside its JSON string."""
    mask = 'x"y\\z\n'
    guest = redactor(
        redactor_module, host, headers=[], patterns=[{"pattern": r"tok_\w+", "mask": mask}]
    )
    body = json.dumps({"t": "id tok_abc end"}).encode()
    assert json.loads(redact_json(guest, body)) == {"t": f"id {mask} end"}
    # Text bodies get the mask as configured.
    d = guest.request(request(headers={"content-type": "text/plain"}, body=b"id tok_abc end"))
    assert d is not None and base64.b64decode(d["body"]) == b"id " + mask.encode() + b" end"
