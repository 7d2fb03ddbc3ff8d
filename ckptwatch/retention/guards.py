"""The invariants no retention plan may break (DESIGN.md invariant 3). Pure.

A checkpoint is *protected* when any of these holds; no keep rule, no crashed-save rule and no disk
pressure may delete it:

- it is the newest complete checkpoint of the run, or the one a resume would use (the newest complete
  one without a blocking hazard: ``latest`` passes over the others, so it is the run's real last good);
- it is not settled (``in_progress``), or it is newer than the newest complete one (a save being
  written, or one whose verdict may still change), or the run has no complete checkpoint at all;
- it is the run's recorded best (``best_model_checkpoint``, ``best_model_path``) while ``keep_best`` is on;
- a framework pointer names it (DeepSpeed ``latest``, Megatron's tracker, ``last.ckpt``,
  ``ckptwatch-latest``): deleting it breaks the next resume;
- it is pinned by a ``.ckptwatch-keep`` file, whose text is the reason;
- it is reached through a symlink or lies outside the watched root;
- a mirror is configured and it has no committed, verified copy yet.

Why one function gives the reasons instead of a yes/no: the plan shows them ("newest complete",
"pinned: release candidate"), and ``violations`` (the tests' property, and ``delete``'s last check)
uses the same function, so what is shown and what is enforced cannot drift apart.

"Newer" is by step when both checkpoints have one and the steps differ, else by mtime. A run that mixes
checkpoints with and without a step is ordered like the engine orders it (no step sorts first, as the
oldest) to choose the newest complete; a step-less checkpoint whose mtime is newer than that one is
still protected as newer, so the mix can only protect more, never less.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ckptwatch.config.retention import RetentionConfig
from ckptwatch.model import Status
from ckptwatch.retention.model import Candidate, Plan

RecencyKey = tuple[int, int, float, str]
PIN_SHOWN = 80  # characters of a pin's text shown in a reason (the file is written by anyone in the root)


def recency(c: Candidate) -> RecencyKey:
    """Sort key, oldest first: by step, then mtime; a checkpoint without a step sorts before any with one,
    as in the engine's order (``CheckpointCandidate.sort_key``); the path breaks exact ties."""
    if c.step is None:
        return (0, 0, c.mtime, c.path)
    return (1, c.step, c.mtime, c.path)


def newer(a: Candidate, b: Candidate) -> bool:
    """Is ``a`` newer than ``b``: by step when both have one and they differ, else by mtime."""
    if a.step is not None and b.step is not None and a.step != b.step:
        return a.step > b.step
    return a.mtime > b.mtime


def newest_complete(candidates: Sequence[Candidate]) -> Candidate | None:
    """The run's newest complete checkpoint (``recency`` order), or None when none is complete."""
    complete = [c for c in candidates if c.status is Status.COMPLETE]
    return max(complete, key=recency) if complete else None


def newest_resumable(candidates: Sequence[Candidate]) -> Candidate | None:
    """The newest complete checkpoint without a blocking hazard: the one ``latest`` names."""
    safe = [c for c in candidates if c.status is Status.COMPLETE and not c.blocks_resume]
    return max(safe, key=recency) if safe else None


def label(c: Candidate) -> str:
    """How a reason names another checkpoint: ``step 40``, or its directory name when it has no step."""
    return f"step {c.step}" if c.step is not None else (os.path.basename(c.path.rstrip("/")) or c.path)


def pin_reason(text: str) -> str:
    """``pinned: <first line of the .ckptwatch-keep file>``, printable and short (anyone can write it)."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = "".join(ch if ch.isprintable() else "?" for ch in line)
    if len(line) > PIN_SHOWN:
        line = line[:PIN_SHOWN - 3] + "..."
    return f"pinned: {line}" if line else "pinned (empty .ckptwatch-keep)"


def protection(c: Candidate, newest: Candidate | None, policy: RetentionConfig,
               resumable: Candidate | None = None) -> tuple[str, ...]:
    """Why ``c`` must not be deleted; empty when nothing protects it.

    ``newest`` is the run's newest complete checkpoint (``newest_complete``) and ``resumable`` the one a
    resume uses (``newest_resumable``); both are computed once per run by the caller, which keeps this
    function O(1) per checkpoint.
    """
    reasons: list[str] = []
    if newest is None:
        reasons.append("no complete checkpoint in the run")
    elif c.path == newest.path:
        reasons.append("newest complete")
    elif newer(c, newest):
        reasons.append(f"newer than the newest complete ({label(newest)})")
    if resumable is not None and newest is not None and c.path == resumable.path != newest.path:
        reasons.append("newest resumable (the newer complete ones have blocking hazards)")
    if c.status is Status.IN_PROGRESS:
        reasons.append("not settled (in_progress)")
    if c.best and policy.keep_best is not None:
        reasons.append("the run's recorded best checkpoint")
    reasons.extend(f"named by {pointer}" for pointer in c.pointed_by)
    if c.pinned is not None:
        reasons.append(pin_reason(c.pinned))
    if c.unsafe_path:
        reasons.append("reached through a symlink or outside the watched root")
    if c.mirrored is False:
        reasons.append("not yet mirrored and verified")
    return tuple(reasons)


def protections(candidates: Sequence[Candidate], policy: RetentionConfig) -> list[tuple[str, ...]]:
    """``protection`` of every candidate of one run, in order."""
    newest = newest_complete(candidates)
    resumable = newest_resumable(candidates)
    return [protection(c, newest, policy, resumable) for c in candidates]


def violations(plan: Plan, candidates: Sequence[Candidate], policy: RetentionConfig) -> list[str]:
    """Every deletion in ``plan`` that the invariants forbid, judged against ``candidates``; [] if none.

    The tests' property, and ``delete``'s last check before it acts, where ``candidates`` come from a
    fresh listing of the disk rather than the plan's memory: a deletion of a checkpoint that is not among
    them is a violation too (it vanished or was never seen, so nothing can vouch for it). Checkpoints the
    plan does not mention are not: keeping is always safe, and the guards are recomputed over the fresh
    candidates, so a newer checkpoint that appeared since the plan still moves "newest complete".
    """
    found: list[str] = []
    guards: dict[str, list[str]] = {}
    for c, reasons in zip(candidates, protections(candidates, policy), strict=True):
        guards.setdefault(c.path, []).extend(reasons)
    for d in plan.decisions:
        if d.keep:
            continue
        if d.path not in guards:
            found.append(f"{d.path}: planned for deletion but not among the run's checkpoints "
                         "(vanished or never seen); plan again from a fresh listing")
        elif guards[d.path]:
            found.append(f"{d.path}: planned for deletion but protected: {'; '.join(guards[d.path])}")
    return found
