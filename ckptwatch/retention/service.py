"""The retention sink: plan on every judgement, delete off the loop, refuse on an anomalous scan.

Last in the row (DESIGN.md), after the state store, the alerts and the mirror have seen the verdicts.
The loop thread only plans (pure, on the report it already has); the deletion (a fresh listing and
judgement of the run, the re-check, the renames and the removal) runs on the ``Background`` worker, so a
10 GB checkpoint of 1,000 files costs the loop a ``submit``. One deletion job per run at a time.

Memory per run: the count of complete checkpoints at the last pass (a drop to zero or by more than half
blocks deletion for that pass: restic#4619) and the last plan logged (``retention_planned`` is logged when
the plan changes, not every pass). Per watched root: the filesystem it was on at the first pass, so an
unmounted root (its mount point now empty, on the parent's filesystem) deletes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ckptwatch.model import RunReport
from ckptwatch.retention import delete, execute
from ckptwatch.sinks.base import Background, FaultReporter, Sink

if TYPE_CHECKING:
    from ckptwatch.config import WatchConfig
    from ckptwatch.config.mirror import MirrorConfig

BLOCKED_ADVICE = ("look at the run dir: if checkpoints really went away (a rotation by the trainer, a "
                  "cleanup by hand), nothing is wrong and the next pass deletes normally; if the filesystem "
                  "is unmounted or unreadable, fix that first. Nothing was deleted.")
SHORTFALL_ADVICE = ("free space another way or relax the keep rules: every checkpoint left is protected "
                    "(newest complete, pinned, a pointer's target, the best, not yet mirrored) or kept by "
                    "a rule. `ckptwatch prune RUN --dry-run` lists each one and why.")


def _device(path: str) -> tuple[int, int] | None:
    """(st_dev of ``path``, st_dev of its parent): a root whose device became its parent's was unmounted."""
    try:
        return os.stat(path).st_dev, os.stat(os.path.dirname(path.rstrip(os.sep)) or os.sep).st_dev
    except OSError:
        return None


