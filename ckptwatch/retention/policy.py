"""The retention plan: one decision, with its reasons, for every checkpoint of a run. Pure.

``plan_run(candidates, policy, now, disk)`` applies, in this order:

1. **Guards** (``guards.protection``): a protected checkpoint is kept whatever follows, and its guard
   reasons come first.
2. **Keep rules** on complete checkpoints; any rule that is set can keep one: ``keep_last`` (the newest
   N), ``keep_every_steps`` (milestones), ``keep_best`` (the M best with a metric value), ``keep_within``
   (younger than a duration), ``keep_interval`` (the oldest in each interval of mtime since the epoch).
   With no keep rule set, complete checkpoints are kept ("no keep rule"): a table of only ``min_free``
   or ``delete_incomplete_after`` deletes for disk pressure and crashed saves, never for age.
3. **Crashed saves** (incomplete, corrupt): deleted only when ``delete_incomplete_after`` is set, they are
   older than it and a newer complete checkpoint exists; otherwise kept, with why. Disk pressure never
   deletes them: they are evidence of what went wrong, and deleting them is opt-in.
4. **Disk pressure** (``min_free`` and a ``DiskSpace``): while free space plus the planned deletions is
   below ``min_free``, delete kept, unprotected complete checkpoints: oldest first, milestones last
   (oldest milestone first). It stops as soon as the target is met; what it cannot free is
   ``Plan.shortfall`` (the caller alerts).

Decisions come back in the candidates' order. The plan is the same for the same inputs: ``now`` and the
disk are parameters, nothing is read from the clock or the filesystem. Planning 10,000 checkpoints is a
few sorts (bench ``retention``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ckptwatch.config.retention import FreeSpace, RetentionConfig
from ckptwatch.model import Status
from ckptwatch.retention.guards import RecencyKey, label, newer, newest_complete, protections, recency
from ckptwatch.retention.model import Candidate, Decision, DiskSpace, Plan

__all__ = ["Candidate", "Decision", "DiskSpace", "Plan", "plan_run", "rule_summary", "span"]


def span(seconds: float) -> str:
    """A duration as a reason shows it: ``6h``, ``1d``, ``90m``, ``45s`` (the largest whole unit)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def rule_summary(policy: RetentionConfig) -> str:
    """The keep rules that are set, with their numbers: ``keep_last 3, keep_every_steps 50``."""
    parts = []
    if policy.keep_last is not None:
        parts.append(f"keep_last {policy.keep_last}")
    if policy.keep_every_steps is not None:
        parts.append(f"keep_every_steps {policy.keep_every_steps}")
    if policy.keep_best is not None:
        parts.append(f"keep_best {policy.keep_best} by {policy.metric} ({policy.mode})")
    if policy.keep_within is not None:
        parts.append(f"keep_within {span(policy.keep_within)}")
    if policy.keep_interval is not None:
        parts.append(f"keep_interval {span(policy.keep_interval)}")
    return ", ".join(parts)


def _has_metric(c: Candidate) -> bool:
    return c.metric is not None and not math.isnan(c.metric)


def _keep_reasons(complete: list[int], candidates: Sequence[Candidate], keys: list[RecencyKey],
                  policy: RetentionConfig, now: float) -> dict[int, list[str]]:
    """Index -> the reasons the keep rules keep that complete checkpoint (absent: no rule keeps it).
    ``keys`` are the candidates' ``recency`` keys, computed once per plan."""
    keep: dict[int, list[str]] = {}

    def add(i: int, reason: str) -> None:
        keep.setdefault(i, []).append(reason)

    newest_first = sorted(complete, key=keys.__getitem__, reverse=True)
    if policy.keep_last is not None:
        n = policy.keep_last
        for rank, i in enumerate(newest_first[:n], 1):
            add(i, f"keep_last {rank} of {n}")
    if policy.keep_every_steps is not None:
        k = policy.keep_every_steps
        for i in complete:
            step = candidates[i].step
            if step is not None and step % k == 0:
                add(i, f"milestone {step}")
    if policy.keep_best is not None:
        m, metric = policy.keep_best, policy.metric or "metric"
        sign = 1.0 if policy.mode == "min" else -1.0
        scored = [i for i in newest_first if _has_metric(candidates[i])]
        scored.sort(key=lambda i: sign * candidates[i].metric)  # type: ignore[operator]  # stable: newer wins ties
        for rank, i in enumerate(scored[:m], 1):
            add(i, f"best {rank} of {m} by {metric} ({candidates[i].metric:.4g})")
    if policy.keep_within is not None:
        cutoff = now - policy.keep_within
        reason = f"younger than {span(policy.keep_within)}"
        for i in complete:
            if candidates[i].mtime > cutoff:
                add(i, reason)
    if policy.keep_interval is not None:
        width = policy.keep_interval
        oldest: dict[int, int] = {}
        for i in complete:
            mtime = candidates[i].mtime
            bucket = math.floor(mtime / width)
            j = oldest.get(bucket)
            if j is None or (mtime, keys[i]) < (candidates[j].mtime, keys[j]):
                oldest[bucket] = i
        reason = f"one per {span(width)}"
        for i in oldest.values():
            add(i, reason)
    return keep


