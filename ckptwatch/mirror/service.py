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
``recheck``/``copy_verifies``: the target itself, on the worker, just before a deletion), so a copy removed
from the target since it was committed stops a deletion even though this sink still remembers it.

What is committed is also recorded in the state store (``StateStore.mirrored``): after a restart a
checkpoint whose bytes and newest mtime are those recorded with its copy is known committed without asking
the target (``MirroredCopy.trusted_for``), and ``ckptwatch status`` reads the lag from there.

A copy that disappears from the target (or stops verifying) after its commit is copied again: when
retention's re-check finds a copy this sink remembers missing, and every ``REVERIFY_EVERY`` (6 h, a module
constant, not a config key) when the worker re-checks every remembered copy of a run (``copy_verifies``:
the commit marker and every file's size; a few requests per checkpoint on S3), the copy is dropped from
the memory and the store (``mirror_lost``) and the run is judged again, which copies it anew.

Stopping (``stop``, SIGTERM through ``Daemon.close``): the copy in flight is aborted at its next write
(``cancel.CancellableTarget``), nothing more is committed, and ``mirror_interrupted`` is logged; the
next start resumes the copy from its journal.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckptwatch.config.mirror import MirrorConfig
from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror.cancel import Cancel, CancellableTarget, Cancelled
from ckptwatch.mirror.copy import Outcome, copy_name, mirror_checkpoint, why_not_mirrored
from ckptwatch.mirror.lag import Mark, Position
from ckptwatch.mirror.progress import CountingTarget, PercentSteps
from ckptwatch.mirror.target import Target
from ckptwatch.mirror.targets import target_for
from ckptwatch.mirror.throttle import throttled
from ckptwatch.model import RunReport, Status, Verdict
from ckptwatch.sinks.base import Background, FaultReporter, Sink
from ckptwatch.state import MirroredCopy

if TYPE_CHECKING:
    from ckptwatch.config import WatchConfig
    from ckptwatch.state import StateStore

PROGRESS_MIN_BYTES = 1 << 30  # checkpoints from 1 GiB log mirror_progress (a smaller copy takes seconds)
PROGRESS_STEP = 10  # percent between two mirror_progress events
BACKOFF_FIRST = 60.0
BACKOFF_MAX = 3600.0
FAILED = ("failed", "conflict")  # a conflict is no backup of this source either: a person must look
REVERIFY_EVERY = 6 * 3600.0  # how often the worker re-checks every remembered copy on the target
TargetFactory = Callable[[MirrorConfig], Target]


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


def copy_problem(config: MirrorConfig, run_root: str, checkpoint: str,
                 make_target: TargetFactory | None = None) -> str | None:
    """Why ``checkpoint``'s copy on the target is no verified backup, or None when it is one.

    A verified backup: the commit marker names the manifest there, and every file the manifest lists is
    present with its size (DESIGN.md invariant 3: "mirrored and verified"; a hash check of every byte is
    ``ckptwatch verify COPY``). Any fault reading it is a reason too: what cannot be checked is not verified.
    """
    try:
        target = (make_target or _target)(config)
        prefix = copy_name(run_root, checkpoint, config.runs_under)
        state = mf.copy_state(target, prefix)
        if state.state != "committed" or state.manifest is None:
            return f"{state.state}: {state.reason}"
        present = target.list(prefix)
        for f in state.manifest.files:
            if present.get(f.path) != f.size:
                return (f"{target.describe(prefix + '/' + f.path)}: {present.get(f.path, 'no')} bytes, "
                        f"{f.size} in the manifest")
        return None
    except Exception as exc:  # noqa: BLE001 - cannot be checked means not verified: keep the checkpoint
        return f"cannot be checked: {type(exc).__name__}: {exc}"


def copy_verifies(config: MirrorConfig, run_root: str, checkpoint: str) -> bool:
    """Does ``checkpoint`` have a committed copy on the target whose files have the manifest's sizes?
    What retention asks on the worker just before a deletion (``copy_problem``)."""
    return copy_problem(config, run_root, checkpoint) is None


def _target(config: MirrorConfig) -> Target:
    return target_for(config.to, endpoint_url=config.endpoint_url)


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


def with_progress(target: Target, v: Verdict, run_root: str, log: Any, runs_under: str = "") -> Target:
    """``target``, logging ``mirror_progress`` each 10 % of ``v``'s bytes written when ``v`` holds at least
    ``PROGRESS_MIN_BYTES`` (a smaller copy is over before anyone reads the log); else ``target`` itself.

    The events come from the worker's copy threads, through the same structlog logger as the sink's
    (its ``PrintLogger`` writes each line under a lock of its own; the processors keep no state).
    """
    if log is None or v.bytes < PROGRESS_MIN_BYTES:
        return target
    where = target.describe(copy_name(run_root, v.path, runs_under))

    def emit(percent: int, done: int) -> None:
        try:
            log.info("mirror_progress", run=run_root, checkpoint=v.path, target=where, percent=percent,
                     bytes=done, of_bytes=v.bytes)
        except Exception:  # noqa: BLE001, S110 - a progress line failing (stdout gone) must not fail the copy
            pass

    return CountingTarget(target, PercentSteps(v.bytes, emit, step=PROGRESS_STEP).add)


def run_job(todo: list[Verdict], run_root: str, config: MirrorConfig, now: float, log: Any = None, *,
            cancel: Cancel | None = None, make_target: TargetFactory | None = None) -> list[Attempt]:
    """On the worker: mirror ``todo`` in order, stopping at the first failure, or at ``cancel`` (the copy
    in flight is aborted at its next write and reported ``cancelled``; nothing of it is committed). One
    token bucket (``max_rate``) for the whole job; ``mirror_progress`` on ``log`` for large checkpoints."""
    cancel = cancel or Cancel()
    target = CancellableTarget(throttled((make_target or _target)(config), config.max_rate), cancel)
    out: list[Attempt] = []
    for v in todo:
        if cancel.is_set():
            break
        started = time.monotonic()
        try:
            shown = with_progress(target, v, run_root, log, config.runs_under)
            outcome = mirror_checkpoint(v, run_root, shown, config, now=now)
        except Cancelled as exc:
            where = target.describe(copy_name(run_root, v.path, config.runs_under))
            outcome = Outcome(v.path, where, "cancelled", str(exc))
        out.append(Attempt(outcome, time.monotonic() - started))
        if outcome.result in (*FAILED, "cancelled"):
            break
    return out


def recheck_job(copies: list[str], run_root: str, config: MirrorConfig,
                make_target: TargetFactory | None = None) -> list[tuple[str, str | None]]:
    """On the worker: (checkpoint, why its copy is no verified backup, or None) for each of ``copies``
    (one target for them all: on S3, one session)."""
    try:
        target = (make_target or _target)(config)
    except Exception as exc:  # noqa: BLE001 - a target that cannot be built verifies nothing
        return [(c, f"cannot be checked: {type(exc).__name__}: {exc}") for c in copies]
    return [(c, copy_problem(config, run_root, c, lambda _config: target)) for c in copies]


class MirrorSink(Sink):
    """Only for watches with ``[watch.mirror]``."""

    name = "mirror"

    def __init__(self, *, alerts: Any, faults: FaultReporter, background: Background, log: Any,
                 clock: Callable[[], float], schedule: Callable[[str, str, float], None],
                 store: StateStore | None = None, make_target: TargetFactory | None = None) -> None:
        self.alerts = alerts
        self.faults = faults
        self.background = background
        self.log = log
        self.clock = clock
        self.schedule = schedule  # (watch root, run root, at): judge the run again then
        self.store = store  # what is committed, across restarts (None: memory only)
        self.make_target = make_target or _target
        self.cancel = Cancel()  # set by stop(): the copy in flight aborts at its next write
        self._committed: dict[str, set[str]] = {}
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._skipped: dict[str, set[str]] = {}
        self._reverify_at: dict[str, float] = {}
        self._watch_of: dict[str, tuple[str, MirrorConfig]] = {}  # run root -> (watch root, its mirror)
        self._busy: set[str] = set()
        self._again: set[str] = set()  # judged while a job ran: look again when it ends
        self._lost: queue.SimpleQueue[tuple[str, str, str, str]] = queue.SimpleQueue()  # from the worker
        self.positions: dict[str, Position] = {}  # run root -> lag inputs; replaced whole (scrape thread)

    def judged(self, watch: WatchConfig, run: RunReport, now: float) -> float | None:
        config = watch.mirror  # WatchConfig.checked refused a `to` inside the watched root
        if config is None or self.cancel.is_set():
            return None
        self._take_lost(now)
        self._watch_of[run.root] = (watch.path, config)
        if run.root not in self._committed:
            self._load(run, config, now)
        known = self._committed[run.root]
        known.intersection_update(v.path for v in run.checkpoints)  # a deleted checkpoint is no longer ours
        newest = run.newest_complete
        self._publish(run.root, config.to, None if newest is None else Mark(newest.path, newest.step,
                                                                            newest.newest_mtime))
        if run.root in self._busy:
            self._again.add(run.root)
            return None
        retry_at = self._retry_at.get(run.root)
        if retry_at is not None and now < retry_at:
            return retry_at
        todo, skipped = to_mirror(run, config, known)
        logged = self._skipped.setdefault(run.root, set())
        for path, why in skipped:
            if path not in logged:
                logged.add(path)
                self.log.warning("mirror_skipped", run=run.root, checkpoint=path, why=why)
        if not todo:
            return None
        self._busy.add(run.root)
        cancel, make_target, log = self.cancel, self.make_target, self.log
        self.background.submit(lambda: run_job(todo, run.root, config, now, log, cancel=cancel,
                                               make_target=make_target),
                               lambda done: self._done(watch, run.root, config, todo, done))
        return None

    def _load(self, run: RunReport, config: MirrorConfig, now: float) -> None:
        """First sight of a run: what the store says is committed, trusted only for checkpoints that still
        have the bytes and newest mtime recorded with their copy (no target I/O)."""
        self._committed[run.root] = known = set()
        rows = {c.checkpoint: c for c in (self.store.mirrored(run.root, config.to) if self.store else [])}
        oldest = now
        for v in run.checkpoints:
            row = rows.get(v.path)
            if v.status is Status.COMPLETE and row is not None and row.trusted_for(v):
                known.add(v.path)
                oldest = min(oldest, row.verified_at)
        self._reverify_at[run.root] = oldest + REVERIFY_EVERY

    def _publish(self, run_root: str, to: str, complete: Mark | None | bool = False) -> None:
        """Refresh the run's lag inputs (``complete`` False: keep the newest complete one known)."""
        before = self.positions.get(run_root)
        if complete is False:
            complete = before.complete if before is not None else None
        row = self.store.newest_mirrored(run_root, to) if self.store else None
        committed = Mark(row.checkpoint, row.step, row.source_mtime) if row else None
        self.positions = {**self.positions, run_root: Position(to, complete or None, committed)}

    def _done(self, watch: WatchConfig, run_root: str, config: MirrorConfig, todo: list[Verdict],
              done: list[Attempt] | BaseException) -> None:
        """On the loop thread: log each outcome, record the commits, raise or clear the alert, plan the
        retry."""
        self._busy.discard(run_root)
        now = self.clock()
        if isinstance(done, BaseException):  # run_job itself failed (a target that cannot be built)
            done = [Attempt(Outcome("", config.to, "failed", f"{type(done).__name__}: {done}"), 0.0)]
        forgotten = run_root not in self._committed  # the run vanished while its job ran
        known = self._committed.get(run_root, set())
        verdicts = {v.path: v for v in todo}
        failed: Outcome | None = None
        interrupted = False
        copies: list[MirroredCopy] = []
        for a in done:
            o = a.outcome
            if o.result in ("committed", "up_to_date"):
                known.add(o.checkpoint)
                v = verdicts.get(o.checkpoint)
                if v is not None:
                    copies.append(MirroredCopy(run_root, v.path, config.to, o.copy, v.step, v.bytes,
                                               v.newest_mtime, now, now))
            if o.result == "committed":
                self.log.info("mirror_committed", run=run_root, checkpoint=o.checkpoint, target=o.copy,
                              bytes=o.bytes, files=o.files, resumed=o.resumed, seconds=round(a.seconds, 3))
            elif o.result == "cancelled":
                interrupted = True
                self.log.info("mirror_interrupted", run=run_root, checkpoint=o.checkpoint, target=o.copy,
                              why=self.cancel.reason or o.reason, seconds=round(a.seconds, 3),
                              action="nothing of it was committed; the next start resumes the copy")
            elif o.result in FAILED:
                failed = o
                self.log.error("mirror_failed", run=run_root, checkpoint=o.checkpoint, target=o.copy,
                               result=o.result, error=o.reason, bytes=o.bytes, seconds=round(a.seconds, 3))
        if copies and self.store is not None:  # even for a forgotten run: the copies exist on the target
            self.faults.call("state store", self.store.record_mirrored, copies)
        if forgotten:
            self._again.discard(run_root)
            return
        if copies:
            self._publish(run_root, config.to)
        if interrupted or self.cancel.is_set():  # stopping: no alert, no retry
            self._again.discard(run_root)
            return
        again = None
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

    # --- copies that vanished from the target ----------------------------------------------------------

    def recheck(self, config: MirrorConfig, run_root: str) -> Callable[[str], bool]:
        """Retention's re-check before a deletion (on the worker): ``copy_verifies``, and a copy found
        missing is handed to the loop thread to be forgotten and copied again."""

        def verified(checkpoint: str) -> bool:
            why = copy_problem(config, run_root, checkpoint, self.make_target)
            if why is not None:
                self._lost.put((run_root, checkpoint, config.to, why))
            return why is None

        return verified

    def _take_lost(self, now: float) -> None:
        """On the loop thread: forget the copies the worker found missing; judge their runs again."""
        while True:
            try:
                run_root, checkpoint, to, why = self._lost.get_nowait()
            except queue.Empty:
                return
            self._lose(run_root, checkpoint, to, why, now)

    def _lose(self, run_root: str, checkpoint: str, to: str, why: str, now: float) -> None:
        """A copy this sink remembers committed is missing or does not verify: forget it (memory and
        store) and judge the run again, which copies it anew. Retention's re-check also asks about
        checkpoints never committed (the newest, not copied yet): those are no loss, and ignored."""
        known = self._committed.get(run_root)
        where = self._watch_of.get(run_root)
        if known is None or checkpoint not in known or where is None or where[1].to != to:
            return
        known.discard(checkpoint)
        if self.store is not None:
            self.faults.call("state store", self.store.drop_mirrored, to, checkpoint)
        self.log.warning("mirror_lost", run=run_root, checkpoint=checkpoint, target=to, why=why,
                         action="copied again at the next pass")
        self._publish(run_root, to)
        self.schedule(where[0], run_root, now)

    def tick(self, now: float) -> float | None:
        """Take the copies retention found missing; re-check a run's remembered copies every
        ``REVERIFY_EVERY``."""
        self._take_lost(now)
        if self.cancel.is_set():
            return None
        for run_root, due in list(self._reverify_at.items()):
            known = self._committed.get(run_root)
            where = self._watch_of.get(run_root)
            if now < due or run_root in self._busy or not known or where is None:
                continue
            config = where[1]
            self._busy.add(run_root)
            copies, make_target = sorted(known), self.make_target
            self.background.submit(lambda r=run_root, c=copies, m=config: recheck_job(c, r, m, make_target),
                                   lambda done, r=run_root, m=config: self._rechecked(r, m, done))
        return None

    def _rechecked(self, run_root: str, config: MirrorConfig,
                   done: list[tuple[str, str | None]] | BaseException) -> None:
        self._busy.discard(run_root)
        now = self.clock()
        if run_root not in self._committed:
            return
        self._reverify_at[run_root] = now + REVERIFY_EVERY
        if isinstance(done, BaseException):
            return  # recheck_job does not raise (copy_problem catches); nothing learned
        ok = [c for c, why in done if why is None]
        if ok and self.store is not None:
            self.faults.call("state store", self.store.verified_mirrored, config.to, ok, now)
        for checkpoint, why in done:
            if why is not None:
                self._lose(run_root, checkpoint, config.to, why, now)
        if run_root in self._again:
            self._again.discard(run_root)
            where = self._watch_of.get(run_root)
            if where is not None:
                self.schedule(where[0], run_root, now)

    # --- what the rest of the service asks --------------------------------------------------------------

    def is_committed(self, run_root: str, checkpoint: str) -> bool:
        """Is ``checkpoint`` known committed on the target (this sink's memory; no I/O)?"""
        return checkpoint in self._committed.get(run_root, ())

    def forget(self, run_root: str) -> None:
        for memory in (self._committed, self._failures, self._retry_at, self._skipped, self._reverify_at,
                       self._watch_of):
            memory.pop(run_root, None)
        self._again.discard(run_root)
        if run_root in self.positions:
            self.positions = {r: p for r, p in self.positions.items() if r != run_root}

    def remembered(self) -> set[str]:
        return (set(self._committed) | set(self._failures) | set(self._retry_at) | set(self._skipped)
                | set(self._reverify_at) | set(self._watch_of) | set(self.positions))

    def stop(self) -> None:
        """The service is stopping: abort the copy in flight at its next write, start no other."""
        self.cancel.set("the service is stopping")

    def close(self, timeout: float) -> None:
        self.background.wait_idle(timeout)
