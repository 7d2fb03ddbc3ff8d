"""The mirror sink: copy every complete checkpoint off the box, off the loop, newest first.

Between metrics and retention in the row (DESIGN.md), so retention plans with what the mirror knows. The
loop thread only chooses (pure, on the report it already has): the complete checkpoints that may be
mirrored (``copy.why_not_mirrored``) and are not known committed yet. The copies (``copy.mirror_checkpoint``,
which reads the target's commit marker first, so a copy committed before a restart costs no read of the
source) run on the ``Background`` worker, one job per run at a time, newest first: the checkpoint a resume
needs most is safe soonest. A job stops at its first failure: the next checkpoint would most likely fail
the same way (a full disk, a dead endpoint), and one fault is one ``mirror_failed``.

Memory per run: the checkpoints known committed on the target (so a pass asks the target nothing once
everything is copied), the failure count and the time of the next attempt (backoff from 60 s, doubling,
at most an hour), and the checkpoints logged as skipped. A failure is logged (``mirror_failed``), alerted
(``mirror_failed``, one per run, cleared with a RESOLVED notice by the next commit) and retried: the look
again time is handed to the daemon through ``schedule`` when the job ends, and returned from ``judged``.

Retention asks two things (``is_committed``: the memory, on the loop thread, for the plan;
``copy_verifies``: the target itself, on the worker, just before a deletion), so a copy removed from the
target since it was committed stops a deletion even though this sink still remembers it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckptwatch.config.mirror import MirrorConfig
from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror.copy import Outcome, copy_name, mirror_checkpoint, why_not_mirrored
from ckptwatch.mirror.progress import CountingTarget, PercentSteps
from ckptwatch.mirror.target import Target
from ckptwatch.mirror.targets import target_for
from ckptwatch.mirror.throttle import throttled
from ckptwatch.model import RunReport, Status, Verdict
from ckptwatch.sinks.base import Background, FaultReporter, Sink

if TYPE_CHECKING:
    from ckptwatch.config import WatchConfig

PROGRESS_MIN_BYTES = 1 << 30  # checkpoints from 1 GiB log mirror_progress (a smaller copy takes seconds)
PROGRESS_STEP = 10  # percent between two mirror_progress events
BACKOFF_FIRST = 60.0
BACKOFF_MAX = 3600.0
FAILED = ("failed", "conflict")  # a conflict is no backup of this source either: a person must look


def backoff(failures: int) -> float:
    """Seconds before the next attempt after ``failures`` failures in a row (60 s, doubling, <= 1 h)."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, failures - 1))


def to_mirror(run: RunReport, config: MirrorConfig,
              known: set[str]) -> tuple[list[Verdict], list[tuple[str, str]]]:
    """(checkpoints to copy, newest first; (checkpoint, why) of complete ones that are never copied). Pure."""
    todo: list[Verdict] = []
    skipped: list[tuple[str, str]] = []
    for v in reversed(run.checkpoints):
        if v.status is not Status.COMPLETE or v.path in known:
            continue
        why = why_not_mirrored(v, mirror_hazards=config.mirror_hazards)
        if why is None:
            todo.append(v)
        else:
            skipped.append((v.path, why))
    return todo, skipped


def copy_verifies(config: MirrorConfig, run_root: str, checkpoint: str) -> bool:
    """Does ``checkpoint`` have a committed copy on the target whose files have the manifest's sizes?

    What retention asks on the worker just before a deletion: the commit marker names the manifest there,
    and every file the manifest lists is present with its size (DESIGN.md invariant 3: "mirrored and
    verified"; a hash check of every byte is ``ckptwatch verify COPY``). Any fault reading it: False.
    """
    try:
        target = target_for(config.to, endpoint_url=config.endpoint_url)
        prefix = copy_name(run_root, checkpoint)
        state = mf.copy_state(target, prefix)
        if state.state != "committed" or state.manifest is None:
            return False
        present = target.list(prefix)
        return all(present.get(f.path) == f.size for f in state.manifest.files)
    except Exception:  # noqa: BLE001 - cannot be checked means not verified: keep the checkpoint
        return False


def mirrored_check(config: MirrorConfig | None, run_root: str) -> Callable[[str], bool] | None:
    """Retention's ``mirrored`` predicate for a run, asking the target (``copy_verifies``); None when the
    watch has no mirror (then nothing is held back for want of a copy)."""
    if config is None:
        return None
    return lambda checkpoint: copy_verifies(config, run_root, checkpoint)


@dataclass(frozen=True)
class Attempt:
    """One checkpoint's outcome in a job, and how long it took."""

    outcome: Outcome
    seconds: float


def with_progress(target: Target, v: Verdict, run_root: str, log: Any) -> Target:
    """``target``, logging ``mirror_progress`` each 10 % of ``v``'s bytes written when ``v`` holds at least
    ``PROGRESS_MIN_BYTES`` (a smaller copy is over before anyone reads the log); else ``target`` itself.

    The events come from the worker's copy threads, through the same structlog logger as the sink's
    (its ``PrintLogger`` writes each line under a lock of its own; the processors keep no state).
    """
    if log is None or v.bytes < PROGRESS_MIN_BYTES:
        return target
    where = target.describe(copy_name(run_root, v.path))

    def emit(percent: int, done: int) -> None:
        try:
            log.info("mirror_progress", run=run_root, checkpoint=v.path, target=where, percent=percent,
                     bytes=done, of_bytes=v.bytes)
        except Exception:  # noqa: BLE001, S110 - a progress line failing (stdout gone) must not fail the copy
            pass

    return CountingTarget(target, PercentSteps(v.bytes, emit, step=PROGRESS_STEP).add)


