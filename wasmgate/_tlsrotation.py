# -*- test-case-name: tests.test_tls -*-
"""
Certificate rotation: re-reading a store's files when they change (on
demand, on SIGHUP, or by a watcher on the reactor), swapping in each good
new pair for new handshakes and reporting each bad one once while the
previous certificate stays in service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from OpenSSL import SSL
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from wasmgate._tlscheck import CertificateSpec, covers
from wasmgate._tlsfiles import (
    LoadedPair,
    PairError,
    describe,
    load_pair,
    read_snapshot,
    stat_signature,
)

if TYPE_CHECKING:
    from wasmgate._tlsmetrics import TLSMetrics


@dataclass(eq=False)
class Entry:
    """
    The store's bookkeeping for one L{CertificateSpec}.
    """

    spec: CertificateSpec
    hosts: tuple[str, ...]
    pair: LoadedPair
    context: SSL.Context
    seen: tuple[object, object]
    # (cert sha, key sha) and problems of a bad pair not reported yet
    pending: tuple[tuple[str | None, str | None], list[str]] | None = None
    # (cert sha, key sha) of the last bad pair reported, to report it once
    failed: tuple[str | None, str | None] | None = None


def still_covers(entry: "Entry", pair: LoadedPair) -> None:
    """
    Refuse a replacement that no longer covers a configured host the
    current certificate covers (the wrong file deployed): clients would
    fail their handshakes.

    @raise PairError: naming the hosts it leaves out.
    """
    current, new = entry.pair.dns_names(), pair.dns_names()
    lost = [host for host in entry.hosts if covers(current, host) and not covers(new, host)]
    if lost:
        raise PairError(
            [
                f"{entry.spec.cert}: the new certificate does not cover host(s) {', '.join(lost)}"
                f" (it is for: {', '.join(new) or 'no DNS names'})"
            ]
        )


class Rotation:
    """
    The rotation half of L{wasmgate._tlsstore.CertificateStore}, which
    mixes it in and provides the attributes below, C{_make_routes()} (the
    SNI mapping from C{_entries}) and C{_build_context(pair)}.
    """

    _entries: list[Entry]
    _routes: Any
    _log: Logger
    _metrics: "TLSMetrics"
    _on_reload_error: Callable[[CertificateSpec, Sequence[str]], object] | None
    _watcher: LoopingCall | None

    def check(self, *, settle: bool = False) -> list[str]:
        """
        Re-read the files whose device, inode, size or mtime changed; swap in
        each changed pair that is valid, report each that is not (once per
        content).

        @param settle: hold back reporting a bad pair until its files have
            been seen unchanged by one more check, so a watcher that catches
            a rotation between the writes of the certificate and the key does
            not raise a false alarm.  (A pair that is good loads at once.)
        @return: the problems reported by this call.
        """
        return self._refresh(force=False, settle=settle)

    def reload(self) -> list[str]:
        """
        Re-read every file now (SIGHUP), reporting every bad pair again.

        @return: the problems reported.
        """
        return self._refresh(force=True, settle=False)

    def _refresh(self, *, force: bool, settle: bool) -> list[str]:
        reported: list[str] = []
        swapped = False
        for entry in self._entries:
            changed, problems = self._refresh_entry(entry, force=force, settle=settle)
            swapped = swapped or changed
            reported += problems
        if swapped:
            self._routes = self._make_routes()
        return reported

    def _refresh_entry(
        self, entry: Entry, *, force: bool, settle: bool
    ) -> tuple[bool, list[str]]:
        spec = entry.spec
        seen = (stat_signature(spec.cert), stat_signature(spec.key))
        if not force and seen == entry.seen:
            if entry.pending is not None:
                shas, problems = entry.pending
                entry.pending = None
                self._report(entry, shas, problems)
                return False, problems
            return False, []
        entry.seen = seen
        cert, key = read_snapshot(spec.cert), read_snapshot(spec.key)
        shas = (cert.sha256, key.sha256)
        if shas == (entry.pair.cert_sha256, entry.pair.key_sha256):
            entry.pending = entry.failed = None
            return False, []
        if not force and shas == entry.failed:
            return False, []
        try:
            pair = load_pair(cert, key)
            still_covers(entry, pair)
            context = self._build_context(pair)
        except PairError as e:
            problems = list(e.problems)
        except SSL.Error as e:
            problems = [f"{spec.cert}: OpenSSL refused the certificate or key: {e}"]
        else:
            self._swap(entry, pair, context)
            return True, []
        if settle:
            entry.pending = (shas, problems)
            return False, []
        self._report(entry, shas, problems)
        return False, problems

    def _swap(self, entry: Entry, pair: LoadedPair, context: SSL.Context) -> None:
        old = entry.pair
        entry.pair, entry.context = pair, context
        entry.pending = entry.failed = None
        self._log.info(
            "TLS certificate for {hosts} reloaded from {cert_file}: now "
            "serving {new} (was {old}), valid until {not_after}",
            hosts=", ".join(entry.hosts),
            cert_file=entry.spec.cert,
            key_file=entry.spec.key,
            new=describe(pair.leaf),
            old=describe(old.leaf),
            not_after=pair.not_after.isoformat(),
        )

    def _report(
        self,
        entry: Entry,
        shas: tuple[str | None, str | None],
        problems: list[str],
    ) -> None:
        entry.failed = shas
        self._metrics.reload_errors.inc()
        self._log.error(
            "TLS certificate for {hosts} not reloaded: {problems}; still "
            "serving {current}",
            hosts=", ".join(entry.hosts),
            cert_file=entry.spec.cert,
            key_file=entry.spec.key,
            problems="; ".join(problems),
            current=describe(entry.pair.leaf),
        )
        if self._on_reload_error is not None:
            try:
                self._on_reload_error(entry.spec, tuple(problems))
            except Exception:
                self._log.failure("in TLS reload error hook")

    def start_watching(self, reactor: IReactorTime, interval: float) -> None:
        """
        Call L{check} (with C{settle}) every C{interval} seconds.

        This runs on the reactor thread: each tick is two C{stat}s per pair,
        and files are read and parsed only when those change (a few KiB, well
        under a millisecond), which is cheaper than a thread hop.
        """
        if self._watcher is not None and self._watcher.running:
            raise RuntimeError("already watching certificate files")
        watcher = LoopingCall(self._watch_tick)
        watcher.clock = reactor
        self._watcher = watcher
        watcher.start(interval, now=False).addErrback(
            lambda f: self._log.failure("certificate watcher stopped", f)
        )

    def stop_watching(self) -> None:
        """
        Stop the watcher started by L{start_watching}, if running.
        """
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher.running:
            watcher.stop()

    def _watch_tick(self) -> None:
        try:
            self.check(settle=True)
        except Exception:
            self._log.failure("while checking TLS certificate files")
