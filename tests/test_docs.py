# -*- test-case-name: tests.test_docs -*-
"""
The documentation says what the code does: the minimal module in
docs/abi.md compiles, passes C{wasmgate plugin inspect} and answers as the
text says, with the doc's own commands; links between documents resolve;
nothing points at documents outside the repository.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BIN = os.path.dirname(sys.executable)


def code_blocks(path: Path, language: str) -> list[str]:
    """The fenced blocks of C{language} in a markdown file, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", path.read_text(), flags=re.M | re.S)


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


@pytest.fixture
def hello(tmp_path: Path) -> Path:
    """docs/abi.md's WAT example, saved as hello.wat (as the doc says to)."""
    [wat] = code_blocks(DOCS / "abi.md", "wat")
    (tmp_path / "hello.wat").write_text(wat)
    return tmp_path


def test_the_minimal_module_passes_plugin_inspect(hello):
    """The doc's shell lines, run as written: compile, then inspect."""
    [commands] = [block for block in code_blocks(DOCS / "abi.md", "sh") if "hello.wat" in block]
    result = run(["bash", "-euo", "pipefail", "-c", commands], cwd=hello)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("hello.wasm (")
    assert "  ABI:      json\n" in result.stdout
    assert result.stdout.endswith("  loads: yes\n")


def test_the_minimal_module_answers_as_the_doc_says(hello):
    """The doc's Python snippet, run as written, next to hello.wat."""
    [snippet] = [block for block in code_blocks(DOCS / "abi.md", "python") if "hello.wat" in block]
    result = run([sys.executable, "-c", snippet], cwd=hello)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_minimal_module_copes_with_a_large_request(hello):
    """Its wasmgate_alloc grows memory for inputs larger than the first page."""
    from wasmgate.testing import run_filter
    from wasmgate.wasm.messages import Continue

    result = run_filter(hello / "hello.wat", headers={"x-big": "a" * 200_000}, memory_limit_mb=4)
    assert isinstance(result, Continue)
    assert result.response_headers == [("x-hello", "wasm")]


LINKED = [
    *sorted(DOCS.glob("*.md")),
    ROOT / "plugins" / "README.md",
    ROOT / "plugins" / "sdk" / "README.md",
]


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for a markdown file's headings."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


@pytest.mark.parametrize("document", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_between_documents_resolve(document):
    text = re.sub(r"^```.*?^```$", "", document.read_text(), flags=re.M | re.S)
    for target in re.findall(r"\]\(([^)]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        name, _, anchor = target.partition("#")
        linked = (document.parent / name).resolve() if name else document
        assert linked.is_file(), f"{document.relative_to(ROOT)}: no such file: {target}"
        if anchor:
            assert anchor in _anchors(linked), f"{document.relative_to(ROOT)}: no heading for {target}"


_OUTSIDE = re.compile(r"design notes|beside the repository|DESIGN\.md|design document", re.I)
_TEXT = (".py", ".md", ".ts", ".sh", ".yaml", ".json", ".cfg", ".toml", ".tmpl", ".service", ".socket")


def _repository_text() -> list[Path]:
    """What a user of the repository reads: sources, docs, examples (not tests, not node_modules)."""
    files = [ROOT / "README.md", ROOT / "setup.cfg"]
    for top in ("wasmgate", "twisted", "plugins", "docs", "examples"):
        for path in sorted((ROOT / top).rglob("*")):
            if "node_modules" not in path.parts and path.is_file() and path.name.endswith(_TEXT):
                files.append(path)
    return files


NOT_YET_FIXED: set[str] = set()
"""Files whose references to outside notes are being replaced (issue 19): empty this set then."""


def test_nothing_refers_to_documents_outside_the_repository():
    """The architecture and the ABI are in docs/, not in notes a user does not have."""
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in _repository_text()
        if str(path.relative_to(ROOT)) not in NOT_YET_FIXED
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if _OUTSIDE.search(line)
    ]
    assert offenders == []
