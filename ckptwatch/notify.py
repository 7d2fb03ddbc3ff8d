"""The sd_notify protocol (READY=1, WATCHDOG=1, STATUS=...), without libsystemd.

systemd hands a Type=notify service the path of a datagram socket in ``$NOTIFY_SOCKET`` (a leading
``@`` means the abstract namespace). Without it (run by hand, in tests without a socket) every call
is a no-op. Sending never raises: a lost notification must not stop the service.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None) -> None:
        self.address = address
        if address and address.startswith("@"):
            self.address = "\0" + address[1:]

    @classmethod
    def from_env(cls) -> Notifier:
        return cls(os.environ.get("NOTIFY_SOCKET") or None)

    def send(self, *fields: str) -> bool:
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto("\n".join(fields).encode("utf-8", "replace"), self.address)
            return True
        except OSError:
            return False

    def watchdog_interval(self) -> float | None:
        """Half of systemd's WatchdogSec (``$WATCHDOG_USEC``), if it applies to this process."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2e6
        except ValueError:
            return None
