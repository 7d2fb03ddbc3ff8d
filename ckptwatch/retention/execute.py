"""Retention for one run, start to finish: facts -> plan -> refusals -> the guarded deletion path.

The service's sink and ``ckptwatch prune`` both call this, so a dry run shows exactly what the service
would do. ``plan_for`` is the plan on a report already made; ``prune`` re-judges the run from the disk
before deleting anything (``delete.carry_out``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ckptwatch.config.retention import RetentionConfig
from ckptwatch.model import RunReport, Status
from ckptwatch.retention import delete, facts
from ckptwatch.retention.model import Candidate, DiskSpace, Plan
from ckptwatch.retention.policy import plan_run
from ckptwatch.scan import TRASH_NAME

# Problem kinds that mean a listing or a read of the run's own directories failed: a plan made on such a
# scan may be missing checkpoints, so it deletes nothing (restic#4619: an empty listing wiped a repo).
LISTING_FAILURES = frozenset({"unreadable", "read_error", "deleted"})


@dataclass(frozen=True)
class RunPlan:
    """A run's plan, with the reasons it must not be carried out (``blocked``), if any."""

    run: str
    plan: Plan
    candidates: list[Candidate] = field(default_factory=list)
    blocked: tuple[str, ...] = ()

    @property
    def complete(self) -> int:
        return sum(1 for c in self.candidates if c.status is Status.COMPLETE)


def disk_of(path: str) -> DiskSpace | None:
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    return DiskSpace(total=usage.total, free=usage.free)


def listing_failures(report: RunReport) -> list[str]:
    """Findings that say the run was not fully listed: its own dir or a checkpoint dir could not be read."""
    out = [f"{p.file}: {p.message}" for p in report.problems if p.kind in LISTING_FAILURES]
    for v in report.checkpoints:
        out += [f"{p.file}: {p.message}" for p in v.problems
                if p.kind in LISTING_FAILURES and p.file in (v.path, report.root)]
    return out


def plan_for(report: RunReport, policy: RetentionConfig, watch_root: str, now: float, *,
             mirrored: Callable[[str], bool] | None = None, previous_complete: int | None = None,
             root_changed: str | None = None) -> RunPlan:
    """The plan for ``report``, and why it must not be carried out (the anomalous-scan refusals).

    ``previous_complete``: the run's count of complete checkpoints at the last pass (the service keeps
    it); a drop to zero or by more than half blocks deletion. ``root_changed``: why the watched root is
    not the filesystem it was (unmounted, an empty mount point), or None.
    """
    candidates = facts.candidates_of(report, policy, root=watch_root, mirrored=mirrored)
    disk = disk_of(report.root) if policy.min_free is not None else None
    plan = plan_run(candidates, policy, now, disk)
    blocked: list[str] = []
    failures = listing_failures(report)
    if failures:
        blocked.append("a listing failed (" + "; ".join(failures[:2]) + ")")
    complete = sum(1 for c in candidates if c.status is Status.COMPLETE)
    if previous_complete:
        if complete == 0:
            blocked.append(f"the run's complete checkpoints dropped from {previous_complete} to none since "
                           "the last pass")
        elif complete * 2 < previous_complete:
            blocked.append(f"the run's complete checkpoints dropped from {previous_complete} to {complete} "
                           "since the last pass (more than half)")
    if root_changed:
        blocked.append(root_changed)
    return RunPlan(report.root, plan, candidates, tuple(blocked))


def prune(run_plan: RunPlan, policy: RetentionConfig, watch_root: str, now: float,
          rejudge: Callable[[], RunReport | None], *,
          remove: Callable[[delete.TrashEntry], None] | None = None,
          mirrored: Callable[[str], bool] | None = None) -> list[delete.Outcome]:
    """Carry out ``run_plan``'s deletions through the guarded path; nothing when it is blocked.

    ``rejudge`` lists and judges the run again from the disk (None: the run is gone). The fresh plan
    uses no pass-to-pass memory (only the fresh report), so the refusal rules that need memory were
    already applied to ``run_plan``.
    """
    if run_plan.blocked or not run_plan.plan.deletions:
        return []

    def fresh() -> tuple[Plan, list[Candidate]] | None:
        report = rejudge()
        if report is None:
            return None
        again = plan_for(report, policy, watch_root, now, mirrored=mirrored)
        if again.blocked:
            return None
        return again.plan, again.candidates

    return delete.carry_out(run_plan.plan.deletions, fresh, policy, watch_root, now=now, remove=remove)


def plan_json(run_plan: RunPlan, *, dry_run: bool) -> dict[str, Any]:
    """The ``retention`` object of a run in ``--json`` (DESIGN.md: keep, delete, reasons; extended)."""
    plan = run_plan.plan
    return {"keep": [d.path for d in plan.decisions if d.keep],
            "delete": [d.path for d in plan.deletions],
            "reasons": {d.path: list(d.reasons) for d in plan.decisions},
            "protected": [d.path for d in plan.decisions if d.protected],
            "bytes_freed": plan.bytes_freed, "shortfall": plan.shortfall,
            "blocked": list(run_plan.blocked), "dry_run": dry_run}


def trash_parents(report: RunReport) -> set[str]:
    """The directories whose trash this run's deletions use: the run dir and its checkpoints' parents."""
    out = {report.root}
    for v in report.checkpoints:
        out.add(os.path.dirname(os.path.abspath(v.path.split("*", 1)[0].rstrip(os.sep) or os.sep)))
    return out


def pending_trash(report: RunReport) -> list[str]:
    """The trash dirs of this run that exist now: a deletion a crash interrupted (``recover`` them first)."""
    return sorted(p for p in trash_parents(report) if os.path.lexists(os.path.join(p, TRASH_NAME)))


def recover_run(report: RunReport) -> list[str]:
    """Finish the deletions a crash interrupted in this run (``delete.recover``); what was done."""
    done: list[str] = []
    for parent in pending_trash(report):
        done += delete.recover(parent)
    return done
