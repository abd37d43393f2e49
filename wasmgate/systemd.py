# -*- test-case-name: tests.test_ops -*-
"""
sd_notify: tell systemd (Type=notify) when the gateway is ready, reloading
or stopping. A no-op when C{NOTIFY_SOCKET} is not set.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Mapping, Optional

from twisted.logger import Logger

log = Logger()


class Notifier:
    """Sends state lines to the socket named by C{NOTIFY_SOCKET}."""

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self.address = address

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *states: str) -> None:
        if not self.address:
            return
        message = "\n".join(states).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, self.address)
        except OSError as e:
            log.warn("sd_notify to {address!r} failed: {error}", address=self.address, error=e)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        # MONOTONIC_USEC lets a Type=notify-reload unit (systemd 253+) tell
        # this reload from an earlier one: "systemctl reload" then waits
        # until READY=1 says the new config is live.
        self.notify("RELOADING=1", "MONOTONIC_USEC=%d" % (time.monotonic_ns() // 1000,))

    def stopping(self) -> None:
        self.notify("STOPPING=1")
