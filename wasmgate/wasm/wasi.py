# -*- test-case-name: tests.test_wasi -*-
"""
A sandboxed subset of WASI preview 1 (import module
C{wasi_snapshot_preview1}), so that guests built for C{-target=wasi} --
TinyGo's Traefik plugins and the http-wasm-guest-tinygo examples -- load.

A guest sees a process with no arguments, no environment, no preopened
directories, no files and no sockets:

  - C{fd_write} to 1 (stdout) and 2 (stderr) goes to the plugin's log
    (info and warn), through the plugin's log rate limit, at most
    L{MAX_LOG_MESSAGE} bytes a call; stdin reads as empty. Any other fd is
    C{EBADF}; so is C{fd_prestat_get}, which tells a runtime that there are
    no preopened directories.
  - Clocks (realtime, monotonic), C{random_get} (the OS's CSPRNG) and
    C{sched_yield} work. C{poll_oneoff} on clock subscriptions returns at
    once, as if every timeout had passed: a filter never sleeps on a pool
    thread. Other subscriptions are C{ENOSYS}.
  - C{proc_exit} traps the guest (L{WasiExit}); the filter then treats the
    call as failed and discards the instance, as for any trap.
  - Every other function of the module that a guest imports gets a stub
    of exactly the declared type: C{ENOSYS} when it returns one i32 (an
    errno), a trap (L{WasiUnsupported}) otherwise. So any WASI guest
    loads, and what it may not do fails when it tries.

Guest pointers are untrusted: a struct, buffer or iovec outside linear
memory makes the function return C{EFAULT} (never a trap, never a host
error), having written nothing.
"""
from __future__ import annotations

import os
import struct
import time
from typing import Any, Callable, Optional

import wasmtime
from twisted.logger import LogLevel

from wasmgate.wasm import _raw
from wasmgate.wasm.hostfuncs import MAX_LOG_MESSAGE, HostEnv, HostFunc

MODULE = "wasi_snapshot_preview1"

# errno values (the preview 1 "errno" enum).
ESUCCESS = 0
EBADF = 8
EFAULT = 21
EINVAL = 28
ENOSYS = 52
ESPIPE = 70

CLOCK_REALTIME = 0
CLOCK_MONOTONIC = 1

FILETYPE_CHARACTER_DEVICE = 2
RIGHT_FD_READ = 1 << 1
RIGHT_FD_WRITE = 1 << 6
RIGHT_POLL_FD_READWRITE = 1 << 27

EVENTTYPE_CLOCK = 0

STDIN, STDOUT, STDERR = 0, 1, 2

IOV_MAX = 1024
"""Most iovecs one C{fd_read}/C{fd_write} takes (more: C{EINVAL}), as POSIX."""

MAX_SUBSCRIPTIONS = 1024
"""Most subscriptions one C{poll_oneoff} takes (more: C{EINVAL})."""

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_IOVEC = struct.Struct("<II")  # buf, buf_len
_SUBSCRIPTION_SIZE = 48  # userdata u64, tag u8 @8, contents @16
_EVENT = struct.Struct("<QHB5xQH6x")  # userdata, error, type, fd_readwrite (nbytes, flags)
_FDSTAT = struct.Struct("<BxHxxxxQQ")  # filetype, flags, rights_base, rights_inheriting

_STREAMS = {STDOUT: ("stdout", LogLevel.info), STDERR: ("stderr", LogLevel.warn)}


class WasiExit(Exception):
    """
    The guest called C{proc_exit}. Raised inside the host function, so the
    guest's call ends in a trap whose message names the exit code.

    @ivar code: the exit code, unsigned.
    """

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__("the guest called proc_exit(%d)" % (code,))


class WasiUnsupported(Exception):
    """A stubbed WASI function whose type has no errno to return was called."""


class _Errno(Exception):
    """Ends a WASI function early with an errno (see L{_returns_errno})."""

    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno


def _check(size: int, ptr: int, length: int) -> int:
    """C{ptr} as unsigned, or C{EFAULT} if C{[ptr, ptr+length)} leaves memory."""
    ptr &= _U32
    if ptr + length > size:
        raise _Errno(EFAULT)
    return ptr


