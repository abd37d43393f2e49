# -*- test-case-name: tests.test_scaffold -*-
"""
C{wasmgate plugin new}: the project it writes builds with the real
toolchain (npm, AssemblyScript, the SDK package in plugins/sdk) and passes
its own test, as the issue's "done when" runs it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WASMGATE = os.path.join(os.path.dirname(sys.executable), "wasmgate")
NPM = shutil.which("npm")


def run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.mark.skipif(NPM is None, reason="npm is not installed: cannot build the generated filter project")
def test_new_project_builds_and_passes_its_own_test(tmp_path):
    """
    C{wasmgate plugin new myfilter && cd myfilter && npm install && npm run
    build && python -m pytest}. npm is told to prefer its cache, which
    plugins/build.sh filled with the same pinned AssemblyScript: no
    download where the bundled filters were built.
    """
    new = run(WASMGATE, "plugin", "new", "myfilter", cwd=tmp_path)
    assert new.returncode == 0, new.stderr
    project = tmp_path / "myfilter"
    sdk = os.path.relpath(ROOT / "plugins" / "sdk", project)
    assert f"(wasmgate-sdk: file:{sdk})" in new.stdout
    assert new.stdout.endswith("next: cd myfilter && npm install && npm run build && python -m pytest\n")

    install = run(NPM, "install", "--prefer-offline", "--no-audit", "--no-fund", cwd=project)
    assert install.returncode == 0, install.stdout + install.stderr
    assert (project / "node_modules" / "wasmgate-sdk").resolve() == (ROOT / "plugins" / "sdk").resolve()
    build = run(NPM, "run", "build", cwd=project)
    assert build.returncode == 0, build.stdout + build.stderr

    tests = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=project)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "4 passed" in tests.stdout

    # It imports nothing the gateway does not give (the SDK routes abort).
    inspect = run(WASMGATE, "plugin", "inspect", str(project / "myfilter.wasm"), cwd=project)
    assert inspect.returncode == 0, inspect.stdout
    assert "env." not in inspect.stdout
    assert inspect.stdout.endswith("  loads: yes\n")


def test_the_template_pins_the_compiler_the_bundled_filters_use():
    """So npm finds it in the cache plugins/build.sh filled, and builds alike."""
    from importlib import resources

    template = (resources.files("wasmgate") / "_template" / "package.json.tmpl").read_text()
    pinned = json.loads((ROOT / "plugins" / "package.json").read_text())["devDependencies"]
    assert json.loads(template)["devDependencies"]["assemblyscript"] == pinned["assemblyscript"]


def test_names_and_places_it_refuses(tmp_path):
    for name in ("MyFilter", "1filter", "my filter", "../up"):
        refused = run(WASMGATE, "plugin", "new", name, cwd=tmp_path)
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"wasmgate plugin new: {name!r} is not a usable filter name")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine\n")
    taken = run(WASMGATE, "plugin", "new", "taken", cwd=tmp_path)
    assert taken.returncode == 1
    assert taken.stderr == "wasmgate plugin new: taken already exists and is not an empty directory\n"
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_sdk_given_as_a_path_or_as_any_npm_spec(tmp_path):
    """A directory becomes a relative file: dependency; a tarball or URL goes in as given."""
    as_path = run(
        WASMGATE, "plugin", "new", "a-filter", "--dir", "deep/a", "--sdk", str(ROOT / "plugins" / "sdk"),
        cwd=tmp_path,
    )
    assert as_path.returncode == 0, as_path.stderr
    package = json.loads((tmp_path / "deep" / "a" / "package.json").read_text())
    relative = os.path.relpath(ROOT / "plugins" / "sdk", tmp_path / "deep" / "a")
    assert package["devDependencies"]["wasmgate-sdk"] == f"file:{relative}"
    assert package["scripts"]["build"] == "asc assembly/index.ts --outFile a-filter.wasm"
    assert (tmp_path / "deep" / "a" / "test_a_filter.py").is_file()

    tarball = run(WASMGATE, "plugin", "new", "b", "--sdk", "./wasmgate-sdk-0.1.0.tgz", cwd=tmp_path)
    assert tarball.returncode == 0, tarball.stderr
    package = json.loads((tmp_path / "b" / "package.json").read_text())
    assert package["devDependencies"]["wasmgate-sdk"] == "./wasmgate-sdk-0.1.0.tgz"

    not_sdk = run(WASMGATE, "plugin", "new", "c", "--sdk", str(tmp_path / "deep"), cwd=tmp_path)
    assert not_sdk.returncode == 1
    assert "no package.json there" in not_sdk.stderr


@pytest.mark.skipif(NPM is None, reason="npm is not installed: cannot pack and install the SDK")
def test_the_sdk_packs_into_a_tarball_a_project_builds_with(tmp_path):
    """C{npm pack} in plugins/sdk carries everything a build needs (sources, asconfig.json)."""
    packed = run(NPM, "pack", "--pack-destination", str(tmp_path), cwd=ROOT / "plugins" / "sdk")
    assert packed.returncode == 0, packed.stderr
    [tarball] = tmp_path.glob("wasmgate-sdk-*.tgz")
    new = run(WASMGATE, "plugin", "new", "packed", "--sdk", f"file:{tarball}", cwd=tmp_path)
    assert new.returncode == 0, new.stderr
    project = tmp_path / "packed"
    install = run(NPM, "install", "--prefer-offline", "--no-audit", "--no-fund", cwd=project)
    assert install.returncode == 0, install.stdout + install.stderr
    assert not (project / "node_modules" / "wasmgate-sdk").is_symlink()  # a copy, not a link
    build = run(NPM, "run", "build", cwd=project)
    assert build.returncode == 0, build.stdout + build.stderr
    inspect = run(WASMGATE, "plugin", "inspect", str(project / "packed.wasm"), cwd=project)
    assert inspect.returncode == 0 and "env." not in inspect.stdout, inspect.stdout
