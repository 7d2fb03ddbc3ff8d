"""The loss watch's place in the service: judge each run's loss logs after a pass, and poll them between.

Log lines need no settling (only complete lines are read), so a jump is seen within one flush plus a
few seconds, not after ``settle_seconds``: an active run is polled every ``POLL_SECONDS``, a quiet
one every ``IDLE_SECONDS``. Active means a file event in the run, or new loss points read, within
``ACTIVE_SECONDS``. Growth counts because a logger keeps its file open and appends, which produces no
event the watcher listens to (only creates, closes after writing, moves and deletes). An event outside
every known run (a new run dir, a file beside the runs) counts only for the runs whose loss logs are
outside their run dir (Lightning's shared ``lightning_logs``): an event inside a run dir is that run's,
so one new run dir does not make 10,000 runs' logs be read every 5 s for 10 minutes. A resumed process
creates files (an events file, its next checkpoint) that make the run active; the slow round over quiet
runs is the safety net for one that only appends to an old log. A tick looks only at the active runs
(``DirtyScopes.touched_since`` and the runs that grew, not a check of each of 10,000 runs every 5 s),
and the slow round is spread over its ``IDLE_SECONDS``, a slice of the quiet runs each tick, not a
burst of every run at once.

A checkpoint written again after it was judged complete (a second process resumed from an earlier
checkpoint and saved over it: the same step, new files) is a resume the loss writers may not show. The
sink remembers when each complete checkpoint's files were last written (the verdict's ``newest_mtime``);
when a later complete verdict of the same path, at the same step (a ``last.ckpt`` that moves on to a newer
step is a pointer, not a rewrite), has newer files and most of them were rewritten (not one file added,
such as a ``.ckptwatch-keep`` pin, or touched), it logs ``resume_detected`` with
``signal="rewritten"``. That alone is not alerted: rolling back to an earlier checkpoint is a legitimate
way to get past a loss spike; the loss across the resume is judged like any other. Nothing of this
survives a restart of the service (the sink keeps it in memory).

Memory: one ``LossRun`` per run (with one float per complete checkpoint, at most ``MAX_WRITTEN``) and
one ``RunLossWatcher`` per loss root (runs that share a loss root, Lightning's ``version_N`` dirs, share
it); ``forget`` drops both, so a root where runs come and go does not grow.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ckptwatch.sinks.base import Background, FaultReporter, Sink

if TYPE_CHECKING:
    from ckptwatch.config import WatchConfig
    from ckptwatch.losswatch.report import Resume
    from ckptwatch.losswatch.settings import LossSettings
    from ckptwatch.losswatch.watcher import RunLossWatcher
    from ckptwatch.model import RunReport

POLL_SECONDS = 5.0
ACTIVE_SECONDS = 600.0
IDLE_SECONDS = 300.0
MAX_WRITTEN = 4096  # complete checkpoints per run whose write time is remembered (the newest judged)


@dataclass(slots=True)
class LossRun:
    """What the loss watch remembers of one run between passes."""

    watch_root: str
    loss_root: str  # where its logs are (engine.loss_root)
    settings: LossSettings
    checkpoints: tuple[tuple[int | None, str], ...]  # (step, path): resumes are named after these
    resume_ratio: float | None = None  # of its last judged resume (metrics)
    # complete checkpoint -> (its newest_mtime, its step) when last judged complete
    written: dict[str, tuple[float, int | None]] = field(default_factory=dict)


@dataclass(slots=True)
class LossWatch:
    """One loss root's incremental reader and when its last poll read new points."""

    watcher: RunLossWatcher
    grew_at: float = field(default=-1e18)


