"""
Tests for L{wasmgate.wasm.engine} and the raw call path in
L{wasmgate.wasm._raw}, on real wasmtime.
"""
from __future__ import annotations

import os
import sys
import threading
import time

import pytest
import wasmtime

from tests import wasm_guests
from wasmgate.wasm import _raw
from wasmgate.wasm.engine import WasmEngine

GUEST = r"""
(module
  (import "host" "add" (func $add (param i32 i64) (result i64)))
  (import "host" "fail" (func $fail))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello")
  (func (export "call_add") (param i32 i32) (result i64)
    (call $add (local.get 0) (i64.extend_i32_s (local.get 1))))
  (func (export "grow_and_mark") (param i32 i32) (result i32)
    (drop (memory.grow (local.get 0)))
    (i32.store8 (i32.const 65536) (i32.const 42))
    (memory.size))
  (func (export "spin") (param i32 i32) (result i32)
    (loop $l (br $l)) (i32.const 0))
  (func (export "trap") (param i32 i32) (result i32) unreachable)
  (func (export "call_fail") (param i32 i32) (result i32) (call $fail) (i32.const 1))
  (func (export "three") (param i32 i32 i32) (result i32)
    (i32.add (local.get 0) (i32.add (local.get 1) (local.get 2))))
)
"""


def _engine(**kw: object) -> WasmEngine:
    return WasmEngine(**kw)  # type: ignore[arg-type]


class _Guest:
    """An instance of L{GUEST} wired through C{path}."""

    def __init__(self, engine: WasmEngine, *, fuel: int | None = None) -> None:
        self.store = wasmtime.Store(engine.engine)
        self.store.set_epoch_deadline(1 << 40)
        if engine.fuel:
            self.store.set_fuel(fuel if fuel is not None else 1 << 60)
        self.path = engine.path
        self.cell = _raw.MemoryCell()
        self.errors: list[BaseException] = []
        self.seen: list[bytes] = []

        def add(base: int, size: int, a: int, b: int) -> int:
            self.seen.append(_raw.read(base, size, 16, 5))
            return a + b

        def fail(base: int, size: int) -> None:
            raise RuntimeError("host says no")

        funcs = [
            self.path.host_func(self.store, ["i32", "i64"], ["i64"], add, self.cell, self.errors.append),
            self.path.host_func(self.store, [], [], fail, self.cell, self.errors.append),
        ]
        self.funcs = funcs
        self.instance = wasmtime.Instance(self.store, engine.compile(wasmtime.wat2wasm(GUEST)), funcs)
        self.exports = self.instance.exports(self.store)
        self.cell.memory = self.exports["memory"]

    def fn(self, name: str, params: list[str] = ["i32", "i32"], results: list[str] = ["i32"]):  # noqa: B006
        return self.path.export_caller(self.store, self.exports[name], params, results)


@pytest.fixture(params=[True, False], ids=["raw", "checked"])
def engine(request: pytest.FixtureRequest):
    e = _engine(raw_calls=request.param)
    e.start()
    yield e
    e.stop()


def test_raw_path_selected() -> None:
    """On the pinned wasmtime the self-check passes and the raw path is used."""
    e = _engine()
    assert e.path.raw and e.path_note == ""
    e2 = _engine(raw_calls=False)
    assert not e2.path.raw and e2.path_note


def test_calls_and_host_functions(engine: WasmEngine) -> None:
    """Both paths pass ints both ways and give host functions the memory."""
    g = _Guest(engine)
    call_add = g.fn("call_add", results=["i64"])
    assert call_add(40, 2) == 42
    assert call_add(1, -5) == -4
    assert g.seen == [b"hello", b"hello"]
    assert g.fn("three", ["i32", "i32", "i32"])(1, 2, 3) == 6


def test_memory_span_follows_growth(engine: WasmEngine) -> None:
    """After memory.grow the span is fetched afresh and covers the new pages."""
    g = _Guest(engine)
    base, size = engine.path.memory_span(g.store, g.cell.memory)
    assert size == 65536
    assert g.fn("grow_and_mark")(4, 0) == 5
    base, size = engine.path.memory_span(g.store, g.cell.memory)
    assert size == 5 * 65536
    assert _raw.read(base, size, 65536, 1) == b"*"
    _raw.write(base, size, size - 3, b"end")
    assert _raw.read(base, size, size - 3, 3) == b"end"


def test_read_write_bounds() -> None:
    buf = bytearray(b"0123456789")
    import ctypes

    arr = (ctypes.c_char * len(buf)).from_buffer(buf)
    base = ctypes.addressof(arr)
    assert _raw.read(base, 10, 2, 3) == b"234"
    assert _raw.read(base, 10, 10, 0) == b""
    with pytest.raises(IndexError):
        _raw.read(base, 10, 8, 3)
    with pytest.raises(IndexError):
        _raw.read(base, 10, -1, 1)  # 0xFFFFFFFF as an unsigned guest pointer
    with pytest.raises(IndexError):
        _raw.write(base, 10, 9, b"ab")
    _raw.write(base, 10, 8, b"ab")
    assert bytes(buf) == b"01234567ab"


