"""The systemd notify protocol (sd_notify(3)) with the standard library only.

A datagram of ``KEY=value`` lines to the AF_UNIX socket named by
``NOTIFY_SOCKET`` (a path, or an abstract name written ``@name``). Without
that variable (not started by systemd, or not ``Type=notify``) every call is
a no-op, so the same code runs under systemd, in a terminal and in tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if raw.startswith("@"):
            self.address = "\0" + raw[1:]  # Linux abstract namespace
        elif raw.startswith("/"):
            self.address = raw
        self.watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``fields`` (e.g. ``"READY=1"``) as one datagram; False if not sent."""
        if self.address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message)
        except OSError as exc:
            # systemd going away must not take the store down with it.
            log.warning("sd_notify %s failed: %s", fields[0] if fields else "", exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping: draining requests and the writer")

    async def watchdog(self, healthy: Callable[[], bool]) -> None:
        """Ping ``WATCHDOG=1`` at half the watchdog period while ``healthy()`` says so.

        Runs on the event loop, so a wedged loop stops the pings too; a store
        that no longer answers a read stops them, and systemd restarts us.
        """
        if self.watchdog_interval is None or not self.enabled:
            return
        while True:
            if healthy():
                self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # the watchdog belongs to another process (e.g. our parent)
    return int(usec) / 2 / 1_000_000