class LossSink(Sink):
    name = "loss watch"

    def __init__(self, *, alerts: Any, hazards_of: Callable[[str], list[str]], faults: FaultReporter,
                 background: Background, touched_since: Callable[[float], list[tuple[str, str]]],
                 plots_dir: str, log: Any) -> None:
        self.alerts = alerts
        self.hazards_of = hazards_of  # checkpoint path -> its stored resume hazards (cause beside effect)
        self.faults = faults
        self.background = background
        self.touched_since = touched_since  # since -> the (watch root, scope) pairs events touched since
        self.plots_dir = plots_dir
        self.log = log
        self.runs: dict[str, LossRun] = {}
        self.watches: dict[str, LossWatch] = {}
        self.next_idle_round = 0.0  # when the next slow round starts
        self._grew: dict[str, float] = {}  # run root -> when its poll last read new points (active ones)
        self._idle_order: list[str] = []  # the runs of the slow round in progress, in the order read
        self._idle_done = 0  # how many of them were read
        self._idle_start = 0.0

    def judged(self, watch: WatchConfig, run: RunReport, now: float) -> float | None:
        if watch.loss is None:
            self.forget(run.root)
            return None
        from ckptwatch.engine import loss_root

        where = loss_root(run)
        old = self.runs.get(run.root)
        if old is not None and old.loss_root != where:
            self.forget(run.root)
        checkpoints = tuple((v.step, v.path) for v in run.checkpoints)
        if old is not None and old.loss_root == where:  # the same record, updated: a rescan of 10,000 runs
            # allocates no new long-lived records between its short-lived ones (the heap stays compact)
            old.watch_root, old.settings = watch.path, watch.loss
            if old.checkpoints != checkpoints:
                old.checkpoints = checkpoints
        else:
            self.runs[run.root] = LossRun(watch.path, where, watch.loss, checkpoints,
                                          old.resume_ratio if old else None, old.written if old else {})
        self._rewritten(watch.path, run)
        self.poll(run.root, now)
        return None

    def _rewritten(self, watch_root: str, run: RunReport) -> None:
        """Log each complete checkpoint whose files were written again since it was judged complete."""
        from ckptwatch.model import Status

        written = self.runs[run.root].written
        for v in run.checkpoints:
            if v.status is not Status.COMPLETE:
                continue
            before = written.pop(v.path, None)
            judged = (v.newest_mtime, v.step)
            written[v.path] = before if before == judged else judged  # (re)inserted: the newest are kept
            # at the same step only: a pointer that moves on (Lightning's last.ckpt) is not a rewrite
            if before is None or v.newest_mtime <= before[0] or v.step is None or v.step != before[1]:
                continue
            again, total = _written_since(v.path, watch_root, before[0])
            if total and 2 * again > total:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.newest_mtime))
                self.log.info(
                    "resume_detected", run=run.root, checkpoint=v.path, step=v.step, signal="rewritten",
                    alert=False, rewritten_files=again, files=total,
                    message=(f"{v.path} was written again after it was judged complete ({again} of its "
                             f"{total} files rewritten, the newest at {when}): another process resumed "
                             f"from an earlier checkpoint and saved over it. If that was not a deliberate "
                             f"roll-back, check which checkpoint that process loaded; the loss watch "
                             f"judges the loss across the resume."))
        while len(written) > MAX_WRITTEN:
            written.pop(next(iter(written)))

    def tick(self, now: float) -> float | None:
        """Poll the active runs now; the quiet ones on the slow round, a slice of it each tick."""
        since = now - ACTIVE_SECONDS
        due = dict.fromkeys(self._slow_round(now))
        for run_root, at in list(self._grew.items()):
            if at >= since and run_root in self.runs:
                due[run_root] = None
            else:
                del self._grew[run_root]
        whole = set()
        for root, scope in self.touched_since(since):
            run = self.runs.get(scope)
            if scope == root:
                whole.add(root)  # an event the index could not place: in no run dir
            elif run is not None and run.watch_root == root:
                due[scope] = None
        if whole:  # the runs whose logs are outside their run dir, where such an event may be
            due.update((r, None) for r, run in self.runs.items()
                       if run.watch_root in whole and not _inside(run.loss_root, r))
        for run_root in due:
            if run_root in self.runs:  # not forgotten since the slow round took it
                self.poll(run_root, now)
        return now + POLL_SECONDS

    def _slow_round(self, now: float) -> list[str]:
        """The quiet runs to read at this tick: every run once per ``IDLE_SECONDS``, spread over it.

        A round takes the runs as they are when it starts and reads them a tick ahead of its share of
        ``IDLE_SECONDS`` (1/60 of 10,000 runs per 5 s tick); a round that ran late (the loop was busy in
        a long pass) is finished at the start of the next. A run added during a round was read when it
        was judged, and is in the next round."""
        todo: list[str] = []
        if now >= self.next_idle_round:
            todo = self._idle_order[self._idle_done:]
            self._idle_order, self._idle_done, self._idle_start = list(self.runs), 0, now
            self.next_idle_round = now + IDLE_SECONDS
        n = len(self._idle_order)
        share = (now - self._idle_start + POLL_SECONDS) / IDLE_SECONDS
        upto = min(n, math.ceil(n * share - 1e-6))  # 1e-6: a float's noise is no extra run
        if upto > self._idle_done:
            todo += self._idle_order[self._idle_done:upto]
            self._idle_done = upto
        return todo

    def poll(self, run_root: str, now: float) -> None:
        """Read what the run's loss sources appended; log each newly judged resume; alert a jump."""
        run = self.runs[run_root]
        watch = self.watches.get(run.loss_root)
        if watch is None:
            from ckptwatch.losswatch.watcher import RunLossWatcher

            watch = self.watches[run.loss_root] = LossWatch(RunLossWatcher(run.loss_root, run.settings))
        resumes = self.faults.call(f"loss watch of {run.loss_root}", watch.watcher.poll, run.checkpoints,
                                   action=f"retrying at the next pass; `ckptwatch loss {run.loss_root}` "
                                          "shows what the loss watch reads", context={"run": run_root})
        if resumes is None:
            return
        if watch.watcher.grew:
            watch.grew_at = now
            self._grew[run_root] = now
        for r in resumes:
            self.log.info("resume_detected", run=run_root, checkpoint=r.from_checkpoint, step=r.at_step,
                          from_step=r.from_step, before=r.before, after=r.after, ratio=r.ratio, alert=r.alert,
                          scratch=r.scratch, signal=r.signal, evidence=r.evidence or None, message=r.reason)
            if r.ratio is not None:
                run.resume_ratio = r.ratio
            if r.alert:
                self._alert_jump(run_root, watch.watcher, r, now)

    def _alert_jump(self, run_root: str, watcher: RunLossWatcher, r: Resume, now: float) -> None:
        """The loss_jump alert, with its plot drawn on the background worker (matplotlib takes a while)."""
        from ckptwatch.alerts.messages import loss_jump_alert

        hazards = self.hazards_of(r.from_checkpoint) if r.from_checkpoint else []

        def send(plot: Any) -> None:
            if isinstance(plot, Exception):
                self.log.warning("loss_plot_failed", run=run_root, error=f"{type(plot).__name__}: {plot}")
                plot = None
            self.alerts.raise_alert(loss_jump_alert(
                run=run_root, at_step=r.at_step, from_step=r.from_step, from_checkpoint=r.from_checkpoint,
                before=r.before, after=r.after, ratio=r.ratio, scratch=r.scratch, hazards=hazards,
                host=self.alerts.host, now=now, plot=plot, nonfinite=r.nonfinite))

        if not self.alerts.enabled:
            return
        digest = hashlib.sha1(run_root.encode()).hexdigest()[:8]  # stable across restarts, unlike hash()
        path = os.path.join(self.plots_dir, f"{os.path.basename(run_root.rstrip(os.sep))}-{digest}-"
                                            f"step{r.at_step}.png")
        report = watcher.report()

        def draw() -> str:
            from ckptwatch.losswatch import plot_history

            os.makedirs(self.plots_dir, exist_ok=True)
            plot_history(report, path)
            return path

        self.background.submit(draw, send)

    def resume_ratio(self, run_root: str) -> float | None:
        run = self.runs.get(run_root)
        return run.resume_ratio if run else None

    def forget(self, run_root: str) -> None:
        run = self.runs.pop(run_root, None)
        self._grew.pop(run_root, None)
        if run is not None and not any(r.loss_root == run.loss_root for r in self.runs.values()):
            self.watches.pop(run.loss_root, None)

    def remembered(self) -> set[str]:
        return set(self.runs) | set(self.watches) | set(self._grew)


def _inside(path: str, run_root: str) -> bool:
    """Is ``path`` the run dir or below it? (Its events then come with the run's scope.)"""
    return path == run_root or path.startswith(run_root.rstrip(os.sep) + os.sep)


def _written_since(path: str, root: str, since: float) -> tuple[int, int]:
    """(files of the checkpoint at ``path`` modified after ``since``, all its files but hidden ones)."""
    from ckptwatch.scan import tree

    files = [e for e in tree(path, root).files if not e.name.startswith(".")]
    return sum(e.mtime > since for e in files), len(files)
