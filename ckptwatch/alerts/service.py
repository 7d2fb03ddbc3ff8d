"""The service's side of alerting: plans per pass in, raise/clear requests to the dispatcher out.

Why a facade: the daemon only says what happened ("this run was judged", "this pass failed", "look at
the disks"); which alerts that means is ``plan.py`` (pure), and whether one is sent is the ledger's and
the dispatcher's business. With no channel configured there is nothing to send, so nothing is opened
(no ledger, no worker thread) and every method returns at once.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ckptwatch.alerts import messages
from ckptwatch.alerts.conditions import disk_low, disk_usage
from ckptwatch.alerts.config import AlertsConfig
from ckptwatch.alerts.messages import Alert, AlertKey
from ckptwatch.alerts.plan import plan_run, plan_vanished_runs
from ckptwatch.model import RunReport
from ckptwatch.sinks.base import Sink

if TYPE_CHECKING:
    from ckptwatch.config import WatchConfig

DISK_CHECK_SECONDS = 60.0  # psutil.disk_usage is one statvfs per watched root


class ServiceAlerts(Sink):
    """The alerts' place in the service's row of sinks, and the channel the fault reporter uses."""

    name = "alerts"

    def __init__(self, config: AlertsConfig, state_db: str, clock: Callable[[], float], log: Any, *,
                 sender: Any = None, host: str | None = None, stale_after: float = 0.0,
                 roots: tuple[str, ...] = ()) -> None:
        self.config = config
        self.log = log
        self.host = host or socket.gethostname()
        self.enabled = bool(config.all_urls)
        self.stale_after = stale_after
        self.roots = roots  # the watched roots whose filesystems the disk check looks at
        self.next_save: dict[str, int] = {}  # run root -> bytes of its newest complete checkpoint
        self.ledger = self.dispatcher = None
        self._open: dict[AlertKey, str] = {}
        if self.enabled:
            from ckptwatch.alerts.dispatch import AlertDispatcher
            from ckptwatch.alerts.ledger import AlertLedger

            self.ledger = AlertLedger(state_db)
            self.dispatcher = AlertDispatcher(config, self.ledger, clock, log, sender=sender, host=self.host)

    def begin_pass(self, now: float = 0.0) -> None:
        """Read the open alerts once per pass (the worker thread updates them between passes)."""
        if self.ledger is not None:
            self._open = {a.key: a.fingerprint for a in self.ledger.open_alerts()}

    def judged(self, watch: WatchConfig, run: RunReport, now: float) -> float | None:
        """Raise and clear what the run calls for; return when to look at it again (or None)."""
        if not self.enabled:
            return None
        if run.newest_complete is not None:
            self.next_save[run.root] = run.newest_complete.bytes
        plan = plan_run(run, open_keys=self._open, now=now, host=self.host, stale_after=self.stale_after,
                        stalled_after=self.config.stalled_after, stalled_enabled=self.config.stalled)
        self._apply(plan.raises, plan.clears)
        return plan.look_again_at

    def root_judged(self, watch: WatchConfig, live_runs: Iterable[str], now: float) -> None:
        """After a whole-root pass: runs that vanished resolve their alerts."""
        if self.enabled:
            self._apply((), plan_vanished_runs(watch.path, set(live_runs), open_keys=self._open, now=now,
                                               host=self.host))

    def tick(self, now: float) -> float | None:
        """disk_low for every watched root, once a minute; the next save is the root's largest run's."""
        if not self.enabled:
            return None
        for root in self.roots:
            if os.path.isdir(root):
                base = root.rstrip(os.sep) + os.sep
                sizes = [b for r, b in self.next_save.items() if r == root or r.startswith(base)]
                self.check_disk(root, max(sizes) if sizes else None, now=now)
        return now + DISK_CHECK_SECONDS

    def forget(self, run_root: str) -> None:
        self.next_save.pop(run_root, None)

    def remembered(self) -> set[str]:
        return set(self.next_save)

    def service_error(self, component: str, error: str, action: str, *, now: float) -> None:
        if self.enabled:
            self._apply((messages.service_error_alert(component=component, error=error, host=self.host,
                                                      now=now, action=action),), ())

    def service_ok(self, component: str, *, now: float) -> None:
        self._clear(("service", component, "service_error"), f"{component} works again", now)

    def retention_blocked(self, run_root: str, why: str, advice: str, *, now: float) -> None:
        if self.enabled:
            self._apply((messages.retention_blocked_alert(run_root=run_root, host=self.host, now=now, why=why,
                                                          advice=advice),), ())

    def retention_ok(self, run_root: str, *, now: float) -> None:
        self._clear((run_root, "", "retention_blocked"), "retention works again", now)

    def mirror_failed(self, run_root: str, checkpoint: str, target: str, error: str, *, retry_in: float,
                      now: float) -> None:
        if self.enabled:
            self._apply((messages.mirror_failed_alert(run_root=run_root, checkpoint=checkpoint, target=target,
                                                      error=error, host=self.host, now=now,
                                                      retry_in=retry_in),), ())

    def mirror_ok(self, run_root: str, *, now: float) -> None:
        self._clear((run_root, "", "mirror_failed"), "the mirror commits copies again", now)

    def _clear(self, key: AlertKey, detail: str, now: float) -> None:
        """Send the RESOLVED notice of an open condition alert (nothing when it is not open)."""
        if self.enabled and key in self._open:
            self._apply((), ((key, messages.condition_cleared(key, host=self.host, now=now, detail=detail)),))

    def check_disk(self, path: str, next_save_bytes: int | None, *, now: float) -> None:
        """disk_low for the filesystem holding a watched root (psutil); cleared with hysteresis."""
        if not self.enabled:
            return
        key = (path, "", "disk_low")
        try:
            usage = disk_usage(path)
        except OSError:
            return  # a root that vanished is the watcher's business, not a disk alert
        low = disk_low(usage, percent=self.config.disk_low_percent, free_bytes=self.config.disk_low_free,
                       next_save_bytes=next_save_bytes, was_low=key in self._open)
        if low is not None:
            self._apply((messages.disk_low_alert(path=path, host=self.host, now=now, free=usage.free,
                                                 total=usage.total, reasons=low.reasons),), ())
        elif key in self._open:
            self._apply((), ((key, messages.condition_cleared(
                key, host=self.host, now=now, detail=f"{messages.human_bytes(usage.free)} free "
                f"({usage.free_percent:.1f}%)")),))

    def raise_alert(self, alert: Alert) -> None:
        if self.enabled:
            self._apply((alert,), ())

    def _apply(self, raises: Iterable[Alert], clears: Iterable[tuple[AlertKey, Alert]]) -> None:
        assert self.dispatcher is not None
        for alert in raises:
            if self._open.get(alert.key) != alert.fingerprint:  # the ledger's own test, done early
                self.dispatcher.raise_alert(alert)
                self._open[alert.key] = alert.fingerprint
        for key, notice in clears:
            if key in self._open:
                self.dispatcher.clear(key, notice)
                del self._open[key]

    def flush(self, timeout: float) -> bool:
        return self.dispatcher.flush(timeout) if self.dispatcher is not None else True

    def close(self, timeout: float = 5.0) -> None:
        if self.dispatcher is not None:
            self.dispatcher.close(timeout)
            if self.dispatcher._thread.is_alive():
                return  # still sending: closing the ledger under it would lose what it records
        if self.ledger is not None:
            self.ledger.close()
