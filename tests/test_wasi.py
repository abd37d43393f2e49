"""
Tests for L{wasmgate.wasm.wasi}: http-wasm guests that import WASI the way
TinyGo's C{-target=wasi} builds do, in real filters (both call paths) and
in a real gateway.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
import wasmtime
from twisted.logger import Logger, LogLevel, globalLogPublisher

from tests import httpwasm_guests as hw
from wasmgate.testing import load_wasm, make_request
from wasmgate.wasm.engine import WasmEngine
from wasmgate.wasm.filter import FilterFailure, PluginLoadError, WasmFilter
from wasmgate.wasm.inspect import inspect_module
from wasmgate.wasm.messages import Continue
from wasmgate.wasm.wasi import EBADF, EFAULT, EINVAL, ENOSYS, ESPIPE

# What TinyGo's runtime and wasi-libc import, with TinyGo's types; plus
# path_open (never implemented: the ENOSYS stub) and a made-up function
# with no result (the trapping stub).
WASI_IMPORTS = """
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_seek" (func $fd_seek (param i32 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fd_fdstat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name" (func $fd_prestat_dir_name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_res_get" (func $clock_res_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sched_yield" (func $sched_yield (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_fork" (func $proc_fork (param i32)))
"""

# Memory (besides tests.httpwasm_guests' areas): IOV 20000 (iovecs), OUT
# 20480 (results), STAT 20608 (fdstat), SUBS 20736, EVENTS 20864, RAND
# 21000, START 21100 (errnos seen by _start, as i32s).
_s = hw.Strings()
# (lines: f-string expressions cannot hold a backslash)
_L_GUEST_STARTED = _s("guest started\n")
_L_FROM_STDOUT = _s("from stdout\n")
_L_OOPS_ON_STDERR = _s("oops on stderr\n")
_L_NOWHERE = _s("nowhere\n")
_L_FLOOD_LINE = _s("flood line\n")
_L_NEVER_LOGGED = _s("never logged\n")
TINYGO_LIKE = "(module\n%s%s%s%s\n%s\n)" % (
    hw.IMPORTS,
    WASI_IMPORTS,
    hw.HELPERS,
    f"""
  (func $iov (param $at i32) (param $ptr i32) (param $len i32)
    (i32.store (local.get $at) (local.get $ptr))
    (i32.store (i32.add (local.get $at) (i32.const 4)) (local.get $len)))
  ;; fd_write of one buffer; nwritten at OUT
  (func $put (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (call $iov (i32.const 20000) (local.get $ptr) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 20000) (i32.const 1) (i32.const 20480)))
  (func $r (param $name i32) (param $len i32) (param $v i32)
    (call $report (local.get $name) (local.get $len) (i64.extend_i32_u (local.get $v))))

  ;; What TinyGo's runtime and wasi-libc do at start-up.
  (func (export "_start")
    (local $fd i32)
    (i32.store (i32.const 21100) (call $args_sizes_get (i32.const 20480) (i32.const 20484)))
    (i32.store (i32.const 21104) (call $environ_sizes_get (i32.const 20480) (i32.const 20484)))
    ;; preopens: probe from fd 3 until EBADF
    (local.set $fd (i32.const 3))
    (block $done
      (loop $next
        (i32.store (i32.const 21108) (call $fd_prestat_get (local.get $fd) (i32.const 20480)))
        (br_if $done (i32.ne (i32.load (i32.const 21108)) (i32.const 0)))
        (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
        (br_if $next (i32.lt_u (local.get $fd) (i32.const 64)))))
    (i32.store (i32.const 21112) (call $random_get (i32.const 21000) (i32.const 8)))
    (i32.store (i32.const 21116) (call $put (i32.const 1) {_L_GUEST_STARTED})))

  (func (export "handle_request") (result i64)
    (local $c i32) (local $i i32)
    (drop (call $get_uri (i32.const 8192) (i32.const 1024)))
    (local.set $c (i32.load8_u (i32.const 8193)))

    ;; /out: stdout (two iovecs), stderr, and an fd that does not exist
    (if (i32.eq (local.get $c) (i32.const 111))
      (then
        (call $iov (i32.const 20000) {_s("hello ")})
        (call $iov (i32.const 20008) {_L_FROM_STDOUT})
        (call $r {_s("x-out-errno")}
          (call $fd_write (i32.const 1) (i32.const 20000) (i32.const 2) (i32.const 20480)))
        (call $r {_s("x-out-n")} (i32.load (i32.const 20480)))
        (call $r {_s("x-err-errno")} (call $put (i32.const 2) {_L_OOPS_ON_STDERR}))
        (call $r {_s("x-err-n")} (i32.load (i32.const 20480)))
        (call $r {_s("x-fd7-errno")} (call $put (i32.const 7) {_L_NOWHERE}))))

    ;; /flood: 200 lines in one call
    (if (i32.eq (local.get $c) (i32.const 102))
      (then
        (block $done
          (loop $next
            (br_if $done (i32.ge_u (local.get $i) (i32.const 200)))
            (drop (call $put (i32.const 1) {_L_FLOOD_LINE}))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $next)))))

    ;; /huge: 60000 bytes of memory in one write
    (if (i32.eq (local.get $c) (i32.const 104))
      (then
        (call $r {_s("x-huge-errno")} (call $put (i32.const 1) (i32.const 0) (i32.const 60000)))
        (call $r {_s("x-huge-n")} (i32.load (i32.const 20480)))))

    ;; /random
    (if (i32.eq (local.get $c) (i32.const 114))
      (then
        (call $r {_s("x-rand-errno")} (call $random_get (i32.const 21000) (i32.const 32)))
        (call $report {_s("x-rand-a")} (i64.load (i32.const 21000)))
        (call $report {_s("x-rand-b")} (i64.load (i32.const 21024)))
        (call $r {_s("x-rand0-errno")} (call $random_get (i32.const 21000) (i32.const 0)))))

    ;; /clock
    (if (i32.eq (local.get $c) (i32.const 99))
      (then
        (call $r {_s("x-real-errno")} (call $clock_time_get (i32.const 0) (i64.const 1000) (i32.const 20480)))
        (call $report {_s("x-real")} (i64.load (i32.const 20480)))
        (call $r {_s("x-mono-errno")} (call $clock_time_get (i32.const 1) (i64.const 0) (i32.const 20480)))
        (call $report {_s("x-mono")} (i64.load (i32.const 20480)))
        (call $r {_s("x-cpu-errno")} (call $clock_time_get (i32.const 2) (i64.const 0) (i32.const 20480)))
        (call $r {_s("x-res-errno")} (call $clock_res_get (i32.const 1) (i32.const 20496)))
        (call $report {_s("x-res")} (i64.load (i32.const 20496)))
        (call $r {_s("x-res9-errno")} (call $clock_res_get (i32.const 9) (i32.const 20496)))))

    ;; /stub: a WASI function wasmgate does not implement
    (if (i32.eq (local.get $c) (i32.const 115))
      (then
        (call $r {_s("x-open-errno")}
          (call $path_open (i32.const 3) (i32.const 0) {_s("/etc/passwd")} (i32.const 0)
            (i64.const -1) (i64.const -1) (i32.const 0) (i32.const 20480)))))

    ;; /void: the stub without an errno traps
    (if (i32.eq (local.get $c) (i32.const 118))
      (then (call $proc_fork (i32.const 1))))

    ;; /exit and /zero
    (if (i32.eq (local.get $c) (i32.const 101))
      (then (call $proc_exit (i32.const 7))))
    (if (i32.eq (local.get $c) (i32.const 122))
      (then (call $proc_exit (i32.const 0))))

    ;; /bad: pointers outside memory (one page: 65536 bytes)
    (if (i32.eq (local.get $c) (i32.const 98))
      (then
        (call $r {_s("x-bad-iovs")}
          (call $fd_write (i32.const 1) (i32.const -16) (i32.const 1) (i32.const 20480)))
        (call $iov (i32.const 20000) (i32.const 65000) (i32.const 1000))
        (call $r {_s("x-bad-iov-buf")}
          (call $fd_write (i32.const 1) (i32.const 20000) (i32.const 1) (i32.const 20480)))
        (call $iov (i32.const 20000) (i32.const -1) (i32.const 2))
        (call $r {_s("x-bad-iov-wrap")}
          (call $fd_write (i32.const 2) (i32.const 20000) (i32.const 1) (i32.const 20480)))
        (call $iov (i32.const 20000) {_L_NEVER_LOGGED})
        (call $r {_s("x-bad-nwritten")}
          (call $fd_write (i32.const 1) (i32.const 20000) (i32.const 1) (i32.const 65534)))
        (call $r {_s("x-many-iovs")}
          (call $fd_write (i32.const 1) (i32.const 20000) (i32.const 5000) (i32.const 20480)))
        (call $r {_s("x-bad-rand")} (call $random_get (i32.const 65530) (i32.const 100)))
        (call $r {_s("x-bad-rand-wrap")} (call $random_get (i32.const -1) (i32.const 2)))
        (call $r {_s("x-bad-clock")} (call $clock_time_get (i32.const 0) (i64.const 0) (i32.const 65535)))
        (call $r {_s("x-bad-args")} (call $args_sizes_get (i32.const -4) (i32.const 20480)))
        (call $r {_s("x-bad-fdstat")} (call $fd_fdstat_get (i32.const 1) (i32.const 65530)))
        (call $r {_s("x-bad-poll")}
          (call $poll_oneoff (i32.const -48) (i32.const 20864) (i32.const 1) (i32.const 20480)))
        (call $r {_s("x-bad-read")} (call $fd_read (i32.const 0) (i32.const -8) (i32.const 1) (i32.const 20480)))))

    ;; /proc: the empty process, stdio, poll
    (if (i32.eq (local.get $c) (i32.const 112))
      (then
        (call $r {_s("x-start-args")} (i32.load (i32.const 21100)))
        (call $r {_s("x-start-env")} (i32.load (i32.const 21104)))
        (call $r {_s("x-start-prestat")} (i32.load (i32.const 21108)))
        (call $r {_s("x-start-rand")} (i32.load (i32.const 21112)))
        (call $r {_s("x-start-write")} (i32.load (i32.const 21116)))
        (i64.store (i32.const 20480) (i64.const -1))
        (call $r {_s("x-args-errno")} (call $args_sizes_get (i32.const 20480) (i32.const 20484)))
        (call $report {_s("x-args-sizes")} (i64.load (i32.const 20480)))
        (i64.store (i32.const 20480) (i64.const -1))
        (call $r {_s("x-env-errno")} (call $environ_sizes_get (i32.const 20480) (i32.const 20484)))
        (call $report {_s("x-env-sizes")} (i64.load (i32.const 20480)))
        (call $r {_s("x-argsget-errno")} (call $args_get (i32.const 20480) (i32.const 20484)))
        (call $r {_s("x-envget-errno")} (call $environ_get (i32.const 20480) (i32.const 20484)))
        (call $r {_s("x-prestat3")} (call $fd_prestat_get (i32.const 3) (i32.const 20480)))
        (call $r {_s("x-prestat-name")} (call $fd_prestat_dir_name (i32.const 3) (i32.const 20480) (i32.const 8)))
        (call $r {_s("x-stat1-errno")} (call $fd_fdstat_get (i32.const 1) (i32.const 20608)))
        (call $r {_s("x-stat1-type")} (i32.load8_u (i32.const 20608)))
        (call $report {_s("x-stat1-rights")} (i64.load (i32.const 20616)))
        (call $r {_s("x-stat0-errno")} (call $fd_fdstat_get (i32.const 0) (i32.const 20608)))
        (call $report {_s("x-stat0-rights")} (i64.load (i32.const 20616)))
        (call $r {_s("x-stat5")} (call $fd_fdstat_get (i32.const 5) (i32.const 20608)))
        (call $r {_s("x-seek1")} (call $fd_seek (i32.const 1) (i64.const 0) (i32.const 0) (i32.const 20480)))
        (call $r {_s("x-seek9")} (call $fd_seek (i32.const 9) (i64.const 0) (i32.const 0) (i32.const 20480)))
        (call $r {_s("x-close9")} (call $fd_close (i32.const 9)))
        (call $iov (i32.const 20000) (i32.const 8192) (i32.const 100))
        (i32.store (i32.const 20480) (i32.const -1))
        (call $r {_s("x-read0-errno")}
          (call $fd_read (i32.const 0) (i32.const 20000) (i32.const 1) (i32.const 20480)))
        (call $r {_s("x-read0-n")} (i32.load (i32.const 20480)))
        (call $r {_s("x-read3")} (call $fd_read (i32.const 3) (i32.const 20000) (i32.const 1) (i32.const 20480)))
        (call $r {_s("x-yield")} (call $sched_yield))
        ;; one relative clock subscription of 5 s: returns at once
        (i64.store (i32.const 20736) (i64.const 0x1234))
        (i32.store8 (i32.const 20744) (i32.const 0))
        (i32.store (i32.const 20752) (i32.const 1))
        (i64.store (i32.const 20760) (i64.const 5000000000))
        (i64.store (i32.const 20768) (i64.const 0))
        (i32.store16 (i32.const 20776) (i32.const 0))
        (i64.store (i32.const 20864) (i64.const -1))
        (i64.store (i32.const 20872) (i64.const -1))
        (i32.store (i32.const 20480) (i32.const -1))
        (call $r {_s("x-poll-errno")}
          (call $poll_oneoff (i32.const 20736) (i32.const 20864) (i32.const 1) (i32.const 20480)))
        (call $r {_s("x-poll-n")} (i32.load (i32.const 20480)))
        (call $report {_s("x-poll-userdata")} (i64.load (i32.const 20864)))
        (call $r {_s("x-poll-error-type")} (i32.load (i32.const 20872)))
        ;; an fd_read subscription: not supported
        (i32.store8 (i32.const 20744) (i32.const 1))
        (call $r {_s("x-poll-fd")}
          (call $poll_oneoff (i32.const 20736) (i32.const 20864) (i32.const 1) (i32.const 20480)))
        (call $r {_s("x-poll-none")}
          (call $poll_oneoff (i32.const 20736) (i32.const 20864) (i32.const 0) (i32.const 20480)))))

    (i64.const 1))
""",
    _s.segments(),
)


@pytest.fixture(scope="module", params=[True, False], ids=["raw", "checked"])
def engine(request: pytest.FixtureRequest) -> Iterator[WasmEngine]:
    e = WasmEngine(raw_calls=request.param)
    e.start()
    yield e
    e.stop()


def capture() -> tuple[Logger, list[dict]]:
    events: list[dict] = []
    return Logger(namespace="test", observer=events.append), events


def logged(events: list[dict]) -> list[tuple[str, str]]:
    return [(e["log_level"].name, e["message"]) for e in events if "message" in e]


def make(engine: WasmEngine, source: Any = TINYGO_LIKE, **kw: Any) -> WasmFilter:
    return WasmFilter(name="tinygo", module=engine.compile(load_wasm(source)), engine=engine, **kw)


def call(f: WasmFilter, path: str) -> dict[str, int]:
    """Run a request for C{path}; the numbers the guest reported, by header."""
    outcome = f.run_request(make_request(path=path))
    assert isinstance(outcome, Continue)
    return {name: hw.hex_field(value) for name, value in outcome.response_headers}


def test_loads_and_inspects(engine: WasmEngine) -> None:
    log, events = capture()
    f = make(engine, log=log)
    assert f.abi_name == "http-wasm"
    assert ("info", "guest started") in logged(events)  # _start's fd_write
    f.close()
    report = inspect_module(load_wasm(TINYGO_LIKE), engine)
    assert (report.ok, report.abi, report.problems) == (True, "http-wasm", [])
    assert "wasi_snapshot_preview1.path_open: func (i32, i32, i32, i32, i32, i64, i64, i32, i32) -> (i32)" in report.imports
    assert "loads: yes" in report.text()


def test_empty_process_and_stdio(engine: WasmEngine) -> None:
    f = make(engine)
    r = call(f, "/proc")
    # What _start saw: no args, no environment, no preopens (EBADF at fd 3).
    assert (r["x-start-args"], r["x-start-env"], r["x-start-prestat"]) == (0, 0, EBADF)
    assert (r["x-start-rand"], r["x-start-write"]) == (0, 0)
    assert (r["x-args-errno"], r["x-args-sizes"]) == (0, 0)  # both u32s were written
    assert (r["x-env-errno"], r["x-env-sizes"]) == (0, 0)
    assert (r["x-argsget-errno"], r["x-envget-errno"]) == (0, 0)
    assert (r["x-prestat3"], r["x-prestat-name"]) == (EBADF, EBADF)
    # stdio are character devices with read / write rights.
    assert (r["x-stat1-errno"], r["x-stat1-type"]) == (0, 2)
    assert r["x-stat1-rights"] == (1 << 6) | (1 << 27)
    assert (r["x-stat0-errno"], r["x-stat0-rights"]) == (0, (1 << 1) | (1 << 27))
    assert r["x-stat5"] == EBADF
    assert (r["x-seek1"], r["x-seek9"], r["x-close9"]) == (ESPIPE, EBADF, EBADF)
    assert (r["x-read0-errno"], r["x-read0-n"], r["x-read3"]) == (0, 0, EBADF)  # stdin is empty
    assert r["x-yield"] == 0
    f.close()


def test_poll_oneoff_clock_returns_at_once(engine: WasmEngine) -> None:
    f = make(engine)
    started = time.monotonic()
    r = call(f, "/proc")
    assert time.monotonic() - started < 2  # the guest asked to sleep 5 s
    assert (r["x-poll-errno"], r["x-poll-n"], r["x-poll-userdata"]) == (0, 1, 0x1234)
    assert r["x-poll-error-type"] & 0xFFFFFF == 0  # error 0, type clock
    assert (r["x-poll-fd"], r["x-poll-none"]) == (ENOSYS, EINVAL)
    f.close()


def test_stdout_and_stderr_go_to_the_plugin_log(engine: WasmEngine) -> None:
    log, events = capture()
    f = make(engine, log=log)
    r = call(f, "/out")
    assert (r["x-out-errno"], r["x-out-n"]) == (0, len("hello from stdout\n"))
    assert (r["x-err-errno"], r["x-err-n"]) == (0, len("oops on stderr\n"))
    assert r["x-fd7-errno"] == EBADF
    lines = logged(events)
    assert ("info", "hello from stdout") in lines
    assert ("warn", "oops on stderr") in lines
    assert not any("nowhere" in m for _, m in lines)
    stdout = [e for e in events if e.get("message") == "hello from stdout"][0]
    assert (stdout["plugin"], stdout["stream"]) == ("tinygo", "stdout")
    f.close()


def test_output_is_bounded_and_rate_limited(engine: WasmEngine) -> None:
    log, events = capture()
    f = make(engine, log=log)
    r = call(f, "/huge")
    assert (r["x-huge-errno"], r["x-huge-n"]) == (0, 60000)  # all of it "written"
    huge = [m for _, m in logged(events) if "more bytes not logged" in m]
    assert len(huge) == 1 and len(huge[0]) < 4200
    events.clear()
    call(f, "/flood")  # 200 lines at once: the plugin's log bucket lets ~50 through
    flood = [m for _, m in logged(events) if m == "flood line"]
    assert 10 < len(flood) < 100
    f.close()


def test_random_and_clocks(engine: WasmEngine) -> None:
    f = make(engine)
    first, second = call(f, "/random"), call(f, "/random")
    assert first["x-rand-errno"] == second["x-rand-errno"] == first["x-rand0-errno"] == 0
    values = {first["x-rand-a"], first["x-rand-b"], second["x-rand-a"], second["x-rand-b"]}
    assert len(values) == 4 and 0 not in values

    before = time.time_ns()
    r = call(f, "/clock")
    after = time.time_ns()
    assert r["x-real-errno"] == 0 and before <= r["x-real"] <= after
    assert r["x-mono-errno"] == 0 and 0 < r["x-mono"] <= time.monotonic_ns()
    assert call(f, "/clock")["x-mono"] >= r["x-mono"]
    assert r["x-cpu-errno"] == EINVAL  # only realtime and monotonic
    assert r["x-res-errno"] == 0 and 0 < r["x-res"] <= 1_000_000
    assert r["x-res9-errno"] == EINVAL
    f.close()


def test_unimplemented_functions(engine: WasmEngine) -> None:
    f = make(engine)
    assert call(f, "/stub")["x-open-errno"] == ENOSYS
    with pytest.raises(FilterFailure) as e:
        call(f, "/void")
    assert e.value.kind == "trap"
    assert "wasi_snapshot_preview1.proc_fork is not supported" in e.value.message
    assert call(f, "/stub")["x-open-errno"] == ENOSYS  # a new instance serves on
    f.close()


def test_proc_exit_traps_with_the_code(engine: WasmEngine) -> None:
    f = make(engine)
    with pytest.raises(FilterFailure) as e:
        call(f, "/exit")
    assert e.value.kind == "trap"
    assert "proc_exit(7)" in e.value.message
    with pytest.raises(FilterFailure) as e:
        call(f, "/zero")
    assert "proc_exit(0)" in e.value.message  # in a request: a failure
    assert call(f, "/out")["x-out-errno"] == 0
    f.close()


def test_bad_pointers_are_efault(engine: WasmEngine) -> None:
    log, events = capture()
    f = make(engine, log=log)
    r = call(f, "/bad")
    assert r.pop("x-many-iovs") == EINVAL  # more than IOV_MAX iovecs
    assert r == {name: EFAULT for name in r}, r
    assert len(r) == 11
    assert not any("never logged" in m for _, m in logged(events))
    # The instance is unharmed and keeps serving.
    assert call(f, "/out")["x-out-n"] == len("hello from stdout\n")
    f.close()


def test_what_still_does_not_load(engine: WasmEngine) -> None:
    imports = """
      (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "float_thing" (func (param f32) (result i32)))
      (import "wasi_snapshot_preview1" "path_open"
        (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
    """
    wat = "(module %s %s)" % (imports, hw.MINIMAL.strip()[len("(module"):-1])
    with pytest.raises(PluginLoadError) as e:
        make(engine, wat)
    assert e.value.what.split("; ") == [
        # a provided function with another type than WASI's is still an error
        "imports wasi_snapshot_preview1.fd_write with type (i32, i32) -> (i32),"
        " but the host provides (i32, i32, i32, i32) -> (i32)",
        # so is an unknown one whose types the host cannot express
        "imports wasi_snapshot_preview1.float_thing, which the host does not provide",
    ]  # path_open is stubbed


def test_stubs_take_the_declared_type(engine: WasmEngine) -> None:
    wat = """
    (module
      (import "wasi_snapshot_preview1" "sock_accept" (func $a (param i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_pread" (func $b (param i32 i32 i32 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "made_up" (func $c (param i64) (result i64)))
      (memory (export "memory") 1)
      (func (export "handle_request") (result i64)
        (i64.extend_i32_u (i32.add
          (call $a (i32.const 0) (i32.const 0) (i32.const 0))
          (call $b (i32.const 0) (i32.const 0) (i32.const 0) (i64.const 0) (i32.const 0))))))
    """
    f = make(engine, wat)
    with pytest.raises(FilterFailure) as e:
        f.run_request(make_request())
    # 52 + 52 = 104 as "next": the stubs ran and returned ENOSYS each
    assert "next=104" in e.value.message
    f.close()


# -- in a real gateway --------------------------------------------------------


@pytest.fixture
def plugin_log() -> Iterator[list[dict]]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest_twisted.ensureDeferred
async def test_tinygo_like_guest_in_the_gateway(tmp_path: Path, upstream, start_gateway, http, plugin_log):
    path = tmp_path / "tinygo.wasm"
    path.write_bytes(wasmtime.wat2wasm(TINYGO_LIKE))
    gw = start_gateway(
        f"""
server:
  listen: "tcp:0:interface=127.0.0.1"
plugins:
  - {{name: tinygo, path: {path}}}
routes:
  - {{name: all, match: {{path_prefix: /}}, filters: [tinygo], upstream: backend}}
upstreams:
  backend: {{targets: ["{upstream.url}"]}}
"""
    )
    response = await http.get(gw.url + "/out")
    body = await response.content()
    assert response.code == 200
    assert json.loads(body)["uri"] == "/out"  # the upstream answered
    assert hw.hex_field(response.headers.getRawHeaders("x-out-n")[0]) == len("hello from stdout\n")
    texts = [(e.get("log_level"), e.get("message")) for e in plugin_log if e.get("plugin") == "tinygo"]
    assert (LogLevel.info, "hello from stdout") in texts
    assert (LogLevel.warn, "oops on stderr") in texts

    response = await http.get(gw.url + "/exit")
    await response.content()
    assert response.code == 502  # failure_policy closed
    assert any("proc_exit(7)" in str(e.get("message", "")) for e in plugin_log)

    response = await http.get(gw.url + "/bad")
    await response.content()
    assert response.code == 200
    assert hw.hex_field(response.headers.getRawHeaders("x-bad-iovs")[0]) == EFAULT


# TinyGo 0.35 and later: _start runs main, then calls proc_exit(0).
TINYGO_EXITS_AFTER_MAIN = TINYGO_LIKE.replace(
    '(func (export "_start")',
    '(func (export "_start")\n    (call $main)\n    (call $proc_exit (i32.const 0)))\n  (func $main',
    1,
)


def test_start_ending_in_proc_exit_zero_is_a_finished_start(engine: WasmEngine) -> None:
    """
    A guest whose _start exits with 0 after main (TinyGo 0.35+) loads and
    serves; one that exits with another code does not load.
    """
    log, events = capture()
    f = make(engine, TINYGO_EXITS_AFTER_MAIN, log=log)
    assert ("info", "guest started") in logged(events)
    assert call(f, "/out")["x-out-errno"] == 0
    assert call(f, "/out")["x-out-errno"] == 0  # and again, on the same instance
    f.close()
    failing = TINYGO_EXITS_AFTER_MAIN.replace("(call $proc_exit (i32.const 0))", "(call $proc_exit (i32.const 3))")
    with pytest.raises(PluginLoadError, match=r"proc_exit\(3\)"):
        make(engine, failing)
