# -*- test-case-name: tests.test_gateway_sources,tests.test_workers -*-
"""
Hot plugin reload: notice that a plugin changed (a file by mtime and size,
a URL by fetching it every C{reload_interval} and comparing sha256) and
ask for a reload. The one gateway process runs it; with workers, the
supervisor does, so that every worker reloads together.
"""
from __future__ import annotations

import hashlib
import os
from typing import Callable, Optional

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wasmgate.config import GatewayConfig, PluginConfig

log = Logger()


class PluginWatch:
    """
    Polls the plugins of C{config()} that have a C{reload_interval}; calls
    C{changed(why)} when one changed. C{busy()} true (a reload running)
    skips a round. C{digest(name)} is the sha256 of the module loaded now,
    when known; a URL's first fetch is the baseline otherwise.
    """

    def __init__(
        self,
        *,
        config: Callable[[], GatewayConfig],
        fetch: Callable[[PluginConfig], "Deferred[bytes]"],
        digest: Callable[[str], Optional[str]],
        changed: Callable[[str], None],
        busy: Callable[[], bool],
        clock: IReactorTime,
    ) -> None:
        self._config = config
        self._fetch = fetch
        self._digest = digest
        self._changed = changed
        self._busy = busy
        self._clock = clock
        self._stamps: dict[str, tuple[float, int]] = {}
        self._fetched: dict[str, str] = {}
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = clock

    def start(self) -> None:
        intervals = [p.reload_interval for p in self._config().plugins if p.reload_interval]
        self._loop.start(min(intervals, default=1.0), now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def check(self) -> None:
        if self._busy():
            return
        now = self._clock.seconds()
        changed = False
        for plugin in self._config().plugins:
            if not plugin.reload_interval:
                continue
            if "://" in plugin.path:
                last = self._stamps.setdefault(plugin.name, (now, 0))[0]
                if now - last >= plugin.reload_interval:
                    self._stamps[plugin.name] = (now, 0)
                    self._check_remote(plugin)
                continue
            try:
                st = os.stat(plugin.path)
            except OSError:
                continue
            stamp = (st.st_mtime, st.st_size)
            if self._stamps.setdefault(plugin.name, stamp) != stamp:
                self._stamps[plugin.name] = stamp
                changed = True
        if changed:
            self._changed("a plugin file changed")

    def _check_remote(self, plugin: PluginConfig) -> None:
        current = self._digest(plugin.name) or self._fetched.get(plugin.name)

        def compare(data: bytes) -> None:
            digest = hashlib.sha256(data).hexdigest()
            first = current is None
            self._fetched[plugin.name] = digest
            if not first and digest != current and not self._busy():
                self._changed(f"plugin {plugin.name} changed at {plugin.path}")

        def failed(reason: Failure) -> None:
            log.warn(
                "plugin {name}: fetching {url} failed, keeping the current module: {error}",
                name=plugin.name, url=plugin.path, error=reason.getErrorMessage(),
            )

        self._fetch(plugin).addCallbacks(compare, failed)