def test_trap_codes(engine: WasmEngine) -> None:
    """Traps arrive as GuestTrap with wasmtime's trap code; the store stays usable."""
    g = _Guest(engine)
    with pytest.raises(_raw.GuestTrap) as e:
        g.fn("trap")(0, 0)
    assert e.value.code is wasmtime.TrapCode.UNREACHABLE
    assert g.fn("call_add", results=["i64"])(1, 1) == 2


def test_epoch_timeout(engine: WasmEngine) -> None:
    """An endless loop is interrupted after its deadline, with code INTERRUPT."""
    g = _Guest(engine)
    g.store.set_epoch_deadline(engine.deadline_ticks(30))
    started = time.monotonic()
    with pytest.raises(_raw.GuestTrap) as e:
        g.fn("spin")(0, 0)
    elapsed = time.monotonic() - started
    assert e.value.code is wasmtime.TrapCode.INTERRUPT
    assert 0.02 <= elapsed < 1.0


def test_epoch_timeout_after_starved_ticker(engine: WasmEngine) -> None:
    """
    A ticker that could not run for a while (another thread held the GIL)
    does not fire the next deadline early by catching up.
    """
    g = _Guest(engine)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1.0)  # this thread keeps the GIL while it spins
    try:
        until = time.monotonic() + 0.1
        while time.monotonic() < until:
            pass
        g.store.set_epoch_deadline(engine.deadline_ticks(30))
        started = time.monotonic()
        with pytest.raises(_raw.GuestTrap) as e:
            g.fn("spin")(0, 0)  # lets go of the GIL: the ticker runs again
        elapsed = time.monotonic() - started
    finally:
        sys.setswitchinterval(old)
    assert e.value.code is wasmtime.TrapCode.INTERRUPT
    assert 0.02 <= elapsed < 1.0


def test_out_of_fuel() -> None:
    e = _engine(fuel=True)
    g = _Guest(e, fuel=10_000)
    with pytest.raises(_raw.GuestTrap) as t:
        g.fn("spin")(0, 0)
    assert t.value.code is wasmtime.TrapCode.OUT_OF_FUEL


def test_host_error_traps_guest(engine: WasmEngine) -> None:
    """A host function's exception traps the guest and reaches on_error."""
    g = _Guest(engine)
    with pytest.raises(_raw.GuestTrap) as t:
        g.fn("call_fail")(0, 0)
    assert t.value.code is None
    assert len(g.errors) == 1 and str(g.errors[0]) == "host says no"


def test_ticker_start_stop_idempotent() -> None:
    e = _engine(tick_ms=1)
    before = threading.active_count()
    e.start()
    e.start()
    assert e.running and threading.active_count() == before + 1
    e.stop()
    e.stop()
    assert not e.running and threading.active_count() == before
    e.start()  # restartable
    assert e.running
    e.stop()


def test_deadline_ticks() -> None:
    e = _engine(tick_ms=1)
    assert e.deadline_ticks(50) == 51
    assert e.deadline_ticks(0.2) == 2
    e = _engine(tick_ms=10)
    assert e.deadline_ticks(50) == 6
    assert e.deadline_ticks(55) == 7
    with pytest.raises(ValueError):
        WasmEngine(tick_ms=0)


WASM = wasmtime.wat2wasm(wasm_guests.PASS_THROUGH)


def test_compile_memory_cache() -> None:
    e = _engine()
    m1 = e.compile(WASM)
    m2 = e.compile(bytes(WASM))
    assert m1 is m2
    assert e.compiles == 1 and e.deserializes == 0
    with pytest.raises(wasmtime.WasmtimeError):
        e.compile(b"\0asm garbage")


def test_disk_cache_deserializes(tmp_path) -> None:
    """A second engine with the same cache_dir loads instead of compiling."""
    cache = str(tmp_path / "cache")
    e1 = _engine(cache_dir=cache)
    e1.compile(WASM)
    assert (e1.compiles, e1.deserializes) == (1, 0)
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].endswith(".cwasm")
    assert e1.config_tag in files[0]
    e2 = _engine(cache_dir=cache)
    m = e2.compile(WASM)
    assert (e2.compiles, e2.deserializes) == (0, 1)
    assert [x.name for x in m.exports] == [x.name for x in e1.compile(WASM).exports]
    # Engines with another configuration use another file.
    e3 = _engine(cache_dir=cache, fuel=True)
    e3.compile(WASM)
    assert (e3.compiles, e3.deserializes) == (1, 0)
    assert len(os.listdir(cache)) == 2


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b[:-100] + bytes(100),  # payload changed
        lambda b: b"garbage",
        lambda b: b"",
    ],
    ids=["truncated", "flipped", "garbage", "empty"],
)
def test_corrupt_cache_file_ignored(tmp_path, damage) -> None:
    """A damaged cache file is recompiled and overwritten, never loaded."""
    cache = str(tmp_path)
    e1 = _engine(cache_dir=cache)
    e1.compile(WASM)
    (name,) = os.listdir(cache)
    path = os.path.join(cache, name)
    with open(path, "rb") as f:
        good = f.read()
    with open(path, "wb") as f:
        f.write(damage(good))
    e2 = _engine(cache_dir=cache)
    e2.compile(WASM)
    assert (e2.compiles, e2.deserializes, e2.cache_errors) == (1, 0, 1)
    assert os.listdir(cache) == [name]  # replaced in place, no temp files left
    e3 = _engine(cache_dir=cache)
    e3.compile(WASM)
    assert (e3.compiles, e3.deserializes) == (0, 1)


