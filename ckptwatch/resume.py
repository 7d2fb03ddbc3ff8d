"""Which checkpoint a resume should use: the one rule that ``latest``, the resume pointer, the alerts'
"resume from" line, metrics, the state store and ``status`` all read.

The newest *complete* checkpoint is not always safe: a checkpoint can be structurally whole and still
make the trainer load the wrong weights (a stub ``pytorch_model.bin`` beside the adapter, an empty or
never-trained adapter). Its hazards that block (``vocabulary.blocks_resume``) skip it, so a launcher
that runs ``ckpt=$(ckptwatch latest RUN)`` never automates the bug it was meant to catch. Advisory
hazards do not block. ``allow_hazards`` (``latest --allow-hazards``) is the operator's explicit opt-out.
"""

from __future__ import annotations

from dataclasses import replace

from ckptwatch.model import Hazard, Problem, Record, RunReport, Status, Verdict, set_field
from ckptwatch.vocabulary import blocks_resume


class ResumeChoice(Record):
    __slots__ = ("newest_complete", "newest_resumable")
    newest_complete: Verdict | None
    newest_resumable: Verdict | None

    def __init__(self, newest_complete: Verdict | None, newest_resumable: Verdict | None) -> None:
        set_field(self, "newest_complete", newest_complete)
        set_field(self, "newest_resumable", newest_resumable)


def blocking_hazards(v: Verdict) -> list[Hazard]:
    return [h for h in v.hazards if blocks_resume(h.kind)]


def resume_choice(verdicts: tuple[Verdict, ...] | list[Verdict], *,
                  allow_hazards: bool = False) -> ResumeChoice:
    """The newest complete checkpoint, and the newest complete one without a blocking hazard.

    ``verdicts`` are in step order (the engine sorts them).
    """
    complete = [v for v in verdicts if v.status is Status.COMPLETE]
    safe = complete if allow_hazards else [v for v in complete if not blocking_hazards(v)]
    return ResumeChoice(complete[-1] if complete else None, safe[-1] if safe else None)


def why_not_resumable(v: Verdict) -> str:
    """Why ``latest`` passed over ``v`` (a checkpoint newer than the one it chose)."""
    if v.status is not Status.COMPLETE:
        return v.status.value
    kinds = ", ".join(dict.fromkeys(h.kind for h in blocking_hazards(v)))
    return f"complete, but {kinds} would make the trainer load the wrong weights"


def skipped_newer(run: RunReport) -> list[tuple[Verdict, str]]:
    """The checkpoints newer than the one a resume should use, each with why it was passed over."""
    chosen = run.newest_resumable
    start = run.checkpoints.index(chosen) + 1 if chosen is not None else 0
    return [(v, why_not_resumable(v)) for v in run.checkpoints[start:]]


def run_report(root: str, layout: str, checkpoints: tuple[Verdict, ...], problems: tuple[Problem, ...] = (),
               hazards: tuple[Hazard, ...] = (), *, allow_hazards: bool = False) -> RunReport:
    """A report whose resume choice is computed from ``checkpoints`` by ``resume_choice``."""
    choice = resume_choice(checkpoints, allow_hazards=allow_hazards)
    return RunReport(root, layout, tuple(checkpoints), choice.newest_complete, problems, hazards,
                     newest_resumable=choice.newest_resumable)


def with_checkpoints(run: RunReport, verdicts: tuple[Verdict, ...]) -> RunReport:
    """``run`` with its verdicts replaced (the service's open-files rule) and its choice recomputed."""
    choice = resume_choice(verdicts)
    return replace(run, checkpoints=tuple(verdicts), newest_complete=choice.newest_complete,
                   newest_resumable=choice.newest_resumable)
