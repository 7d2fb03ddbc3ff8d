"""How far a run's mirror is behind its newest complete checkpoint: in steps and in seconds. Pure.

One definition for ``ckptwatch status`` (from the state store) and the metrics endpoint (from the mirror
sink's memory), so the two never disagree:

- ``steps``: the newest complete checkpoint's step minus the newest committed copy's step; 0 when the
  newest complete checkpoint has a committed copy; the newest complete step itself when nothing is
  committed yet (everything since step 0 exists only on this box). None when a step is unknown (a
  layout without step numbers).
- ``seconds``: how long the newest complete checkpoint has been waiting without a committed copy: 0 once
  it has one, otherwise now minus the time it was written (its newest file's mtime). Chosen over the age
  difference between the two checkpoints because it keeps growing while the mirror is stuck, which is
  what an alert rule on it (``ckptwatch_mirror_lag_seconds > 3600``) must see; the steps show the backlog.

No lag at all (None) when the run has no complete checkpoint: there is nothing to mirror yet.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mark:
    """A checkpoint, as far as the lag cares: its path, step and write time (newest file mtime)."""

    path: str
    step: int | None
    mtime: float | None


@dataclass(frozen=True)
class Position:
    """A run's mirror: its target, its newest complete checkpoint, its newest committed copy."""

    to: str
    complete: Mark | None
    committed: Mark | None


@dataclass(frozen=True)
class Lag:
    steps: int | None
    seconds: float | None


def mirror_lag(complete: Mark | None, committed: Mark | None, now: float) -> Lag | None:
    """The lag of a run whose newest complete checkpoint is ``complete`` and newest committed copy
    ``committed`` (module docstring); None without a complete checkpoint."""
    if complete is None:
        return None
    if committed is not None and (committed.path == complete.path or (
            committed.step is not None and complete.step is not None and committed.step >= complete.step)):
        return Lag(0, 0.0)
    if committed is None:
        steps = complete.step
    elif complete.step is not None and committed.step is not None:
        steps = complete.step - committed.step
    else:
        steps = None
    seconds = max(0.0, now - complete.mtime) if complete.mtime is not None else None
    return Lag(steps, seconds)
