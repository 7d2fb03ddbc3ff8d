"""What a sink is, the one fault reporter every sink call goes through, and the background worker.

The service is one pass and a row of sinks: the engine judges a run, and the daemon hands the run's
report to each sink in a fixed order. A sink answers "when should I look at this run again" and can
forget a run. Keeping that interface narrow is what lets mirror and retention join the row as one
module each, without new lines in the daemon.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ckptwatch.config import WatchConfig
    from ckptwatch.model import RunReport

T = TypeVar("T")


class Sink:
    """One action taken on every verdict. Every hook is optional; the defaults do nothing.

    ``judged`` returns the time at which the sink wants the run judged again even if no file event
    comes (an alert turning due, a stall threshold), or None. ``tick`` is periodic work between
    passes (loss polls, disk checks) and returns when it wants the next tick, or None for never.
    ``remembered`` lists the run roots the sink keeps memory for: the daemon forgets every one of them
    when the run vanishes, and the memory test reads it.
    """

    name = "sink"

    def start(self, now: float) -> None:
        """Open what the sink needs (a port, a worker); a failure is a fault, retried by nobody."""

    def begin_pass(self, now: float) -> None:
        """A pass over a root or a run is about to deliver reports."""

    def judged(self, watch: WatchConfig, run: RunReport, now: float) -> float | None:
        return None

    def root_judged(self, watch: WatchConfig, live_runs: frozenset[str], now: float) -> None:
        """A whole-root pass finished; ``live_runs`` is every run the root holds now."""

    def tick(self, now: float) -> float | None:
        return None

    def forget(self, run_root: str) -> None:
        """The run is gone (deleted, or its root is no longer watched): drop its memory."""

    def remembered(self) -> set[str]:
        return set()

    def stop(self) -> None:
        """The service is stopping (SIGTERM): abort long work in flight (a mirror's upload), so ``close``
        returns within the unit's stop timeout. Called from the signal handler itself (so set a flag,
        nothing more) and again by ``Daemon.close`` before the background worker is waited for."""

    def close(self, timeout: float) -> None:
        """Stop; ``timeout`` bounds how long queued work may still take."""


class SinkFault(Exception):
    """A fault a sink describes itself: what went wrong and what the service does about it.

    The component (what the alert is keyed by) is the caller's, so the same name clears it.
    """

    def __init__(self, error: str, action: str) -> None:
        super().__init__(error)
        self.error, self.action = error, action


class FaultReporter:
    """Every sink call and loop step goes through here (DESIGN invariant 5).

    A fault is logged as ``service_error`` with its component, alerted once (the alerts' ledger keys
    service errors by component, so a repeat is not re-sent), and cleared with one RESOLVED notice
    the next time the same component works. Nothing a component raises stops the service.
    """

    def __init__(self, log: Any, alerts: Any, clock: Callable[[], float]) -> None:
        self.log = log
        self.alerts = alerts  # replaced by the daemon when a reload brings new alert settings
        self.clock = clock

    def call(self, component: str, fn: Callable[..., T], *args: Any,
             action: str = "retrying at the next pass",
             context: dict[str, Any] | None = None) -> T | None:
        try:
            result = fn(*args)
        except SinkFault as fault:
            self.report(component, fault.error, fault.action, **(context or {}))
            return None
        except Exception as exc:  # noqa: BLE001 - nothing but SIGTERM stops the service
            self.report(component, f"{type(exc).__name__}: {exc}", action, **(context or {}))
            return None
        self.ok(component)
        return result

    def report(self, component: str, error: str, action: str, **context: Any) -> None:
        self.log.error("service_error", component=component, error=error, action=action, **context)
        try:
            self.alerts.service_error(component, error, action, now=self.clock())
        except Exception:  # noqa: BLE001, S110 - the alert path failing must not stop the loop
            pass

    def ok(self, component: str) -> None:
        try:
            self.alerts.service_ok(component, now=self.clock())
        except Exception:  # noqa: BLE001, S110 - as in report()
            pass


class Background:
    """One worker thread for work that can take long (plots today; the mirror and retention sinks' copies
    and deletions will share it).

    The loop thread never waits on it: ``submit(work, then)`` runs ``work`` on the worker and queues
    ``then(result)`` for the loop thread, which runs it in ``drain`` (so ``then`` may touch the sinks'
    state without locks). ``wake`` is set when a result is ready, so the loop does not sleep through it.
    """

    def __init__(self, wake: threading.Event | None = None) -> None:
        self.wake = wake
        self._jobs: queue.Queue[tuple[Callable[[], Any], Callable[[Any], None]] | None] = queue.Queue()
        self._done: queue.Queue[tuple[Callable[[Any], None], Any]] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="ckptwatch-background", daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], T], then: Callable[[T], None]) -> None:
        with self._idle:
            self._pending += 1
        self._jobs.put((work, then))

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            work, then = job
            try:
                result = work()
            except Exception as exc:  # noqa: BLE001 - handed to ``then`` as the result
                result = exc
            self._done.put((then, result))
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()
            if self.wake is not None:
                self.wake.set()

    def drain(self) -> int:
        """Run the queued ``then`` callbacks on the calling (loop) thread; return how many ran."""
        ran = 0
        while True:
            try:
                then, result = self._done.get_nowait()
            except queue.Empty:
                return ran
            then(result)
            ran += 1

    def wait_idle(self, timeout: float) -> bool:
        """Block until every submitted job has finished (tests, shutdown); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float) -> None:
        self.wait_idle(timeout)
        self._jobs.put(None)
        self._thread.join(timeout=0.1)
