"""The apprise adapter: one URL, one message -> delivered or not, and why. The only module importing apprise.

Why one ``apprise.Apprise`` per URL: ``notify()`` over several URLs answers with one bool for all of
them, and the dispatcher must know *which* channel failed (to retry it, report it on the others, and
tell when it recovers). Apprise's own retries are turned off (the dispatcher owns backoff) and its
logging is kept quiet: it would print URLs and tracebacks into the service's log.

``send`` never raises: an exception from a plugin becomes a failed result with its type as the reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class SendResult:
    ok: bool
    reason: str = ""  # why it failed, safe to log (no URL, no secret)


class Sender(Protocol):
    """What the dispatcher needs from a delivery mechanism (tests may pass a fake)."""

    def send(self, url: str, title: str, body: str, attachments: Sequence[str] = ()) -> SendResult: ...


class AppriseSender:
    """Delivers through apprise with a connect/read ``timeout`` per attempt.

    ``throttle``: seconds apprise waits between two sends to the same URL. ``None`` keeps each plugin's
    own (5.5 s for email and most chat services: the services' politeness rules, and the reason sends
    run in the dispatcher's worker thread); tests against loopback servers pass 0.
    """

    def __init__(self, timeout: float = 10.0, *, throttle: float | None = None) -> None:
        import apprise

        self._apprise = apprise
        self.timeout = timeout
        self.throttle = throttle
        self._lock = threading.Lock()
        self._cache: dict[str, object] = {}
        for name in ("apprise", "apprise.plugins"):
            logging.getLogger(name).setLevel(logging.CRITICAL)

    def _instance(self, url: str) -> Any:  # an apprise.Apprise (apprise is imported lazily)
        with self._lock:
            if url not in self._cache:
                a = self._apprise.Apprise()
                a.add(url)
                for plugin in a:  # at most one; bound every network wait
                    for attr in ("socket_connect_timeout", "socket_read_timeout"):
                        if hasattr(plugin, attr):
                            setattr(plugin, attr, self.timeout)
                    if self.throttle is not None:
                        plugin.request_rate_per_sec = self.throttle
                self._cache[url] = a
            return self._cache[url]

    def send(self, url: str, title: str, body: str, attachments: Sequence[str] = ()) -> SendResult:
        try:
            a = self._instance(url)
            if len(a) == 0:  # type: ignore[arg-type]
                return SendResult(False,
                                  "apprise does not understand this URL (unknown scheme or bad syntax)")
            kwargs = {}
            if attachments:
                attach = self._apprise.AppriseAttachment()
                for path in attachments:
                    attach.add(path)
                kwargs["attach"] = attach
            result = a.notify(title=title, body=body, body_format=self._apprise.NotifyFormat.TEXT,
                              **kwargs)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - a plugin bug must not reach the dispatcher
            return SendResult(False, f"{type(exc).__name__} in apprise")
        if result:
            return SendResult(True)
        status = getattr(getattr(result, "status", None), "name", None)  # apprise >= 2 says more than a bool
        return SendResult(False, f"delivery failed ({status.lower()})" if status else "delivery failed")
