"""systemd's notify protocol (sd_notify(3)) without libsystemd: READY, STATUS, WATCHDOG, STOPPING.

Outside systemd ($NOTIFY_SOCKET unset) every call does nothing.  A send that fails is ignored:
the watchdog then restarts a daemon that truly cannot reach systemd, which is what it is for.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = os.environ.get("WATCHDOG_USEC", "")
        # ping at a quarter of the interval, as systemd advises, and never more often than needed
        self.watchdog_every = int(usec) / 4e6 if usec.isdigit() and int(usec) > 0 else None
        self._last_ping = 0.0

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # never blocks: a receiver that stopped reading must not stop the daemon
                sock.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, self.address)
        except OSError:
            pass

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def alive(self) -> None:
        """The daemon made progress: ping the watchdog when it is due."""
        if self.watchdog_every is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_every:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")
