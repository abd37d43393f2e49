"""
The observability examples: the Prometheus alert rules
(examples/prometheus/alerts.yml) pass promtool's checks and their unit
tests, and every metric the Grafana dashboard (examples/grafana/wasmgate.json)
and the alerts query exists, with samples and the labels they match on, in a
live scrape of the admin /metrics of a real gateway that served requests
through filters.

promtool comes with Debian's prometheus package (.ci/run installs it): a
machine without it fails here rather than skipping.
"""
from __future__ import annotations

import difflib
import http.client
import json
import re
import shutil
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
import wasmtime
import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import threads

from tests import wasm_guests as guests
from tests.certs import issue, make_ca, write_pair

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "examples" / "grafana" / "wasmgate.json"
ALERTS = ROOT / "examples" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "examples" / "prometheus" / "alerts_test.yml"

# Labels Prometheus adds to every series it scrapes: not on /metrics.
TARGET_LABELS = frozenset({"job", "instance"})


def _promtool(*args: str, cwd: Path = ROOT) -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is not on PATH: install Debian's prometheus package (promtool), "
            "e.g. apt-get install -y --no-install-recommends prometheus (.ci/run does)"
        )
    done = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


# PromQL metric names ------------------------------------------------------

_STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
_MATCHERS = r"\{(?:[^{}\"'`]|" + _STRING + r")*\}"
_TOKEN = re.compile(
    r"(?P<string>" + _STRING + r")"
    r"|(?P<range>\[[^\]]*\])"
    r"|(?P<grouping>\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\))"
    r"|(?P<name>(?<![\w:.$])[a-zA-Z_:][\w:]*)\s*(?P<matchers>" + _MATCHERS + r")?"
    # a call, or an aggregation with its grouping first: sum by (x) (...)
    r"(?P<call>\s*(?:\b(?:by|without)\s*\([^)]*\)\s*)?\()?"
    r"|(?P<bare>" + _MATCHERS + r")"
)
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*(?:" + _STRING + r")")
_KEYWORDS = frozenset(
    "and or unless by without on ignoring group_left group_right bool offset inf nan start end".split()
)


def selectors(expr: str) -> list[tuple[str, frozenset[str]]]:
    """
    The metric names a PromQL expression selects, each with the label names
    its matchers use: functions, aggregations, keywords, grouping labels,
    strings (label_replace's arguments), durations and numbers are not names.
    Grafana variables may stand in strings and ranges.
    """
    found = []
    for m in _TOKEN.finditer(expr):
        if m.group("bare"):
            raise ValueError(f"a selector without a metric name in {expr!r}: not checkable")
        name = m.group("name")
        if not name or m.group("call") or name.lower() in _KEYWORDS:
            continue
        labels = frozenset(_MATCHER.findall(m.group("matchers") or ""))
        if "__name__" in labels:
            raise ValueError(f"a __name__ matcher in {expr!r}: not checkable")
        found.append((name, labels))
    return found


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>\w+)\s*\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.+)\)\s*$", re.S)


def variable_selectors(query: str) -> list[tuple[str, frozenset[str]]]:
    """Names in a Grafana Prometheus variable query: the label asked for counts as matched."""
    m = _LABEL_VALUES.match(query)
    if m:
        if m.group("selector") is None:
            return []  # label_values(label): any metric
        return [
            (name, labels | {m.group("label")}) for name, labels in selectors(m.group("selector"))
        ]
    m = _QUERY_RESULT.match(query)
    if m:
        return selectors(m.group("expr"))
    raise ValueError(f"variable query {query!r}: only label_values() and query_result() are checked")


def dashboard_expressions(dashboard: Any) -> Iterator[tuple[str, str]]:
    """(where, expression) for every PromQL in the dashboard: targets (rows
    nested or not), annotations, and query variables."""

    def walk(node: Any, where: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, dict):
            title = node.get("title") or node.get("name") or ""
            here = f"{where}/{title}" if title else where
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    yield here, value
                elif key != "templating":
                    yield from walk(value, here)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item, where)

    yield from walk({k: v for k, v in dashboard.items() if k != "templating"}, "dashboard")
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        if isinstance(query, dict):
            query = query["query"]
        yield f"variable ${variable['name']}", "VAR:" + query


