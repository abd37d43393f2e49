# -*- test-case-name: tests.test_startup_footprint -*-
"""
What a gateway loads depends on what its config asks for: without plugins
it does not import wasmtime (about 5 MiB of resident memory in every
process), with them it does.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import gateway_yaml

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"

# A fresh interpreter: the test process has long imported everything.
PROBE = """
import sys
from twisted.internet import epollreactor
epollreactor.install()
from wasmgate.twistd import make_twistd_service
make_twistd_service(sys.argv[1])
print("wasmtime" in sys.modules)
"""

WITH_PLUGIN = f"""
plugins:
  - name: limiter
    path: {PLUGINS / "rate_limiter.wasm"}
    config: {{limit: 10, window: 60s, key: client_ip}}
"""


def _loads_wasmtime(config: Path) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(config)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1] == "True"


def test_wasmtime_is_loaded_only_for_plugins(tmp_path: Path) -> None:
    bare = tmp_path / "bare.yaml"
    bare.write_text(gateway_yaml("http://127.0.0.1:9"))
    assert not _loads_wasmtime(bare)
    filtered = tmp_path / "filtered.yaml"
    filtered.write_text(gateway_yaml("http://127.0.0.1:9", extra=WITH_PLUGIN))
    assert _loads_wasmtime(filtered)