class RetentionSink(Sink):
    """Only for watches with ``[watch.retention]``."""

    name = "retention"

    def __init__(self, *, alerts: Any, faults: FaultReporter, background: Background,
                 rejudge: Callable[[WatchConfig, str, float], RunReport | None], log: Any,
                 mirrored: Callable[[str, str], bool] | None = None,
                 recheck: Callable[[MirrorConfig, str], Callable[[str], bool]] | None = None) -> None:
        self.alerts = alerts
        # (run root, checkpoint) -> known committed on the mirror target (the mirror sink's memory, no I/O):
        # what the plan on the loop thread uses; the worker asks the target itself before each deletion.
        self.mirrored = mirrored
        self.recheck = recheck  # (mirror, run root) -> the worker's predicate (default: mirrored_check)
        self.faults = faults
        self.background = background
        self.rejudge = rejudge
        self.log = log
        self._complete: dict[str, int] = {}
        self._logged: dict[str, tuple[tuple[str, bool], ...]] = {}
        self._busy: set[str] = set()
        self._devices: dict[str, tuple[int, int] | None] = {}
        self._recovered: set[str] = set()  # runs whose trash was looked at since the service started

    def _root_changed(self, root: str) -> str | None:
        now = _device(root)
        first = self._devices.setdefault(root, now)
        if now is None:
            return f"the watched root {root} cannot be stat'ed"
        if first is not None and now[0] != first[0]:
            if now[0] == now[1] and first[0] != first[1]:
                return f"the watched root {root} is no longer a mount point (unmounted?)"
            return f"the watched root {root} is on another filesystem than at the first pass"
        return None

    def judged(self, watch: WatchConfig, run: RunReport, now: float) -> float | None:
        policy = watch.retention
        if policy is None or run.root in self._busy:
            return None
        if run.root not in self._recovered:  # first sight: finish what a crash left in its trash first
            self._recovered.add(run.root)
            if execute.pending_trash(run):
                self._busy.add(run.root)
                self.background.submit(lambda: execute.recover_run(run),
                                       lambda done: self._recovery_done(run.root, done))
                return now + 0.1
        known, verified = self._mirror_guards(watch, run.root)
        run_plan = execute.plan_for(run, policy, watch.path, now, mirrored=known,
                                    previous_complete=self._complete.get(run.root),
                                    root_changed=self._root_changed(watch.path))
        self._complete[run.root] = run_plan.complete
        self._log_plan(run_plan, policy.dry_run)
        if run_plan.blocked:
            why = "; ".join(run_plan.blocked)
            self.log.warning("retention_blocked", run=run.root, why=why)
            self.alerts.retention_blocked(run.root, why, BLOCKED_ADVICE, now=now)
            return None
        if run_plan.plan.shortfall:
            why = (f"min_free cannot be met: {run_plan.plan.shortfall} bytes short after every deletion the "
                   "safety rules allow")
            self.log.warning("retention_blocked", run=run.root, why=why)
            self.alerts.retention_blocked(run.root, why, SHORTFALL_ADVICE, now=now)
        else:
            self.alerts.retention_ok(run.root, now=now)
        if policy.dry_run or not run_plan.plan.deletions:
            return None
        self._busy.add(run.root)
        self.background.submit(
            lambda: execute.prune(run_plan, policy, watch.path, now,
                                  rejudge=lambda: self.rejudge(watch, run.root, now), mirrored=verified),
            lambda outcomes: self._done(run.root, outcomes))
        return None

    def _mirror_guards(self, watch: WatchConfig, run_root: str) -> tuple[Callable[[str], bool] | None,
                                                                         Callable[[str], bool] | None]:
        """(for the plan, for the re-check before deleting): None and None when the watch has no mirror.

        DESIGN.md invariant 3: with a mirror configured, a checkpoint without a committed copy on the target
        that verifies (by size at least) is never deleted. The plan uses the mirror sink's memory; the
        worker's fresh plan asks the target, so a copy removed since it was committed stops the deletion.
        """
        config = watch.mirror
        if config is None:
            return None, None
        from ckptwatch.mirror.service import mirrored_check

        memory = self.mirrored
        known = (lambda path: memory(run_root, path)) if memory is not None else (lambda path: False)
        return known, (self.recheck(config, run_root) if self.recheck else mirrored_check(config, run_root))

    def _recovery_done(self, run_root: str, done: list[str] | BaseException) -> None:
        self._busy.discard(run_root)
        if isinstance(done, BaseException):
            self.faults.report(f"retention in {run_root}", f"recovering its trash: {type(done).__name__}: "
                               f"{done}", "nothing is deleted in this run until the next pass")
            return
        for line in done:
            self.log.warning("retention_recovered", run=run_root, what=line)

    def _log_plan(self, run_plan: execute.RunPlan, dry_run: bool) -> None:
        signature = tuple((d.path, d.keep) for d in run_plan.plan.decisions)
        if self._logged.get(run_plan.run) == signature:
            return
        self._logged[run_plan.run] = signature
        self.log.info("retention_planned", run=run_plan.run, dry_run=dry_run,
                      keep=[d.path for d in run_plan.plan.decisions if d.keep],
                      delete=[d.path for d in run_plan.plan.deletions],
                      reasons={d.path: list(d.reasons) for d in run_plan.plan.decisions},
                      bytes_freed=run_plan.plan.bytes_freed)

    def _done(self, run_root: str, outcomes: list[delete.Outcome] | BaseException) -> None:
        """On the loop thread: log what the worker did; a failure is a fault of this run's retention."""
        self._busy.discard(run_root)
        component = f"retention in {run_root}"
        if isinstance(outcomes, BaseException):
            self.faults.report(component, f"{type(outcomes).__name__}: {outcomes}",
                               "nothing more is deleted in this run until the next pass")
            return
        deleted = sum(1 for o in outcomes if o.result == "deleted")
        if run_root in self._complete:  # our own deletions are no anomaly at the next pass
            self._complete[run_root] = max(0, self._complete[run_root] - deleted)
        refused = [o for o in outcomes if o.result == "refused"]
        for o in outcomes:
            if o.result == "deleted":
                self.log.info("checkpoint_deleted", run=run_root, checkpoint=o.path, reason=o.reason,
                              bytes=o.bytes)
            else:
                self.log.info("retention_skipped", run=run_root, checkpoint=o.path, result=o.result,
                              reason=o.reason)
        if refused:
            self.faults.report(component, f"{refused[0].path}: {refused[0].reason}",
                               "nothing else is deleted in this run until the cause is fixed")
        elif outcomes:
            self.faults.ok(component)

    def forget(self, run_root: str) -> None:
        self._complete.pop(run_root, None)
        self._logged.pop(run_root, None)
        self._recovered.discard(run_root)

    def remembered(self) -> set[str]:
        return set(self._complete) | set(self._logged) | self._recovered

    def close(self, timeout: float) -> None:
        self.background.wait_idle(timeout)
