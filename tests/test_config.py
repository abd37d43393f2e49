"""
gateway.yaml validation: every mistake named with file, key path and what
is wrong, all of them at once.
"""
from __future__ import annotations

import textwrap

import pytest

from wasmgate._schema import parse_duration
from wasmgate.config import ConfigError, load_config

GOOD = """
server:
  listen: "tcp:8080"
  timeouts: {read: 5s, upstream: 1m}
  trusted_proxies: ["10.0.0.0/8", "::1"]
routes:
  - match: {path_prefix: /api, host: API.example.com}
    upstream: backend
    timeout: 500ms
upstreams:
  backend:
    targets: ["http://127.0.0.1:9000", "https://10.0.0.1:443/"]
    lb: least_requests
    health_check: {path: /health, interval: 2s, expect_status: 200-299}
"""


def write(tmp_path, text: str, name: str = "gateway.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def problems(tmp_path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    for problem in info.value.problems:
        assert problem.startswith(path + ": "), problem
    return [p[len(path) + 2 :] for p in info.value.problems]


def test_good_config_loads(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.server.listen == ("tcp:8080",)
    assert config.server.timeouts.read == 5.0
    assert config.server.timeouts.upstream == 60.0
    route = config.routes[0]
    assert route.host == "api.example.com"
    assert route.timeout == 0.5
    assert route.name == "api.example.com/api"
    upstream = config.upstreams["backend"]
    assert upstream.targets == ("http://127.0.0.1:9000", "https://10.0.0.1:443")
    assert upstream.lb == "least_requests"
    assert upstream.health_check.expect_status == (200, 299)
    assert len(config.server.trusted_proxies) == 2


@pytest.mark.parametrize(
    "text,seconds",
    [("500ms", 0.5), ("10s", 10.0), ("1m", 60.0), ("2h", 7200.0), (3, 3.0), ("1.5s", 1.5)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["10 parsecs", "fast", "-1s", True])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "nope.yaml"))
    assert "nope.yaml: cannot read the config file" in str(info.value)


def test_yaml_syntax_error_has_line_number(tmp_path):
    [problem] = problems(tmp_path, "server:\n  listen: [tcp:8080\nroutes: []\n")
    assert problem.startswith("line 3, column")
    assert "YAML syntax error" in problem


def test_unknown_key_with_did_you_mean(tmp_path):
    found = problems(tmp_path, GOOD.replace("upstream: backend", "upstrem: backend"))
    assert "routes[0].upstrem: unknown key (did you mean 'upstream'?)" in found[0]
    assert any(p.endswith("routes[0].upstream: required but missing") for p in found), found


def test_wrong_type(tmp_path):
    found = problems(tmp_path, GOOD + "  \nfilters: {threads: many}\n")
    assert found == ["filters.threads: expected an integer, got a string"]


def test_bad_duration_names_the_key(tmp_path):
    found = problems(tmp_path, GOOD.replace("timeout: 500ms", "timeout: soon"))
    assert found == ["routes[0].timeout: expected a duration like 500ms, 10s or 1m, got 'soon'"]


def test_missing_upstream_reference(tmp_path):
    found = problems(tmp_path, GOOD.replace("upstream: backend", "upstream: bakend"))
    assert found == ["routes[0].upstream: no upstream named 'bakend' (did you mean 'backend'?)"]


def test_missing_plugin_reference(tmp_path):
    text = GOOD.replace("    timeout: 500ms", "    timeout: 500ms\n    filters: [rate_limit]")
    found = problems(tmp_path, text)
    assert found == ["routes[0].filters[0]: no plugin named 'rate_limit'"]


def test_all_errors_reported_at_once(tmp_path):
    text = (
        GOOD.replace("upstream: backend", "upstream: nowhere")
        .replace("lb: least_requests", "lb: fastest")
        .replace('"tcp:8080"', "tcp:8080\n  colour: blue")
        .replace("10.0.0.0/8", "10.0.0.0/88")
    )
    found = problems(tmp_path, text)
    assert len(found) == 4, found
    joined = "\n".join(found)
    assert "server.colour: unknown key" in joined
    assert "server.trusted_proxies[0]: expected an IP address or CIDR" in joined
    assert "upstreams.backend.lb: must be one of round_robin, least_requests, ip_hash" in joined
    assert "routes[0].upstream: no upstream named 'nowhere'" in joined


def test_bad_targets(tmp_path):
    text = GOOD.replace('"https://10.0.0.1:443/"', '"ftp://x", "http://h:99999", "http://h/path"')
    found = problems(tmp_path, text)
    assert [f.split(":")[0] for f in found] == [
        "upstreams.backend.targets[1]",
        "upstreams.backend.targets[2]",
        "upstreams.backend.targets[3]",
    ]


def test_plugins_are_validated(tmp_path):
    (tmp_path / "f.wasm").write_bytes(b"\0asm\x01\0\0\0")
    text = GOOD + """
plugins:
  - name: f
    path: f.wasm
    failure_policy: sometimes
    timeout_ms: 20000
  - name: f
    path: missing.wasm
    sha256: "xyz"
"""
    found = problems(tmp_path, text)
    joined = "\n".join(found)
    assert "plugins[0].failure_policy: must be one of closed, open, got 'sometimes'" in joined
    assert "plugins[0].timeout_ms: 20000 ms is not below server.timeouts.write" in joined
    assert "plugins[1].name: a plugin named 'f' is defined twice" in joined
    assert f"plugins[1].path: no such file: {tmp_path / 'missing.wasm'}" in joined
    assert "plugins[1].sha256: expected 64 hex digits" in joined


def test_plugin_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "f.wasm").write_bytes(b"\0asm\x01\0\0\0")
    text = GOOD + "plugins:\n  - {name: f, path: f.wasm, config: {limit: 5}}\n"
    config = load_config(write(tmp_path, text))
    assert config.plugins[0].path == str(tmp_path / "f.wasm")
    assert config.plugins[0].config == {"limit": 5}


