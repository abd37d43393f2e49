# -*- test-case-name: tests.test_wasm_filter -*-
"""
What a C{.wasm} file is, for C{wasmgate plugin inspect FILE}.

L{inspect_module} never raises for a bad module: whatever is wrong ends up
in the report's C{problems}, and C{ok} says whether it would load.

Whether it loads can depend on the config its C{wasmgate_init} is given:
without the user's config, a refusal of the empty one is not a broken
module (the bundled rate limiter needs a C{limit}), so the caller can say
it has no config (C{config_known=False}) and the refusal is only noted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

import wasmtime
from twisted.logger import Logger

from wasmgate.state import MemoryCounterStore
from wasmgate.wasm.abi import select_abi
from wasmgate.wasm.engine import WasmEngine
from wasmgate.wasm.failures import InitRefused, PluginLoadError
from wasmgate.wasm.filter import WasmFilter


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
    uses: list[str] = field(default_factory=list)
    """The ABI's host functions the module imports (Extism: its C{extism:host/env} ones)."""
    calls: str = ""
    """The export the gateway calls, for ABIs where config chooses it (Extism)."""
    problems: list[str] = field(default_factory=list)
    config_refused: str = ""
    """Why C{wasmgate_init} refused a config that was only a stand-in (see
    C{config_known}); the module still counts as loading."""

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
            "uses": list(self.uses),
            "calls": self.calls,
            "problems": list(self.problems),
            "config_refused": self.config_refused,
        }

    def text(self) -> str:
        lines = [
            "%s (%d bytes)" % (self.source, self.size),
            "  ABI:      %s" % (self.abi,),
            "  memory:   %s" % (self.memory or "none exported",),
            "  response: %s" % ("yes (handle_response)" if self.response_filter else "no",),
        ]
        if self.calls:
            lines.append("  calls:    %s" % (self.calls,))
        if self.uses:
            lines.append("  uses:     %s" % (", ".join(self.uses),))
        lines += [
            "  imports:",
        ]
        lines += ["    " + i for i in self.imports] or ["    (none)"]
        lines.append("  exports:")
        lines += ["    " + e for e in self.exports] or ["    (none)"]
        if self.ok and self.config_refused:
            lines.append(
                "  loads: yes (its wasmgate_init refused an empty config:"
                " pass --plugin-config to check yours)"
            )
            lines.append("    - " + self.config_refused)
        elif self.ok:
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
    config: Optional[Mapping[str, Any]] = None,
    config_known: bool = True,
    memory_limit_mb: float = 16,
    name: Optional[str] = None,
    export: str = "handler",
    config_bytes: Optional[bytes] = None,
) -> InspectReport:
    """
    Describe C{source} (wasm bytes or a file path) and try to load it with
    C{config} (default: empty) the way the gateway would.

    @param config_known: C{False} when the caller does not have the
        plugin's config and C{config} is a stand-in: C{wasmgate_init}
        refusing it then goes to C{config_refused}, not C{problems}.
    @param name: what to call C{source} in the report (default: its path,
        or C{<bytes>}).
    @param export: the function an Extism plugin's calls go to (C{export:}).
    @param config_bytes: C{config_raw:}/C{config_base64:}, given instead of
        C{config} to guests that read raw bytes.
    """
    if isinstance(source, (bytes, bytearray)):
        name, data = name or "<bytes>", bytes(source)
    else:
        path = os.fspath(source)
        name = name or path
        report = InspectReport(source=name)
        try:
            with open(path, "rb") as f:
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
        used = getattr(abi, "used_functions", None)
        if used is not None:
            report.uses = list(used(module))
            report.calls = export
    store = MemoryCounterStore(max_keys=1000)
    try:
        f = WasmFilter(
            name="inspect",
            module=module,
            engine=engine,
            config=dict(config or {}),
            memory_limit_mb=memory_limit_mb,
            export=export,
            config_bytes=config_bytes,
            state=store,
            log=Logger(namespace="wasmgate.inspect", observer=lambda event: None),
        )
    except PluginLoadError as e:
        why = e.what  # with what the guest logged while it failed
        # The filter raises PluginLoadError while handling InitRefused.
        if isinstance(e.__context__, InitRefused) and not config_known:
            report.config_refused = why
            report.ok = True
        else:
            report.problems.append(why)
    else:
        f.close()
        report.ok = True
    finally:
        store.close()
    return report
