"""Getting an alert out: route it, de-duplicate it, rate-limit it, retry it, watch each channel's health.

Why a worker thread: a send can take the whole ``timeout`` times ``retries`` (an SMTP server that does
not answer); the pipeline that found the problem must not wait for that. ``raise_alert`` and ``clear``
only put the request on a queue and return; one thread owns all channel state, so there are no locks
around it. Why it never raises: an alert channel going down is a fault to report, not a reason to stop
watching checkpoints (DESIGN.md invariant 5) -- every exception in the worker is logged and the worker
goes on.

Per channel URL (the unit apprise reports success for):

- retries: up to ``alerts.retries`` attempts, ``backoff`` seconds doubling between them (capped);
- rate limit: at most ``alerts.max_per_hour`` sends in any sliding hour; the rest are held and sent as
  one digest once the window allows;
- health: a channel whose attempts all fail is *failing*: logged (``alert_failed`` per attempt), told
  once on every other channel ("channel X failing since ..."), then probed with exponential backoff
  (not retried per alert); what it missed is listed in the notice sent everywhere when it works again.

What is held or missed lives in memory: a restart forgets it (the ledger still remembers what was
alerted, so nothing is *repeated*; ``ckptwatch status`` lists what is open).
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ckptwatch.alerts import messages
from ckptwatch.alerts.config import AlertsConfig, mask_url
from ckptwatch.alerts.ledger import AlertLedger
from ckptwatch.alerts.messages import Alert, AlertKey
from ckptwatch.alerts.sender import Sender, SendResult

WINDOW = 3600.0  # the rate limit's window: max_per_hour
QUEUE_MAX = 10_000  # requests waiting for the worker; beyond this they are dropped (and logged)


class _NullLog:
    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None


@dataclass
class _Channel:
    url: str
    masked: str
    sent: deque[float] = field(default_factory=deque)  # send times in the current window
    held: list[Alert] = field(default_factory=list)
    held_since: float = 0.0
    failing_since: float | None = None
    failed_probes: int = 0
    next_probe: float = 0.0
    missed: list[str] = field(default_factory=list)
    reason: str = ""


class AlertDispatcher:
    """Routes alerts to channels through a ``Sender`` (apprise unless given), in a worker thread.

    ``clock`` returns the time (tests pass a fake and move it); ``backoff``/``backoff_max`` bound the
    wait between retries and ``probe_max`` the wait between probes of a failing channel; ``tick`` is how
    often the worker looks at held digests and failing channels when no request arrives.
    """

    def __init__(self, config: AlertsConfig, ledger: AlertLedger, clock: Callable[[], float] = time.time,
                 log: Any = None, *, sender: Sender | None = None, host: str | None = None,
                 backoff: float = 2.0, backoff_max: float = 60.0, probe_max: float = 600.0,
                 tick: float = 5.0) -> None:
        self.config = config
        self.ledger = ledger
        self.clock = clock
        self.log = log if log is not None else _NullLog()
        self.host = host or socket.gethostname()
        self.backoff, self.backoff_max, self.probe_max, self.tick = backoff, backoff_max, probe_max, tick
        if sender is None:
            from ckptwatch.alerts.sender import AppriseSender

            sender = AppriseSender(config.timeout)
        self.sender = sender
        self._channels = {url: _Channel(url, mask_url(url)) for url in config.all_urls}
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue(QUEUE_MAX)
        self._stopping = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ckptwatch-alerts", daemon=True)
        self._thread.start()

    # --- the caller's side: put on the queue, return -------------------------------------------------

    def raise_alert(self, alert: Alert) -> None:
        """Send ``alert`` unless the ledger says an alert with its key and fingerprint is open."""
        self._put(("raise", alert))

    def clear(self, key: AlertKey, recovery_alert: Alert) -> None:
        """Close ``key``; if it was open, send ``recovery_alert`` (on the route of its kind)."""
        self._put(("clear", key, recovery_alert))

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is handled (and due digests/probes tried); False on timeout."""
        done = threading.Event()
        if not self._put(("flush", done)):
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Handle what is queued, then stop the worker (waits at most ``timeout`` seconds)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(("stop",), timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        self._stopping.set()  # interrupts a retry backoff if the join timed out
        self._thread.join(1.0)

    def _put(self, item: tuple[Any, ...]) -> bool:
        if self._closed:
            self.log.warning("alert_dropped", reason="dispatcher closed", request=item[0])
            return False
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self.log.error("alert_dropped", reason=f"queue full ({QUEUE_MAX} waiting)", request=item[0])
            return False

    # --- the worker ----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.tick)
            except queue.Empty:
                item = ("tick",)
            try:
                if item[0] == "stop":
                    return
                self._handle(item)
                self._service(self.clock())
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any bug
                try:
                    self.log.error("service_error", component="alerts", error=f"{type(exc).__name__}: {exc}")
                except Exception:  # noqa: BLE001, S110 - not even a broken logger stops the worker
                    pass
            finally:
                if item[0] == "flush":
                    item[1].set()

    def _handle(self, item: tuple[Any, ...]) -> None:
        now = self.clock()
        if item[0] == "raise":
            alert: Alert = item[1]
            if not self.ledger.should_raise(alert.key, alert.fingerprint):
                return
            self._send_routed(alert, now)
            self.ledger.mark_sent(alert.key, alert.fingerprint, now)
        elif item[0] == "clear":
            if self.ledger.clear(item[1], now):
                self._send_routed(item[2], now)

    def _send_routed(self, alert: Alert, now: float) -> None:
        for url in self.config.route(alert.kind, alert.severity):
            self._deliver(self._channels[url], alert, now)

    def _deliver(self, ch: _Channel, alert: Alert, now: float) -> bool:
        """One alert to one channel, with everything that implies. True if it was delivered now."""
        if ch.failing_since is not None:
            if now < ch.next_probe:
                ch.missed.append(alert.title)
                return False
            if self._attempt(ch, alert, 1).ok:
                self._recovered(ch, now)
                return True
            ch.missed.append(alert.title)
            self._schedule_probe(ch, now)
            return False
        while ch.sent and ch.sent[0] <= now - WINDOW:
            ch.sent.popleft()
        if self.config.max_per_hour and len(ch.sent) >= self.config.max_per_hour:
            if not ch.held:
                ch.held_since = now
            ch.held.append(alert)
            self.log.info("alert_held", kind=alert.kind, channel=ch.masked, held=len(ch.held),
                          reason=f"alerts.max_per_hour = {self.config.max_per_hour}")
            return False
        for attempt in range(1, self.config.retries + 1):
            if self._attempt(ch, alert, attempt).ok:
                ch.sent.append(now)
                return True
            if attempt < self.config.retries and self._stopping.wait(
                    min(self.backoff_max, self.backoff * 2 ** (attempt - 1))):
                break  # closing: do not keep the caller of close() waiting
        if self._stopping.is_set():
            return False  # interrupted by close(), not a verdict on the channel
        self._failing(ch, alert, now)
        return False

    def _attempt(self, ch: _Channel, alert: Alert, attempt: int) -> SendResult:
        # a lost plot must not fail the alert
        attachments = tuple(p for p in alert.attachments if os.path.isfile(p))
        try:
            result = self.sender.send(ch.url, alert.title, alert.body, attachments)
        except Exception as exc:  # noqa: BLE001 - a Sender must not raise, but if it does: a failure
            result = SendResult(False, f"{type(exc).__name__}")
        context = {"kind": alert.kind, "channel": ch.masked, "attempt": attempt, "recovery": alert.recovery}
        if alert.key[0] != "service":
            context.update(run=alert.key[0], checkpoint=alert.key[1] or None)
        if result.ok:
            self.log.info("alert_sent", **context)
        else:
            ch.reason = result.reason
            self.log.warning("alert_failed", error=result.reason, **context)
        return result

    def _failing(self, ch: _Channel, alert: Alert, now: float) -> None:
        ch.failing_since = now
        ch.failed_probes = 0
        ch.missed.append(alert.title)
        ch.missed += [a.title for a in ch.held]
        ch.held.clear()
        self._schedule_probe(ch, now)
        self.log.error("alert_channel_failing", channel=ch.masked, attempts=self.config.retries,
                       error=ch.reason)
        notice = messages.channel_failing_notice(channel=ch.masked, since=now, attempts=self.config.retries,
                                                 reason=ch.reason, host=self.host, now=now)
        for other in self._channels.values():
            if other is not ch and other.failing_since is None:
                self._deliver(other, notice, now)

    def _schedule_probe(self, ch: _Channel, now: float) -> None:
        ch.next_probe = now + min(self.probe_max, self.backoff * 2 ** ch.failed_probes)
        ch.failed_probes += 1

    def _recovered(self, ch: _Channel, now: float, *, told_itself: bool = False) -> None:
        """``ch`` works again: tell every working channel (``ch`` too, unless its probe already did)."""
        since, missed = ch.failing_since or now, ch.missed
        ch.failing_since, ch.failed_probes, ch.missed, ch.reason = None, 0, [], ""
        ch.sent.append(now)
        self.log.info("alert_channel_recovered", channel=ch.masked, missed=len(missed),
                      down_seconds=round(now - since, 1))
        notice = messages.channel_recovered_notice(channel=ch.masked, since=since, missed=missed,
                                                   host=self.host, now=now)
        for other in self._channels.values():
            if other.failing_since is None and not (told_itself and other is ch):
                self._deliver(other, notice, now)

    def _service(self, now: float) -> None:
        """Timers: send digests whose window opened; probe failing channels that have something missed."""
        for ch in list(self._channels.values()):
            if ch.failing_since is not None:
                if ch.missed and now >= ch.next_probe:
                    probe = messages.channel_recovered_notice(channel=ch.masked, since=ch.failing_since,
                                                              missed=ch.missed, host=self.host, now=now)
                    if self._attempt(ch, probe, 1).ok:
                        self._recovered(ch, now, told_itself=True)
                    else:
                        self._schedule_probe(ch, now)
                continue
            if ch.held:
                while ch.sent and ch.sent[0] <= now - WINDOW:
                    ch.sent.popleft()
                if not self.config.max_per_hour or len(ch.sent) < self.config.max_per_hour:
                    held, since = ch.held, ch.held_since
                    ch.held = []
                    digest = messages.digest(channel=ch.masked, held=held, since=since, host=self.host,
                                             now=now)
                    self._deliver(ch, digest, now)