def test_tls_section(tmp_path):
    text = GOOD.replace(
        '  listen: "tcp:8080"',
        """  listen: "tcp:8443"
  tls:
    certificates:
      - {hosts: [a.example.com], cert: a.pem, key: a.key}
      - {hosts: [A.example.com], cert: b.pem, key: b.key}
    min_version: "1.1"
""",
    )
    (tmp_path / "a.pem").write_text("x")
    (tmp_path / "a.key").write_text("x")
    found = "\n".join(problems(tmp_path, text))
    assert "server.tls.certificates[1].hosts: 'A.example.com' is already served by server.tls.certificates[0]" in found
    assert f"server.tls.certificates[1].cert: cannot read {tmp_path / 'b.pem'}" in found
    assert "server.tls.min_version: must be one of 1.2, 1.3, got '1.1'" in found


def test_empty_file_says_what_is_missing(tmp_path):
    found = problems(tmp_path, "")
    assert "routes: expected a non-empty list of routes" in found
    assert any(f.startswith("upstreams: ") for f in found)


def test_plugins_from_urls_get_a_cache_by_default(tmp_path, monkeypatch):
    """
    A plugin fetched from a URL must still load after a restart without the
    network: with no filters.cache_dir, one is chosen (systemd's
    CacheDirectory first, then the XDG cache); local plugins need none.
    """
    from wasmgate.config import default_cache_dir

    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    remote = GOOD + "plugins:\n  - {name: p, path: 'https://plugins.example.com/p.wasm'}\n"
    path = tmp_path / "remote.yaml"
    path.write_text(remote)
    assert load_config(str(path)).filters.cache_dir == str(tmp_path / "xdg" / "wasmgate")
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/wasmgate:/other")
    assert load_config(str(path)).filters.cache_dir == "/var/cache/wasmgate"
    path.write_text(remote + "filters: {cache_dir: mine}\n")
    assert load_config(str(path)).filters.cache_dir == str(tmp_path / "mine")
    local = tmp_path / "local.yaml"
    local.write_text(GOOD)
    assert load_config(str(local)).filters.cache_dir is None
    assert default_cache_dir({"HOME": "/home/u"}).endswith("/.cache/wasmgate")
