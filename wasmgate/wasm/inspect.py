# -*- test-case-name: tests.test_wasm_filter -*-
"""
What a C{.wasm} file is, for C{wasmgate plugin inspect FILE}.

L{inspect_module} never raises for a bad module: whatever is wrong ends up
in the report's C{problems}, and C{ok} says whether it would load.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import wasmtime

from wasmgate.state import MemoryCounterStore
from wasmgate.wasm.engine import WasmEngine
from wasmgate.wasm.filter import PluginLoadError, WasmFilter, select_abi


@dataclass
class InspectReport:
    """The facts about one module, and whether it would load."""

    source: str
    ok: bool = False
    abi: str = "unknown"
    size: int = 0
    imports: list[str] = field(default_factory=list)
    exports: list[str] = field(default_factory=list)
    memory: str = ""
    response_filter: bool = False
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ok": self.ok,
            "abi": self.abi,
            "size": self.size,
            "imports": list(self.imports),
            "exports": list(self.exports),
            "memory": self.memory,
            "response_filter": self.response_filter,
            "problems": list(self.problems),
        }

    def text(self) -> str:
        lines = [
            "%s (%d bytes)" % (self.source, self.size),
            "  ABI:      %s" % (self.abi,),
            "  memory:   %s" % (self.memory or "none exported",),
            "  response: %s" % ("yes (handle_response)" if self.response_filter else "no",),
            "  imports:",
        ]
        lines += ["    " + i for i in self.imports] or ["    (none)"]
        lines.append("  exports:")
        lines += ["    " + e for e in self.exports] or ["    (none)"]
        if self.ok:
            lines.append("  loads: yes")
        else:
            lines.append("  loads: NO")
            lines += ["    - " + p for p in self.problems]
        return "\n".join(lines)

    __str__ = text


def _type_text(ty: Any) -> str:
    if isinstance(ty, wasmtime.FuncType):
        return "func (%s) -> (%s)" % (
            ", ".join(str(p) for p in ty.params),
            ", ".join(str(r) for r in ty.results),
        )
    if isinstance(ty, wasmtime.MemoryType):
        return "memory " + _limits_text(ty)
    return type(ty).__name__.replace("Type", "").lower()


def _limits_text(ty: wasmtime.MemoryType) -> str:
    lo, hi = ty.limits.min, ty.limits.max
    return "%d pages (%s KiB) min, max %s" % (
        lo,
        lo * 64,
        "%d pages" % hi if hi is not None else "unbounded",
    )


def inspect_module(
    source: Union[bytes, str, "os.PathLike[str]"],
    engine: WasmEngine,
    *,
    config: Optional[dict] = None,
    memory_limit_mb: float = 16,
) -> InspectReport:
    """
    Describe C{source} (wasm bytes or a file path) and try to load it with
    C{config} (default: empty) the way the gateway would.
    """
    if isinstance(source, (bytes, bytearray)):
        name, data = "<bytes>", bytes(source)
    else:
        name = os.fspath(source)
        report = InspectReport(source=name)
        try:
            with open(name, "rb") as f:
                data = f.read()
        except OSError as e:
            report.problems.append("cannot read file: %s" % (e.strerror or e,))
            return report
    report = InspectReport(source=name, size=len(data))
    try:
        module = engine.compile(data)
    except Exception as e:
        report.problems.append("not a valid wasm module: %s" % (str(e).strip().splitlines() or [""])[0])
        return report
    report.imports = ["%s.%s: %s" % (i.module, i.name, _type_text(i.type)) for i in module.imports]
    report.exports = ["%s: %s" % (e.name, _type_text(e.type)) for e in module.exports]
    mems = [e.type for e in module.exports if isinstance(e.type, wasmtime.MemoryType)]
    if mems:
        report.memory = _limits_text(mems[0])
    abi = select_abi(module)
    if abi is not None:
        report.abi = abi.name
        report.response_filter = bool(abi.speaks_response(module))
    store = MemoryCounterStore(max_keys=1000)
    try:
        f = WasmFilter(
            name="inspect",
            module=module,
            engine=engine,
            config=config or {},
            memory_limit_mb=memory_limit_mb,
            state=store,
        )
    except PluginLoadError as e:
        report.problems.append(e.what)
    else:
        f.close()
        report.ok = True
    finally:
        store.close()
    return report