def used_selectors(expressions: Iterator[tuple[str, str]]) -> dict[str, list[tuple[str, frozenset[str]]]]:
    """Metric name -> [(where, labels matched)] over C{expressions}."""
    used: dict[str, list[tuple[str, frozenset[str]]]] = {}
    for where, expr in expressions:
        if expr.startswith("VAR:"):
            pairs = variable_selectors(expr[4:])
        else:
            pairs = selectors(expr)
        for name, labels in pairs:
            used.setdefault(name, []).append((where, labels))
    return used


def alert_expressions() -> Iterator[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule.get('alert') or rule.get('record')}", rule["expr"]


def exposed(text: str) -> dict[str, set[str]]:
    """Sample name (what PromQL selects: C{x_total}, C{h_bucket}, C{h_count},
    ...) -> the label names on its samples, for families with samples."""
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def problems(used: dict[str, list[tuple[str, frozenset[str]]]], samples: dict[str, set[str]]) -> list[str]:
    """What in C{used} a Prometheus scraping C{samples} would find nothing for."""
    found = []
    for name, uses in sorted(used.items()):
        where = sorted({w for w, _ in uses})
        if name not in samples:
            close = difflib.get_close_matches(name, list(samples), n=2, cutoff=0.8)
            found.append(
                f"{name} (used by {', '.join(where)}) is not a series on /metrics"
                + (f"; did you mean {' or '.join(close)}?" if close else "")
            )
            continue
        for w, labels in uses:
            unknown = sorted(labels - TARGET_LABELS - samples[name])
            if unknown:
                found.append(
                    f"{name} (used by {w}) has no label {', '.join(unknown)}; "
                    f"it has {', '.join(sorted(samples[name]))}"
                )
    return found


# promtool -----------------------------------------------------------------


def test_alert_rules_are_valid() -> None:
    output = _promtool("check", "rules", str(ALERTS))
    assert "SUCCESS" in output


def test_alert_rules_unit_tests_pass() -> None:
    output = _promtool("test", "rules", str(ALERT_TESTS))
    assert "SUCCESS" in output


def test_alert_rules_unit_tests_cover_every_alert_firing_and_quiet() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    fired, quiet = set(), set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts and fired == alerts and quiet == alerts
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
            assert "$labels." in rule["annotations"]["summary"], rule["alert"]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each query, its Grafana variables given values, as a recording rule for promtool to parse."""
    dashboard = json.loads(DASHBOARD.read_text())
    rules = []
    for i, (where, expr) in enumerate(dashboard_expressions(dashboard)):
        if expr.startswith("VAR:"):
            continue
        expr = re.sub(r"\$__(rate_)?interval|\$__range", "1m", expr)
        expr = re.sub(r"\$\{?(job|instance|route|upstream|plugin)\}?", ".*", expr)
        assert "$" not in expr.replace("${1}", ""), f"{where}: an unknown variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    assert len(rules) > 30
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _promtool("check", "rules", str(path))


def test_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("route", "upstream", "plugin"):
        query = variables[name]["query"]
        query = query["query"] if isinstance(query, dict) else query
        assert re.match(rf"label_values\(.+, {name}\)$", query), query
    panels = []

    def collect(items: list[Any]) -> None:
        for p in items:
            panels.append(p)
            collect(p.get("panels", []))

    collect(dashboard["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_metric_names_are_found_in_expressions() -> None:
    """The parser itself: what is and is not a metric name."""
    assert selectors(
        'sum by (route, class) (label_replace(rate(http_requests_total{job=~"$job",status=~"5.."}'
        '[$__rate_interval]), "class", "${1}xx", "status", "(.).."))'
    ) == [("http_requests_total", frozenset({"job", "status"}))]
    assert selectors(
        'increase(a_total{kind="oom"}[5m]) > 0 or (a_total unless a_total offset 5m)'
    ) == [("a_total", frozenset({"kind"})), ("a_total", frozenset()), ("a_total", frozenset())]
    assert selectors("x_seconds - time() < 14 * 86400 and on (host) y == bool 1e3") == [
        ("x_seconds", frozenset()), ("y", frozenset())
    ]
    assert selectors(
        "histogram_quantile(0.99, sum without (instance) (rate(h_bucket[1m]))) / ignoring (le) group_left c"
    ) == [("h_bucket", frozenset()), ("c", frozenset())]
    assert variable_selectors('label_values(m{job=~"$job"}, route)') == [("m", frozenset({"job", "route"}))]
    assert variable_selectors("label_values(route)") == []


# A live gateway ------------------------------------------------------------


def _gateway_config(tmp_path: Path, live: str, dead: str) -> str:
    def wasm(name: str, wat: str) -> Path:
        path = tmp_path / f"{name}.wasm"
        path.write_bytes(wasmtime.wat2wasm(wat))
        return path

    return f"""
