# -*- test-case-name: tests.test_wasm_filter -*-
"""
The seam between a filter and the ABIs it may speak: what an ABI offers
(L{FilterAbi}, L{LinkingAbi}), which one a module speaks (L{select_abi}),
and what the ABIs read off a module's exports and imports.

Which ABI a module speaks is decided from its imports and exports; the
JSON ABI is in L{wasmgate.wasm.abi_json}, the http-wasm ABI plugs in as
C{wasmgate.wasm.abi_httpwasm} exposing an C{ABI} class (Extism likewise).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Protocol, Union

import wasmtime

from wasmgate.wasm._hints import import_hint
from wasmgate.wasm.hostfuncs import HostFunc
from wasmgate.wasm.messages import Answer, Continue, FilterRequest, FilterResponse

if TYPE_CHECKING:
    from wasmgate.wasm.instance import InstanceContext


class FilterAbi(Protocol):
    """
    How the host talks to one kind of guest. One object per L{WasmFilter};
    per-instance data goes in C{ctx.abi_state}.
    """

    name: ClassVar[str]

    @classmethod
    def detect(cls, module: wasmtime.Module) -> bool:
        """Whether C{module} looks like it speaks this ABI."""

    @classmethod
    def problems(cls, module: wasmtime.Module) -> list[str]:
        """What is missing or mistyped for this ABI (empty: loadable)."""

    @classmethod
    def speaks_response(cls, module: wasmtime.Module) -> bool:
        """Whether the module filters responses too."""

    def host_functions(self) -> dict[tuple[str, str], HostFunc]:
        """Imports this ABI provides on top of the C{wasmgate} module."""

    def setup(self, ctx: "InstanceContext") -> None:
        """Prepare a fresh instance (may raise L{InitRefused} or trap)."""

    def handle_request(
        self, ctx: "InstanceContext", req: FilterRequest, route_config: Optional[dict]
    ) -> Union[Answer, Continue]:
        """Run the request phase; may change C{req} in place when continuing."""

    def handle_response(
        self,
        ctx: "InstanceContext",
        req: FilterRequest,
        resp: FilterResponse,
        route_config: Optional[dict],
    ) -> FilterResponse:
        """Run the response phase."""


class LinkingAbi(Protocol):
    """
    An ABI that instantiates modules of its own into each instance's store
    before the guest (Extism: the kernel). Its class says how many
    (C{extra_instances}); C{link} returns the externs that satisfy some of
    the guest's imports, by C{(module, name)}.
    """

    extra_instances: ClassVar[int]

    def link(self, ctx: "InstanceContext") -> dict[tuple[str, str], Any]: ...


def _abi_classes() -> list[Any]:
    found = []
    for name in ("wasmgate.wasm.abi_extism", "wasmgate.wasm.abi_httpwasm", "wasmgate.wasm.abi_json"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        abi = getattr(mod, "ABI", None)
        if abi is not None:
            found.append(abi)
    return found


def select_abi(module: wasmtime.Module) -> Any:
    """The ABI class for C{module}, or C{None} when none fits."""
    for abi in _abi_classes():
        if abi.detect(module):
            return abi
    return None


def known_abis() -> list[str]:
    return [a.name for a in _abi_classes()]


def func_sig(ty: Any) -> Optional[tuple[tuple[str, ...], tuple[str, ...]]]:
    """C{(params, results)} as type names, or None if C{ty} is no function."""
    if not isinstance(ty, wasmtime.FuncType):
        return None
    return tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results)


def exports_of(module: wasmtime.Module) -> dict[str, Any]:
    """A module's exports by name: their types."""
    return {e.name: e.type for e in module.exports}


def import_problems(module: wasmtime.Module, hosts: dict[tuple[str, str], HostFunc]) -> list[str]:
    """Imports of C{module} the host cannot satisfy, as messages."""
    out = []
    for imp in module.imports:
        key = (imp.module, imp.name)
        ty = imp.type
        spec = hosts.get(key)
        if spec is None:
            hint = import_hint(*key)
            out.append(
                "imports %s.%s, which the host does not provide%s" % (key + ((" (%s)" % hint) if hint else "",))
            )
            continue
        if not isinstance(ty, wasmtime.FuncType):
            out.append("imports %s.%s as a non-function" % key)
            continue
        params = tuple(str(p) for p in ty.params)
        results = tuple(str(r) for r in ty.results)
        if (params, results) != (spec.params, spec.results):
            out.append(
                "imports %s.%s with type (%s) -> (%s), but the host provides (%s) -> (%s)"
                % (
                    key[0],
                    key[1],
                    ", ".join(params),
                    ", ".join(results),
                    ", ".join(spec.params),
                    ", ".join(spec.results),
                )
            )
    return out