def run_job(todo: list[Verdict], run_root: str, config: MirrorConfig, now: float,
            log: Any = None) -> list[Attempt]:
    """On the worker: mirror ``todo`` in order, stopping at the first failure. One token bucket
    (``max_rate``) for the whole job; ``mirror_progress`` on ``log`` for large checkpoints."""
    target = throttled(target_for(config.to, endpoint_url=config.endpoint_url), config.max_rate)
    out: list[Attempt] = []
    for v in todo:
        started = time.monotonic()
        outcome = mirror_checkpoint(v, run_root, with_progress(target, v, run_root, log), config, now=now)
        out.append(Attempt(outcome, time.monotonic() - started))
        if outcome.result in FAILED:
            break
    return out


class MirrorSink(Sink):
    """Only for watches with ``[watch.mirror]``."""

    name = "mirror"

    def __init__(self, *, alerts: Any, faults: FaultReporter, background: Background, log: Any,
                 clock: Callable[[], float], schedule: Callable[[str, str, float], None]) -> None:
        self.alerts = alerts
        self.faults = faults
        self.background = background
        self.log = log
        self.clock = clock
        self.schedule = schedule  # (watch root, run root, at): judge the run again then
        self._committed: dict[str, set[str]] = {}
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._skipped: dict[str, set[str]] = {}
        self._busy: set[str] = set()
        self._again: set[str] = set()  # judged while a job ran: look again when it ends

    def judged(self, watch: WatchConfig, run: RunReport, now: float) -> float | None:
        config = watch.mirror  # WatchConfig.checked refused a `to` inside the watched root
        if config is None:
            return None
        if run.root in self._busy:
            self._again.add(run.root)
            return None
        retry_at = self._retry_at.get(run.root)
        if retry_at is not None and now < retry_at:
            return retry_at
        known = self._committed.setdefault(run.root, set())
        known.intersection_update(v.path for v in run.checkpoints)  # a deleted checkpoint is no longer ours
        todo, skipped = to_mirror(run, config, known)
        logged = self._skipped.setdefault(run.root, set())
        for path, why in skipped:
            if path not in logged:
                logged.add(path)
                self.log.warning("mirror_skipped", run=run.root, checkpoint=path, why=why)
        if not todo:
            return None
        self._busy.add(run.root)
        self.background.submit(lambda: run_job(todo, run.root, config, now, self.log),
                               lambda done: self._done(watch, run.root, config, done))
        return None

    def _done(self, watch: WatchConfig, run_root: str, config: MirrorConfig,
              done: list[Attempt] | BaseException) -> None:
        """On the loop thread: log each outcome, raise or clear the alert, plan the retry."""
        self._busy.discard(run_root)
        now = self.clock()
        if isinstance(done, BaseException):  # run_job itself failed (a target that cannot be built)
            done = [Attempt(Outcome("", config.to, "failed", f"{type(done).__name__}: {done}"), 0.0)]
        forgotten = run_root not in self._committed  # the run vanished while its job ran
        known = self._committed.get(run_root, set())
        failed: Outcome | None = None
        for a in done:
            o = a.outcome
            if o.result == "committed":
                known.add(o.checkpoint)
                self.log.info("mirror_committed", run=run_root, checkpoint=o.checkpoint, target=o.copy,
                              bytes=o.bytes, files=o.files, resumed=o.resumed, seconds=round(a.seconds, 3))
            elif o.result == "up_to_date":
                known.add(o.checkpoint)
            elif o.result in FAILED:
                failed = o
                self.log.error("mirror_failed", run=run_root, checkpoint=o.checkpoint, target=o.copy,
                               result=o.result, error=o.reason, bytes=o.bytes, seconds=round(a.seconds, 3))
        again = None
        if forgotten:
            self._again.discard(run_root)
            return
        if failed is not None:
            failures = self._failures.get(run_root, 0) + 1
            self._failures[run_root] = failures
            wait = backoff(failures)
            self._retry_at[run_root] = again = now + wait
            self.alerts.mirror_failed(run_root, failed.checkpoint, failed.copy, failed.reason, retry_in=wait,
                                      now=now)
        else:
            self._failures.pop(run_root, None)
            self._retry_at.pop(run_root, None)
            self.alerts.mirror_ok(run_root, now=now)
            if run_root in self._again:
                again = now
        self._again.discard(run_root)
        if again is not None:
            self.schedule(watch.path, run_root, again)

    def is_committed(self, run_root: str, checkpoint: str) -> bool:
        """Is ``checkpoint`` known committed on the target (this sink's memory; no I/O)?"""
        return checkpoint in self._committed.get(run_root, ())

    def forget(self, run_root: str) -> None:
        for memory in (self._committed, self._failures, self._retry_at, self._skipped):
            memory.pop(run_root, None)
        self._again.discard(run_root)

    def remembered(self) -> set[str]:
        return set(self._committed) | set(self._failures) | set(self._retry_at) | set(self._skipped)

    def close(self, timeout: float) -> None:
        self.background.wait_idle(timeout)