server:
  listen: "tcp:0:interface=127.0.0.1"
  tls:
    certificates:
      - {{hosts: [api.example.com], cert: api.pem, key: api.key}}
admin: {{listen: "tcp:0:interface=127.0.0.1"}}
filters: {{threads: 2}}
plugins:
  - {{name: rewrite, path: {wasm("rewrite", guests.HEADER_REWRITE)}}}
  - {{name: misbehaving, path: {wasm("misbehaving", guests.MISBEHAVING)}, failure_policy: open}}
  - {{name: block, path: {wasm("block", guests.BLOCK_403)}}}
routes:
  - {{name: api, match: {{path_prefix: /api}}, filters: [rewrite, misbehaving], upstream: backend}}
  - {{name: blocked, match: {{path_prefix: /blocked}}, filters: [block], upstream: backend}}
upstreams:
  backend:
    targets: ["{dead}", "{live}"]
    eject_after_failures: 1
    eject_for: 1m
"""


def _requests(port: int, cafile: str) -> list[int]:
    """Over TLS (a handshake): filters that continue, fail (a trap, policy
    open) and answer; a dead target ejected; a path no route matches."""
    context = ssl.create_default_context(cafile=cafile)
    context.check_hostname = False
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    statuses = []
    for method, path, body in [
        ("GET", "/api/users/1", None),
        ("GET", "/api/users/2", None),
        ("POST", "/api/orders", b'{"n": 1}'),
        ("TRACE", "/api/x", None),  # MISBEHAVING traps on a method starting with T
        ("GET", "/blocked", None),
        ("GET", "/nowhere", None),
    ]:
        conn.request(method, path, body=body, headers={"Host": "api.example.com"})
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
    conn.close()
    return statuses


@pytest_twisted.ensureDeferred
async def test_every_metric_queried_is_exported(tmp_path, upstream, start_gateway):
    ca = make_ca()
    write_pair(issue(ca, ["api.example.com"], serial=7), tmp_path / "api.pem", tmp_path / "api.key")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    with socket.socket() as s:  # a port nothing listens on: a dead target
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    gw = start_gateway(_gateway_config(tmp_path, upstream.url, dead))
    port = int(gw.url.rsplit(":", 1)[1])
    statuses = await threads.deferToThread(_requests, port, str(tmp_path / "ca.pem"))
    assert statuses == [200, 200, 200, 200, 403, 404]
    # One reload that works and one that fails.
    await gw.service.reload()
    Path(gw.path).write_text(Path(gw.path).read_text().replace("upstream: backend", "upstream: nowhere", 1))
    with pytest.raises(Exception, match="nowhere"):
        await gw.service.reload()

    text = await threads.deferToThread(
        lambda: urllib.request.urlopen(gw.admin_url + "/metrics", timeout=10).read().decode()
    )
    samples = exposed(text)

    dashboard = used_selectors(dashboard_expressions(json.loads(DASHBOARD.read_text())))
    alerts = used_selectors(alert_expressions())
    assert len(dashboard) >= 20, sorted(dashboard)
    assert set(alerts) >= {
        "wasmgate_plugin_errors_total", "wasmgate_plugin_duration_seconds_count",
        "wasmgate_tls_cert_not_after_seconds", "wasmgate_upstream_healthy", "wasmgate_reloads_total",
    }
    assert problems(dashboard, samples) == []
    assert problems(alerts, samples) == []

    # The check can fail: a misspelled name, a histogram suffix on a counter,
    # a histogram's bare name, and a label the series does not have.
    wrong = used_selectors(iter([
        ("typo", "rate(wasmgate_plugin_duration_second_count[1m])"),
        ("suffix", "rate(http_requests_total_count[1m])"),
        ("bare histogram", "rate(http_request_duration_seconds[1m])"),
        ("label", 'wasmgate_upstream_healthy{job="x",status="up"}'),
        ("fine", 'rate(wasmgate_upstream_duration_seconds_bucket{upstream="backend"}[1m])'),
    ]))
    found = problems(wrong, samples)
    assert len(found) == 4, found
    assert any("wasmgate_plugin_duration_second_count" in p and "did you mean" in p for p in found)
    assert any(p.startswith("http_requests_total_count ") for p in found)
    assert any(p.startswith("http_request_duration_seconds ") for p in found)
    assert any("has no label status" in p for p in found)