def _read(base: int, size: int, ptr: int, length: int) -> bytes:
    try:
        return _raw.read(base, size, ptr, length)
    except IndexError:
        raise _Errno(EFAULT) from None


def _write(base: int, size: int, ptr: int, data: bytes) -> None:
    try:
        _raw.write(base, size, ptr, data)
    except IndexError:
        raise _Errno(EFAULT) from None


def _iovecs(base: int, size: int, iovs: int, count: int) -> list[tuple[int, int]]:
    """The C{(ptr, len)} of C{count} iovecs at C{iovs}, each checked against memory."""
    count &= _U32
    if count > IOV_MAX:
        raise _Errno(EINVAL)
    raw = _read(base, size, iovs, _IOVEC.size * count)
    out = []
    for ptr, length in _IOVEC.iter_unpack(raw):
        _check(size, ptr, length)
        out.append((ptr, length))
    return out


def _returns_errno(fn: Callable[..., int]) -> Callable[..., int]:
    def call(base: int, size: int, *args: int) -> int:
        try:
            return fn(base, size, *args)
        except _Errno as e:
            return e.errno

    call.__name__ = fn.__name__
    call.__doc__ = fn.__doc__
    return call


class WasiHost:
    """The WASI functions of one plugin (stateless apart from its L{HostEnv})."""

    def __init__(self, env: HostEnv) -> None:
        self.env = env
        self._realtime_res = max(1, int(time.get_clock_info("time").resolution * 1e9))
        self._monotonic_res = max(1, int(time.get_clock_info("monotonic").resolution * 1e9))

    def host_functions(self) -> dict[tuple[str, str], HostFunc]:
        i32, i64 = "i32", "i64"
        table: dict[str, tuple[tuple[str, ...], tuple[str, ...], Callable[..., Optional[int]]]] = {
            "args_get": ((i32, i32), (i32,), self.args_get),
            "args_sizes_get": ((i32, i32), (i32,), self.args_sizes_get),
            "environ_get": ((i32, i32), (i32,), self.args_get),
            "environ_sizes_get": ((i32, i32), (i32,), self.args_sizes_get),
            "clock_res_get": ((i32, i32), (i32,), self.clock_res_get),
            "clock_time_get": ((i32, i64, i32), (i32,), self.clock_time_get),
            "fd_close": ((i32,), (i32,), self.fd_close),
            "fd_fdstat_get": ((i32, i32), (i32,), self.fd_fdstat_get),
            "fd_prestat_get": ((i32, i32), (i32,), self.fd_prestat_get),
            "fd_prestat_dir_name": ((i32, i32, i32), (i32,), self.fd_prestat_dir_name),
            "fd_read": ((i32, i32, i32, i32), (i32,), self.fd_read),
            "fd_seek": ((i32, i64, i32, i32), (i32,), self.fd_seek),
            "fd_tell": ((i32, i32), (i32,), self.fd_tell),
            "fd_write": ((i32, i32, i32, i32), (i32,), self.fd_write),
            "poll_oneoff": ((i32, i32, i32, i32), (i32,), self.poll_oneoff),
            "proc_exit": ((i32,), (), self.proc_exit),
            "random_get": ((i32, i32), (i32,), self.random_get),
            "sched_yield": ((), (i32,), self.sched_yield),
        }
        out = {}
        for name, (params, results, method) in table.items():
            fn = _returns_errno(method) if results else method
            out[(MODULE, name)] = HostFunc(params, results, _constant(fn))
        return out

    # -- process: no arguments, no environment ---------------------------

    def args_get(self, base: int, size: int, argv: int, argv_buf: int) -> int:
        """Nothing to write: there are no arguments (or variables)."""
        return ESUCCESS

    def args_sizes_get(self, base: int, size: int, count_ptr: int, buf_size_ptr: int) -> int:
        """Zero arguments (or variables) taking zero bytes."""
        _check(size, count_ptr, 4)
        _check(size, buf_size_ptr, 4)
        _write(base, size, count_ptr, b"\0\0\0\0")
        _write(base, size, buf_size_ptr, b"\0\0\0\0")
        return ESUCCESS

    def proc_exit(self, base: int, size: int, code: int) -> None:
        raise WasiExit(code & _U32)

    def sched_yield(self, base: int, size: int) -> int:
        return ESUCCESS

    # -- clocks and randomness ---------------------------------------------

    def clock_res_get(self, base: int, size: int, clock_id: int, res_ptr: int) -> int:
        clock_id &= _U32
        if clock_id == CLOCK_REALTIME:
            res = self._realtime_res
        elif clock_id == CLOCK_MONOTONIC:
            res = self._monotonic_res
        else:
            return EINVAL
        _write(base, size, res_ptr, struct.pack("<Q", res))
        return ESUCCESS

    def clock_time_get(self, base: int, size: int, clock_id: int, precision: int, time_ptr: int) -> int:
        clock_id &= _U32
        if clock_id == CLOCK_REALTIME:
            clock = self.env.wall_clock
            now = time.time_ns() if clock is time.time else int(clock() * 1e9)
        elif clock_id == CLOCK_MONOTONIC:
            now = time.monotonic_ns()
        else:
            return EINVAL
        _write(base, size, time_ptr, struct.pack("<Q", now & _U64))
        return ESUCCESS

    def random_get(self, base: int, size: int, buf: int, length: int) -> int:
        length &= _U32
        buf = _check(size, buf, length)
        _write(base, size, buf, os.urandom(length))
        return ESUCCESS

    def poll_oneoff(self, base: int, size: int, subs_ptr: int, events_ptr: int, count: int, nevents_ptr: int) -> int:
        """
        Clock subscriptions fire at once (the guest must not block a pool
        thread); I/O subscriptions are C{ENOSYS}.
        """
        count &= _U32
        if count == 0 or count > MAX_SUBSCRIPTIONS:
            return EINVAL
        subs = _read(base, size, subs_ptr, _SUBSCRIPTION_SIZE * count)
        events_ptr = _check(size, events_ptr, _EVENT.size * count)
        _check(size, nevents_ptr, 4)
        events = bytearray()
        for i in range(count):
            off = i * _SUBSCRIPTION_SIZE
            userdata, tag = struct.unpack_from("<QB", subs, off)
            if tag != EVENTTYPE_CLOCK:
                return ENOSYS
            (clock_id,) = struct.unpack_from("<I", subs, off + 16)
            error = ESUCCESS if clock_id in (CLOCK_REALTIME, CLOCK_MONOTONIC) else EINVAL
            events += _EVENT.pack(userdata, error, EVENTTYPE_CLOCK, 0, 0)
        _write(base, size, events_ptr, bytes(events))
        _write(base, size, nevents_ptr, struct.pack("<I", count))
        return ESUCCESS

    # -- file descriptors: stdio only --------------------------------------

    def fd_write(self, base: int, size: int, fd: int, iovs: int, iovs_len: int, nwritten_ptr: int) -> int:
        stream = _STREAMS.get(fd & _U32)
        if stream is None:
            return EBADF
        vecs = _iovecs(base, size, iovs, iovs_len)
        _check(size, nwritten_ptr, 4)
        total = sum(length for _, length in vecs)
        if total > _U32:
            return EINVAL
        self._log(base, size, stream, vecs, total)
        _write(base, size, nwritten_ptr, struct.pack("<I", total))
        return ESUCCESS

    def _log(self, base: int, size: int, stream: tuple[str, LogLevel], vecs: list[tuple[int, int]], total: int) -> None:
        """One log event per call (TinyGo's runtime already writes whole lines)."""
        parts = []
        room = MAX_LOG_MESSAGE
        for ptr, length in vecs:
            if room <= 0:
                break
            take = min(length, room)
            parts.append(_read(base, size, ptr, take))
            room -= take
        data = b"".join(parts)
        text = data.decode("utf-8", "replace")
        if text.endswith("\n"):
            text = text[:-2] if text.endswith("\r\n") else text[:-1]
        if not text:
            return
        allowed, refused = self.env.log_bucket.take()
        if not allowed:
            return
        if total > len(data):
            text += " (%d more bytes not logged)" % (total - len(data),)
        if refused:
            text += " (%d earlier messages from this plugin suppressed)" % (refused,)
        name, level = stream
        self.env.log.emit(
            level,
            "plugin {plugin} ({stream}): {message}",
            plugin=self.env.plugin,
            stream=name,
            message=text,
        )

    def fd_read(self, base: int, size: int, fd: int, iovs: int, iovs_len: int, nread_ptr: int) -> int:
        """stdin is empty (reads hit end of file at once); other fds do not exist."""
        if fd & _U32 != STDIN:
            return EBADF
        _iovecs(base, size, iovs, iovs_len)
        _write(base, size, nread_ptr, b"\0\0\0\0")
        return ESUCCESS

    def fd_close(self, base: int, size: int, fd: int) -> int:
        """Closing stdio succeeds and changes nothing; other fds do not exist."""
        return ESUCCESS if fd & _U32 in (STDIN, STDOUT, STDERR) else EBADF

    def fd_seek(self, base: int, size: int, fd: int, offset: int, whence: int, newoffset_ptr: int) -> int:
        """stdio are character devices: not seekable."""
        return ESPIPE if fd & _U32 in (STDIN, STDOUT, STDERR) else EBADF

    def fd_tell(self, base: int, size: int, fd: int, offset_ptr: int) -> int:
        return ESPIPE if fd & _U32 in (STDIN, STDOUT, STDERR) else EBADF

    def fd_fdstat_get(self, base: int, size: int, fd: int, stat_ptr: int) -> int:
        fd &= _U32
        if fd == STDIN:
            rights = RIGHT_FD_READ | RIGHT_POLL_FD_READWRITE
        elif fd in (STDOUT, STDERR):
            rights = RIGHT_FD_WRITE | RIGHT_POLL_FD_READWRITE
        else:
            return EBADF
        _write(base, size, stat_ptr, _FDSTAT.pack(FILETYPE_CHARACTER_DEVICE, 0, rights, 0))
        return ESUCCESS

    def fd_prestat_get(self, base: int, size: int, fd: int, prestat_ptr: int) -> int:
        """No preopened directories: runtimes probe from fd 3 up and stop here."""
        return EBADF

    def fd_prestat_dir_name(self, base: int, size: int, fd: int, path: int, path_len: int) -> int:
        return EBADF


