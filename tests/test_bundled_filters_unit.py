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


def test_readable_content_types(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    """JSON (+json too), text and form bodies are read; an `identity` coding is no coding."""
    guest = redactor(redactor_module, host, headers=[], emails=True)
    for headers in (
        {"content-type": "application/problem+json"},
        {"content-type": "text/csv; charset=UTF-8"},
        {"content-type": "text/plain", "content-encoding": "identity"},
        {"content-type": ["text/plain", "text/plain"]},
    ):
        d = guest.request(request(headers=headers, body=b'"a@example.com"'))
        assert d is not None and base64.b64decode(d["body"]) == b'"[REDACTED_EMAIL]"', headers


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
    d = guest.request(request(headers={"content-type": "text/plain"}, body=body))
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


# ---------------------------------------- redactor: encoded bodies, fail closed


FORM = "application/x-www-form-urlencoded"


def redacted_body(guest: Guest, body: bytes, content_type: str, **kw: Any) -> bytes | None:
    """The body the redactor sends on, or None when it leaves it as it is."""
    d = guest.request(request(headers={"content-type": content_type}, body=body, **kw))
    if d is None or "body" not in d:
        return None
    assert d["block"] is False, d
    return base64.b64decode(d["body"])


def refusal(d: dict[str, Any] | None) -> tuple[int, str]:
    """(status, text) of a request-phase refusal."""
    assert d is not None and d["block"] is True, d
    assert d["headers"]["content-type"] == "text/plain; charset=utf-8"
    return d["status_code"], base64.b64decode(d["body"]).decode()


def test_form_fields_are_decoded_before_scanning(
    redactor_module: wasmtime.Module, host: FakeHost
) -> None:
    """
    Percent-encoded and '+'-spaced e-mails and cards are found; the fields
    masked are encoded again and every other pair stays byte-for-byte.
    """
    guest = redactor(redactor_module, host, headers=[], emails=True, card_numbers=True)
    body = (
        b"email=alice%40example.com&card=4111+1111+1111+1111&keep=a%2Bb%26c%3D+%C3%A9"
        b"&n=4111%201111%201111%201111&dashed=5500%2D0000%2D0000%2D0004&flag&=&x=1"
    )
    assert redacted_body(guest, body, FORM + "; charset=UTF-8") == (
        b"email=[REDACTED_EMAIL]&card=[REDACTED_CARD]&keep=a%2Bb%26c%3D+%C3%A9"
        b"&n=[REDACTED_CARD]&dashed=[REDACTED_CARD]&flag&=&x=1"
    )
    # Names are fields too.
    assert redacted_body(guest, b"bob%40example.com=1&a=b", FORM) == b"[REDACTED_EMAIL]=1&a=b"
    # Encoded, but nothing to mask: the body is not rewritten.
    assert redacted_body(guest, b"q=caf%C3%A9+au+lait&n=4111+1111", FORM) is None


def test_form_field_reencoded_where_it_must_be(
    redactor_module: wasmtime.Module, host: FakeHost
) -> None:
    """
    A changed field is decoded text re-encoded: the form's delimiters,
    spaces, controls and non-ASCII bytes are escaped (masks included), a
    stray '%' stays a literal '%', and a form parser reads back the masked
    text.
    """
    from urllib.parse import parse_qsl

    mask = "x&y=z %\u00e9;"
    guest = redactor(
        redactor_module, host, headers=[], emails=True,
        patterns=[{"pattern": r"tok_\w+", "mask": mask}],
    )
    body = b"note=%zz+mail+bob%40example.com%3B+ok%21+tok_abc%&other=%41"
    out = redacted_body(guest, body, FORM)
    assert out == (
        b"note=%25zz+mail+[REDACTED_EMAIL]%3B+ok!+x%26y%3Dz+%25%C3%A9%3B%25&other=%41"
    )
    assert parse_qsl(out.decode(), keep_blank_values=True) == [
        ("note", f"%zz mail [REDACTED_EMAIL]; ok! {mask}%"),
        ("other", "A"),
    ]


def test_json_escapes_are_decoded_before_scanning(
    redactor_module: wasmtime.Module, host: FakeHost
) -> None:
    r"""
    `\u0040`, `\"`, `\/`, `\u0020` between card groups and surrogate pairs
    hide nothing: strings (keys too) are scanned decoded, and a changed one
    is written back escaped, so the document stays valid JSON with the
    same text around each mask. Unchanged strings keep their bytes.
    """
    guest = redactor(redactor_module, host, headers=[], emails=True, card_numbers=True)
    body = (
        b'{"e": "alice\\u0040example.com", "c": "4111\\u00201111\\u00201111\\u00201111",'
        b' "q": "say \\"bob@example.com\\" \\/ ok", "emoji": "\\ud83d\\ude00 carol\\u0040example.com",'
        b' "lone": "\\ud800 dave\\u0040example.com", "ctl": "tab\\t\\u0000 eve\\u0040example.com\\n",'
        b' "\\u0066rank\\u0040example.com": 1, "keep": "caf\\u00e9 \\n \\/"}'
    )
    out = redact_json(guest, body)
    assert json.loads(out) == {
        "e": "[REDACTED_EMAIL]",
        "c": "[REDACTED_CARD]",
        "q": 'say "[REDACTED_EMAIL]" / ok',
        "emoji": "\U0001f600 [REDACTED_EMAIL]",
        "lone": "\ud800 [REDACTED_EMAIL]",
        "ctl": "tab\t\x00 [REDACTED_EMAIL]\n",
        "[REDACTED_EMAIL]": 1,
        "keep": "caf\u00e9 \n /",
    }
    assert b'"keep": "caf\\u00e9 \\n \\/"' in out
    assert b"example.com" not in out


def test_text_bodies_have_no_escapes(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    """A backslash in a text body is just a byte: it does not shield what follows it."""
    guest = redactor(redactor_module, host, headers=[], emails=True, card_numbers=True)
    out = redacted_body(guest, b"C:\\4111111111111111\\alice@example.com", "text/plain")
    assert out == b"C:\\[REDACTED_CARD]\\[REDACTED_EMAIL]"


def test_json_in_text_bodies_is_read_as_json(
    redactor_module: wasmtime.Module, host: FakeHost
) -> None:
    r"""
    Many servers parse JSON whatever the label: a text body that is valid
    JSON has its escapes decoded too; one that is not is scanned as text
    (not refused). Any */json, */x-json or +json type is JSON, strictly.
    """
    guest = redactor(redactor_module, host, headers=[], emails=True)
    body = b'{"to": "alice\\u0040example.com"}'
    assert redacted_body(guest, body, "text/plain") == b'{"to": "[REDACTED_EMAIL]"}'
    assert redacted_body(guest, b'{"to": alice@example.com}', "text/plain") == b'{"to": [REDACTED_EMAIL]}'
    assert redacted_body(guest, body, "text/json") == b'{"to": "[REDACTED_EMAIL]"}'
    d = guest.request(request(headers={"content-type": "text/x-json"}, body=b'{"to": alice@example.com}'))
    assert refusal(d) == (415, "request body refused: the body is not valid JSON\n")


def test_json_numbers_matched_by_patterns_become_strings(
    redactor_module: wasmtime.Module, host: FakeHost
) -> None:
    """A pattern matching a bare number masks it as a string: the body stays JSON."""
    guest = redactor(redactor_module, host, headers=[], patterns=[r"\d{9}"])
    out = redact_json(guest, b'{"ssn": 123456789, "long": -1234567890, "short": 12345}')
    assert json.loads(out) == {"ssn": "[REDACTED]", "long": "-[REDACTED]0", "short": 12345}


def test_json_lenient_but_unambiguous_is_read(
    redactor_module: wasmtime.Module, host: FakeHost
) -> None:
    """A UTF-8 BOM and Python's NaN/Infinity are not refused."""
    guest = redactor(redactor_module, host, headers=[], emails=True)
    body = b'\xef\xbb\xbf{"a": NaN, "b": [-Infinity, Infinity], "e": "x@example.com"}'
    assert redact_json(guest, body) == (
        b'\xef\xbb\xbf{"a": NaN, "b": [-Infinity, Infinity], "e": "[REDACTED_EMAIL]"}'
    )


INVALID_JSON = [
    b"{'e': 'alice@example.com'}",  # single quotes (JSON5)
    b'{"e": "alice\\x40example.com"}',  # an escape JSON does not have
    b'{"e": "alice\\u40example.com"}',  # a short \u escape
    b'{"a": 1,}',
    b'{"a" 1}',
    b'{"a": 4111 1111 1111 1111}',
    b'{"a": 04111111111111111}',
    b'{"a": +4111111111111111}',
    b'{"a": 1} {"e": "x@example.com"}',
    b'[1, 2',
    b'{"e": "unterminated',
    b'{"e": "raw\ncontrol"}',
    b'{e: "x@example.com"}',
]


@pytest.mark.parametrize("body", INVALID_JSON)
def test_invalid_json_refused(
    redactor_module: wasmtime.Module, host: FakeHost, body: bytes
) -> None:
    """
    A JSON body that does not parse could be read some other way at the
    other end (`\\x40` is an '@' to some readers): refused unless the route
    says `unredactable: pass`, which scans it as text as before.
    """
    guest = redactor(redactor_module, host, headers=[], emails=True, card_numbers=True)
    d = guest.request(request(headers={"content-type": "application/json"}, body=body))
    assert refusal(d) == (415, "request body refused: the body is not valid JSON\n")
    passing = redactor(
        redactor_module, host, headers=[], emails=True, card_numbers=True, unredactable="pass"
    )
    out = redacted_body(passing, body, "application/json")
    if b"alice@example.com" in body:
        assert out is not None and b"alice@example.com" not in out


UNREADABLE = [
    ({"content-type": "image/png"}, "this Content-Type is not accepted"),
    ({"content-type": "multipart/form-data; boundary=x"}, "this Content-Type is not accepted"),
    ({}, "a body needs a Content-Type"),
    ({"content-type": " ; charset=utf-8"}, "a body needs a Content-Type"),
    ({"content-type": ["text/plain", "image/png"]}, "this Content-Type is not accepted"),
    ({"content-type": "text/plain", "content-encoding": "gzip"}, "a Content-Encoding is not accepted"),
    ({"content-type": "text/plain", "content-encoding": "identity, br"}, "a Content-Encoding"),
    ({"content-type": "text/plain", "content-encoding": ["identity", "deflate"]}, "a Content-Encoding"),
    ({"content-type": "text/plain", "content-encoding": "x-custom"}, "a Content-Encoding"),
    ({"content-type": "application/json; charset=utf-16"}, "this charset is not accepted"),
    ({"content-type": 'text/plain; format=flowed; charset="UTF-32LE"'}, "this charset"),
]


@pytest.mark.parametrize("headers, why", UNREADABLE)
def test_unreadable_request_bodies_refused(
    redactor_module: wasmtime.Module, host: FakeHost, headers: dict[str, Any], why: str
) -> None:
    """
    A body the redactor cannot read gets a 415 saying what to change (and
    `Accept-Encoding: identity` for a coding); `unredactable: pass` lets it
    through untouched, headers still redacted.
    """
    guest = redactor(redactor_module, host, emails=True)
    body = "a@example.com".encode("utf-16") if "charset" in str(headers) else b"a@example.com"
    d = guest.request(request(headers=dict(headers), body=body))
    status, text = refusal(d)
    assert status == 415 and text.startswith("request body refused: " + why), text
    assert d is not None
    if "content-encoding" in headers:
        assert d["headers"]["accept-encoding"] == "identity"
    else:
        assert "accept-encoding" not in d["headers"]
    # The route may say pass, or the plugin config.
    with_auth = dict(headers, authorization="Bearer s")
    passing = redactor(redactor_module, host, emails=True, unredactable="pass")
    for g, rc in ((guest, {"unredactable": "pass"}), (passing, None)):
        d = g.request(request(headers=with_auth, body=body, route_config=rc))
        assert d == {"block": False, "headers": {"authorization": "REDACTED"}}, d


def test_refusal_only_where_body_redaction_is_on(
    redactor_module: wasmtime.Module, host: FakeHost
) -> None:
    """Header-only routes, and empty bodies, never get a 415."""
    headers = {"content-type": "text/plain", "content-encoding": "gzip"}
    header_only = redactor(redactor_module, host)
    assert header_only.request(request(headers=headers, body=b"\x1f\x8b...")) is None
    bodies = redactor(redactor_module, host, emails=True)
    assert bodies.request(request(headers=headers, body=b"")) is None
    assert bodies.request(request(headers={}, body=b"")) is None
    assert bodies.request(request(headers=headers, route_config={"emails": False}, body=b"x")) is None


def response_payload(headers: dict[str, Any], body: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "status_code": 200,
        "headers": headers,
        "body": base64.b64encode(body).decode(),
        "request": {"method": "GET", "path": "/x", "query": "", "client_ip": "192.0.2.1", "route": "api"},
        **extra,
    }


@pytest.mark.parametrize("headers, why", UNREADABLE[:2] + UNREADABLE[5:6] + UNREADABLE[9:10])
def test_unreadable_response_bodies_are_a_502(
    redactor_module: wasmtime.Module, host: FakeHost, headers: dict[str, Any], why: str
) -> None:
    """
    An upstream body the redactor cannot read never reaches the client: the
    response becomes an uncacheable 502 with a short text, its coding and
    validators dropped, and the plugin log says which route and why.
    `unredactable: pass` lets it through.
    """
    guest = redactor(redactor_module, host, headers=[], emails=True)
    upstream_headers = dict(headers, etag='"v1"', **{"cache-control": "max-age=600"})
    d = guest.response(response_payload(upstream_headers, b"\x1f\x8b a@example.com"))
    assert d is not None and d["status_code"] == 502
    assert base64.b64decode(d["body"]) == (
        b"bad gateway: the upstream's response could not be checked on this route\n"
    )
    assert d["headers"]["content-type"] == "text/plain; charset=utf-8"
    assert d["headers"]["cache-control"] == "no-store"
    assert d["headers"]["content-encoding"] is None and d["headers"]["etag"] is None
    warnings = [m for level, m in host.logs if level == 2]
    assert len(warnings) == 1 and "route 'api'" in warnings[0], warnings
    assert "upstream response refused (502)" in warnings[0]
    assert guest.response(
        response_payload(upstream_headers, b"\x1f\x8b a@example.com", route_config={"unredactable": "pass"})
    ) is None
    # Nothing to read, nothing to refuse.
    assert guest.response(response_payload(upstream_headers, b"")) is None


def test_json_response_escapes_decoded(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    guest = redactor(redactor_module, host, headers=[], emails=True)
    d = guest.response(
        response_payload({"content-type": "application/json"}, b'{"to": "bob\\u0040example.com"}')
    )
    assert d is not None and json.loads(base64.b64decode(d["body"])) == {"to": "[REDACTED_EMAIL]"}


def test_unredactable_option_checked(redactor_module: wasmtime.Module, host: FakeHost) -> None:
    """
    An unknown `unredactable` value is a config error; in a route override it
    fails that request (the gateway's failure policy) instead of guessing.
    """
    for value in ("maybe", True, "PASS"):
        bad = Guest(redactor_module, host)
        assert bad.init({"unredactable": value}) != 0
        assert "'unredactable' must be \"refuse\" or \"pass\"" in host.errors()[-1], host.errors()
    guest = redactor(redactor_module, host, emails=True)
    with pytest.raises(wasmtime.Trap):
        guest.request(request(route_config={"unredactable": "maybe"}))
    assert "'unredactable' must be" in host.errors()[-1], host.errors()


def test_large_and_deep_json_within_the_default_caps() -> None:
    """
    A body of almost the default max_body_bytes (1 MiB) full of matches, and
    one nested 300 000 deep, are redacted under the default 16 MiB memory
    cap, call after call (no recursion; output sized once, not by doubling;
    a big body's garbage collected before the next call makes more).
    """
    from wasmgate.testing import FilterHarness

    rows = [{"e": f"x{i}@example.com", "n": 4111111111111111, "s": "\\u0040"} for i in range(15_000)]
    wide = json.dumps(rows).encode()
    deep = b"[" * 300_000 + b'"a@example.com"' + b"]" * 300_000
    assert 1_000_000 < len(wide) < 1 << 20
    with FilterHarness(
        PLUGINS / "pii_redactor.wasm", include_body=True, timeout_ms=5000,
        config={"emails": True, "card_numbers": True},
    ) as h:
        for _ in range(3):
            for body, masked in ((wide, b'"e": "[REDACTED_EMAIL]", "n": "[REDACTED_CARD]"'),
                                 (deep, b'["[REDACTED_EMAIL]"]')):
                out = h.request(method="POST", headers={"content-type": "application/json"}, body=body)
                assert masked in out.request.body and b"example.com" not in out.request.body