def test_foreign_cache_payload_rejected_by_wasmtime(tmp_path) -> None:
    """A well-framed file whose payload wasmtime refuses (e.g. another version) is replaced."""
    import hashlib

    from wasmgate.wasm import engine as engine_mod

    cache = str(tmp_path)
    e1 = _engine(cache_dir=cache)
    payload = b"not a serialized module from this wasmtime"
    path = e1.cache_path(hashlib.sha256(WASM).hexdigest())
    with open(path, "wb") as f:
        f.write(engine_mod._CACHE_MAGIC + hashlib.sha256(payload).digest() + payload)
    e1.compile(WASM)
    assert (e1.compiles, e1.deserializes, e1.cache_errors) == (1, 0, 1)


def test_unwritable_cache_dir_still_compiles(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    e = _engine(cache_dir=str(blocker / "sub"))
    e.compile(WASM)
    assert e.compiles == 1 and e.cache_errors == 1


# -- the module cache follows the live filters -------------------------------


def test_forget_digest_and_cached_digests() -> None:
    import hashlib

    e = _engine()
    m1 = e.compile(WASM)
    digest = hashlib.sha256(WASM).hexdigest()
    assert e.cached_digests() == {digest}
    e.forget_digest(digest)
    assert e.cached_digests() == frozenset()
    assert e.compile(WASM) is not m1 and e.compiles == 2


def test_runtime_caches_hold_only_live_filters(tmp_path) -> None:
    """
    Plugins replaced over and over (as C{reload_interval} does), with
    retired filters closed as a finished generation closes them: the
    runtime forgets each closed filter and the engine's memory cache keeps
    only modules some live filter was built from, so neither grows.
    """
    from twisted.python.threadpool import ThreadPool

    from tests.conftest import gateway_yaml
    from wasmgate.config import ConfigError, parse_config
    from wasmgate.state import MemoryCounterStore
    from wasmgate.wasm.runtime import WasmRuntime

    steady = tmp_path / "steady.wasm"
    steady.write_bytes(WASM)

    def config(version: int, *, twin: bool, guest: str | None = None):
        live = tmp_path / f"live-{version}.wasm"
        source = guest or wasm_guests.respond({"headers": {"x-version": str(version)}})
        live.write_bytes(wasmtime.wat2wasm(source))
        plugins = [f"  - {{name: live, path: {live}}}", f"  - {{name: steady, path: {steady}}}"]
        if twin:  # same bytes as steady: one module, two filters
            plugins.append(f"  - {{name: twin, path: {steady}, timeout_ms: 70}}")
        text = gateway_yaml("http://127.0.0.1:9").replace(
            "routes:\n", "plugins:\n" + "\n".join(plugins) + "\nroutes:\n"
        )
        return parse_config(text, source="gateway.yaml")

    runtime = WasmRuntime(
        config(0, twin=True),
        reactor=None,
        pool=ThreadPool(minthreads=0, maxthreads=1),
        state=MemoryCounterStore(),
    )
    try:
        current = runtime.load_filters(config(0, twin=True))
        first_steady = current["steady"]
        for version in range(1, 25):
            twin = version < 12
            broken = wasm_guests.MISSING_HANDLE_REQUEST if version % 5 == 0 else None
            try:
                new = runtime.load_filters(config(version, twin=twin, guest=broken), previous=current)
            except ConfigError:
                new = None  # a broken plugin: the current generation stays
            if new is not None:
                for f in current.values():  # what Generation.close does
                    if f not in new.values():
                        f.close()
                current = new
            live = set(current.values())
            assert set(runtime.live_filters()) == live
            assert runtime.engine.cached_digests() == {runtime.digest_of(f) for f in live}
        assert current["steady"] is first_steady and "twin" not in current
        assert len(runtime.engine.cached_digests()) == 2
    finally:
        for f in current.values():
            f.close()
        runtime.stop()
    assert runtime.live_filters() == [] and runtime.engine.cached_digests() == frozenset()