def _crashed_save(c: Candidate, newest: Candidate | None, policy: RetentionConfig,
                  now: float) -> tuple[bool, str]:
    """(delete?, why) for an incomplete or corrupt checkpoint that no guard protects."""
    what = "crashed save" if c.status is Status.INCOMPLETE else f"{c.status.value} save"
    after = policy.delete_incomplete_after
    if after is None:
        return False, f"{what}: delete_incomplete_after is off"
    if not now - c.mtime > after:
        return False, f"{what}, not older than delete_incomplete_after {span(after)}"
    if newest is None or not newer(newest, c):
        return False, f"{what}, no newer complete checkpoint"
    return True, f"{what}, older than {span(after)}, {label(newest)} is complete"


def plan_run(candidates: Sequence[Candidate], policy: RetentionConfig, now: float,
             disk: DiskSpace | None = None) -> Plan:
    """Keep or delete each of one run's ``candidates`` under ``policy``, at time ``now``, given ``disk``."""
    newest = newest_complete(candidates)
    guards = protections(candidates, policy)
    complete = [i for i, c in enumerate(candidates) if c.status is Status.COMPLETE]
    keys = [recency(c) for c in candidates]
    kept_by_rule = _keep_reasons(complete, candidates, keys, policy, now)
    no_rule = not policy.keep_rules
    summary = rule_summary(policy)

    keep: list[bool] = []
    reasons: list[tuple[str, ...]] = []
    for i, c in enumerate(candidates):
        guard = guards[i]
        if c.status is Status.COMPLETE:
            if no_rule:
                own: tuple[str, ...] = ("no keep rule",)
                kept = True
            elif i in kept_by_rule:
                own, kept = tuple(kept_by_rule[i]), True
            elif guard:
                own, kept = (), True  # the guard says why; "no rule keeps it" would read as a deletion
            else:
                own, kept = (f"no keep rule keeps it ({summary})",), False
                if policy.keep_best is not None and not _has_metric(c):
                    own += (f"no {policy.metric} value recorded",)
        elif guard:
            own, kept = (), True  # in_progress, or newer than the newest complete: the guard says why
        else:
            delete, why = _crashed_save(c, newest, policy, now)
            own, kept = (why,), not delete
        keep.append(kept or bool(guard))
        reasons.append(guard + own)

    shortfall = 0
    if policy.min_free is not None and disk is not None:
        shortfall = _relieve_pressure(candidates, keys, policy.min_free, policy.keep_every_steps, disk,
                                      complete, guards, keep, reasons)

    return Plan(tuple(Decision(c.path, c.step, keep[i], reasons[i], c.bytes, bool(guards[i]))
                      for i, c in enumerate(candidates)), shortfall)


def _relieve_pressure(candidates: Sequence[Candidate], keys: list[RecencyKey], min_free: FreeSpace,
                      every: int | None, disk: DiskSpace, complete: list[int], guards: list[tuple[str, ...]],
                      keep: list[bool], reasons: list[tuple[str, ...]]) -> int:
    """Turn kept, unprotected complete checkpoints into deletions until ``min_free`` is met (oldest first,
    milestones last); update ``keep`` and ``reasons`` in place and return the bytes still missing."""
    required = min_free.required(disk.total)
    available = disk.free + sum(c.bytes for c, k in zip(candidates, keep, strict=True) if not k)
    if available >= required:
        return 0

    def order(i: int) -> tuple[bool, RecencyKey]:
        step = candidates[i].step
        milestone = every is not None and step is not None and step % every == 0
        return (milestone, keys[i])

    why = f"disk below min_free {min_free}: oldest kept first"
    for i in sorted((i for i in complete if keep[i] and not guards[i]), key=order):
        if available >= required:
            break
        keep[i] = False
        reasons[i] = (why, *(f"overrides {r}" for r in reasons[i]))
        available += candidates[i].bytes
    return max(0, required - available)