def _constant(fn: Callable[..., Optional[int]]) -> Callable[[Any], Callable[..., Optional[int]]]:
    """A C{HostFunc.make} for a function that needs no per-instance state."""
    return lambda ctx: fn


def _plain_sig(ty: Any) -> Optional[tuple[tuple[str, ...], tuple[str, ...]]]:
    """C{(params, results)} of a function type of i32/i64 only, else None."""
    if not isinstance(ty, wasmtime.FuncType):
        return None
    params = tuple(str(p) for p in ty.params)
    results = tuple(str(r) for r in ty.results)
    if not set(params + results) <= {"i32", "i64"}:
        return None
    return params, results


def _stub(name: str, params: tuple[str, ...], results: tuple[str, ...]) -> HostFunc:
    """A function wasmgate does not provide, of the type the guest declared."""
    if results == ("i32",):

        def enosys(base: int, size: int, *args: int) -> int:
            return ENOSYS

        return HostFunc(params, results, _constant(enosys))

    def unsupported(base: int, size: int, *args: int) -> None:
        raise WasiUnsupported("%s.%s is not supported by wasmgate" % (MODULE, name))

    return HostFunc(params, results, _constant(unsupported))


def wasi_functions(env: HostEnv, module: wasmtime.Module) -> dict[tuple[str, str], HostFunc]:
    """
    The C{wasi_snapshot_preview1} import module for one plugin: the
    functions above, plus a stub for each other function of the module
    that C{module} imports. An import of a provided function with a type
    other than the specification's is left for the caller to report, as
    is one using types other than i32/i64.
    """
    table = WasiHost(env).host_functions()
    for imp in module.imports:
        if imp.module != MODULE or (MODULE, imp.name) in table:
            continue
        sig = _plain_sig(imp.type)
        if sig is not None:
            table[(MODULE, imp.name)] = _stub(imp.name, *sig)
    return table
