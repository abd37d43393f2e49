# -*- test-case-name: tests.test_scaffold -*-
"""
C{wasmgate plugin new NAME}: a filter project that builds and passes its own
test out of the box (AssemblyScript source on the SDK, package.json, the
build settings, a pytest file using L{wasmgate.testing}), so a first filter
starts from something that works rather than from a folder to copy.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

_FILES = {
    "package.json.tmpl": "package.json",
    "asconfig.json.tmpl": "asconfig.json",
    "index.ts.tmpl": "assembly/index.ts",
    "tsconfig.json.tmpl": "assembly/tsconfig.json",
    "test_filter.py.tmpl": "test_{module}.py",
    "pytest.ini.tmpl": "pytest.ini",
    "gitignore.tmpl": ".gitignore",
    "README.md.tmpl": "README.md",
}
"""template file -> where it goes in the project ({module}: the name as a Python module)."""


class ScaffoldError(Exception):
    """Why no project was written: printed as is, exit status 1."""


@dataclass(frozen=True)
class Project:
    directory: Path
    files: tuple[Path, ...]
    sdk: str
    """The npm spec the project's package.json depends on the SDK with."""


def checkout_sdk() -> Optional[Path]:
    """
    The C{plugins/sdk} package of the checkout this wasmgate runs from (an
    editable install, or a fresh clone), if it runs from one.
    """
    sdk = Path(__file__).resolve().parent.parent / "plugins" / "sdk"
    return sdk if (sdk / "package.json").is_file() else None


def sdk_spec(given: Optional[str], *, project: Path) -> str:
    """
    The SDK dependency for a project in C{project}: a directory (given, or
    the checkout's) as a C{file:} path relative to the project, so npm links
    it; anything else given (a tarball, a git URL) as it is.
    """
    if given is not None and not os.path.isdir(given):
        return given
    sdk = Path(given) if given is not None else checkout_sdk()
    if sdk is None:
        raise ScaffoldError(
            "cannot find the wasmgate SDK (plugins/sdk of a wasmgate checkout):"
            " pass --sdk with its path, or an npm spec for it"
        )
    if not (sdk / "package.json").is_file():
        raise ScaffoldError(f"--sdk {given}: no package.json there; expected plugins/sdk of a wasmgate checkout")
    relative = os.path.relpath(sdk.resolve(), project.resolve())
    return "file:" + Path(relative).as_posix()


def write_project(name: str, *, directory: Path, sdk: Optional[str] = None) -> Project:
    """
    Write filter project C{name} into C{directory} (created; it must not
    hold anything yet).

    @raise ScaffoldError: for a bad name, a directory in the way, or no SDK.
    """
    if not NAME.match(name):
        raise ScaffoldError(
            f"{name!r} is not a usable filter name: use lower-case letters, digits, '_'"
            " and '-', starting with a letter (it names the npm package and the .wasm file)"
        )
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ScaffoldError(f"{directory} already exists and is not an empty directory")
    spec = sdk_spec(sdk, project=directory)
    values = {"__NAME__": name, "__MODULE__": name.replace("-", "_"), "__SDK__": spec}
    written = []
    templates = resources.files("wasmgate") / "_template"
    for template, target in _FILES.items():
        text = (templates / template).read_text(encoding="utf-8")
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        path = directory / target.format(module=values["__MODULE__"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return Project(directory=directory, files=tuple(written), sdk=spec)
