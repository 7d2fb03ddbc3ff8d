"""A real ``ckptwatch run`` child for the end-to-end tests: its JSON log lines and sd_notify messages."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tests.helpers import REPO

T = TypeVar("T")


class Service:
    """``python -m ckptwatch run --config FILE`` with its log collected line by line.

    With ``notify_path`` the child gets a unix datagram socket of ours as ``NOTIFY_SOCKET`` (and a 2 s
    ``WATCHDOG_USEC``), whose messages are collected in ``messages``; without it, no sd_notify at all.
    """

    def __init__(self, config: Path, notify_path: Path | None = None) -> None:
        self.messages: list[str] = []
        self.events: list[dict] = []
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        self.sock: socket.socket | None = None
        if notify_path is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            if notify_path.exists():
                notify_path.unlink()
            self.sock.bind(str(notify_path))
            self.sock.settimeout(0.2)
            env.update(NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="2000000")
        self.proc = subprocess.Popen([sys.executable, "-m", "ckptwatch", "run", "--config", str(config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                     env=env)
        self._threads = [threading.Thread(target=self._read_log, daemon=True)]
        if self.sock is not None:
            self._threads.append(threading.Thread(target=self._read_notify, daemon=True))
        for t in self._threads:
            t.start()

    def _read_log(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except json.JSONDecodeError:
                self.events.append({"event": "unparsed", "line": line})

    def _read_notify(self) -> None:
        assert self.sock is not None
        while self.proc.poll() is None or not self.sock._closed:
            try:
                self.messages.extend(self.sock.recv(4096).decode().split("\n"))
            except socket.timeout:
                if self.proc.poll() is not None:
                    return
            except OSError:
                return

    def wait_for(self, predicate: Callable[[], T], what: str = "", timeout: float = 30.0) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = predicate()
            if found:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited {self.proc.returncode} waiting for {what}: "
                                     f"{self.proc.stderr.read()[-2000:]}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; events: {self.events[-10:]}")

    def ready(self) -> None:
        self.wait_for(lambda: any(e.get("event") == "service_ready" for e in self.events), "service_ready",
                      60.0)

    def judged(self, name: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == "checkpoint_judged"
                and os.path.basename(e.get("checkpoint", "")) == name]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.sock is not None:
                self.sock.close()
            self._threads[0].join(5)
