"""What the loss watch found: resumes with their verdicts, per-writer segments, and plot data.

``Resume.reason`` is the message an operator reads in an alert: what is wrong, where, what to do.
``LossReport.to_json`` is the ``"loss"`` object of the ``--json`` contract (DESIGN.md): every resume
carries at least ``at_step``, ``before``, ``after``, ``ratio`` and ``alert``; other keys are extensions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ckptwatch.losswatch.points import LossPoint


@dataclass(frozen=True)
class Resume:
    at_step: int  # first step logged after the resume
    from_step: int | None  # the step it resumed from (a checkpoint's step when one matches)
    from_checkpoint: str | None
    before: float | None  # median of the reference window
    after: float | None  # median of the first post-resume losses (NaN when non-finite)
    ratio: float | None
    alert: bool
    reason: str
    scratch: bool
    nonfinite: bool
    judged: bool = True
    initial: float | None = None  # median of the run's first losses
    source: str = ""  # kind of source that showed it (tensorboard, text, ...)
    writer: str = ""  # the file the post-resume points came from
    before_writer: str = ""
    before_steps: tuple[int, int] | None = None  # first and last step of the reference window
    after_steps: tuple[int, int] | None = None
    kind: str = "loss_jump"  # alert kind when ``alert``
    # what showed the resume: "writer" (a new writer, or steps that go back in one), "history" (a
    # checkpoint's trainer_state.json history contradicts an earlier one), "config" (the run configuration
    # in trainer_state.json changed between consecutive checkpoints), "loss_level" (none of these: the loss
    # went back to the run's initial level inside one continuous history)
    signal: str = "writer"
    evidence: str = ""  # for "config": what changed, naming both values and both checkpoints

    def to_json(self) -> dict[str, Any]:
        return {
            "at_step": self.at_step,
            "before": _num(self.before),
            "after": _num(self.after),
            "ratio": _num(self.ratio, 3),
            "alert": self.alert,
            "kind": self.kind if self.alert else None,
            "from_step": self.from_step,
            "from_checkpoint": self.from_checkpoint,
            "scratch": self.scratch,
            "nonfinite": self.nonfinite,
            "judged": self.judged,
            "initial": _num(self.initial),
            "source": self.source,
            "writer": self.writer,
            "before_steps": list(self.before_steps) if self.before_steps else None,
            "after_steps": list(self.after_steps) if self.after_steps else None,
            "signal": self.signal,
            "evidence": self.evidence or None,
            "message": self.reason,
        }


def _num(x: float | None, digits: int = 6) -> float | str | None:
    if x is None:
        return None
    if not math.isfinite(x):
        return str(x)  # "nan"/"inf": JSON has no NaN
    return round(x, digits)


@dataclass(frozen=True)
class SegmentSummary:
    """One writer segment as printed by ``ckptwatch loss``."""

    source: str
    writer: str
    first_step: int
    last_step: int
    first_loss: float
    last_loss: float
    points: int

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "writer": self.writer, "first_step": self.first_step,
                "last_step": self.last_step, "first_loss": _num(self.first_loss),
                "last_loss": _num(self.last_loss), "points": self.points}


@dataclass(frozen=True)
class LossReport:
    root: str
    resumes: tuple[Resume, ...]
    segments: tuple[SegmentSummary, ...] = ()
    # per segment (same order as ``segments``): decimated points for plots; not part of equality
    histories: tuple[tuple[LossPoint, ...], ...] = field(default=(), compare=False, repr=False)
    notes: tuple[str, ...] = ()  # sources that could not be read, and why

    @property
    def alert(self) -> bool:
        return any(r.alert for r in self.resumes)

    def verdict(self) -> str:
        alerts = [r for r in self.resumes if r.alert]
        if alerts:
            r = alerts[0]
            if r.signal == "loss_level":
                return f"ALERT: loss back at its initial level at step {r.at_step} (restarted from scratch)"
            what = "restarted from scratch" if r.scratch else ("non-finite loss" if r.nonfinite
                                                               else "loss jump")
            return f"ALERT: {what} after the resume at step {r.at_step}"
        if self.resumes:
            return f"{len(self.resumes)} resume(s), no loss jump"
        if not self.segments:
            return "no loss found"
        return "no resume found"

    def to_json(self) -> dict[str, Any]:
        return {"resumes": [r.to_json() for r in self.resumes],
                "segments": [s.to_json() for s in self.segments],
                "notes": list(self.notes)}
