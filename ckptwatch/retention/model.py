"""What retention sees of a checkpoint (``Candidate``) and what it decides (``Decision``, ``Plan``). Pure.

A ``Candidate`` is built by ``facts`` from a run report and the disk; ``policy.plan_run`` turns a run's
candidates into a ``Plan``; ``guards`` says which candidates no plan may delete. The types live in a
module of their own, below both, because ``guards`` checks plans and ``policy`` consults the guards: each
importing the other would be a cycle. ``policy`` re-exports them under their old names.
Nothing here touches the disk, so every plan can be shown before it is carried out (``prune --dry-run``,
``once --json``) and property-tested against the invariants of ``guards``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ckptwatch.model import Status


@dataclass(frozen=True)
class Candidate:
    """One checkpoint as retention sees it."""

    path: str
    step: int | None
    status: Status
    mtime: float  # newest file's mtime (Verdict.newest_mtime): the checkpoint's age
    bytes: int
    metric: float | None = None  # the configured metric's value at this checkpoint, when the run records it
    pinned: str | None = None  # the text of its .ckptwatch-keep file ("" for an empty one); None: no pin
    pointed_by: tuple[str, ...] = ()  # framework pointers naming it ("DeepSpeed latest", "ckptwatch-latest")
    best: bool = False  # the framework's recorded best (best_model_checkpoint, best_model_path)
    unsafe_path: bool = False  # reached through a symlink, or its real path is outside the watched root
    mirrored: bool | None = None  # None: no mirror configured; False: no committed, verified copy yet
    # A blocking hazard (vocabulary.blocks_resume): complete, but a resume from it would load the wrong
    # weights, so ``latest`` passes over it and the newest complete one WITHOUT such a hazard is what a
    # resume uses (resume.resume_choice). guards protects that one too.
    blocks_resume: bool = False


@dataclass(frozen=True)
class DiskSpace:
    """The filesystem holding the run: its size and its free bytes now."""

    total: int
    free: int


@dataclass(frozen=True)
class Decision:
    """Keep or delete one checkpoint, and why (each reason a short phrase a user reads at 3 a.m.)."""

    path: str
    step: int | None
    keep: bool
    reasons: tuple[str, ...]
    bytes: int
    protected: bool = False  # an invariant keeps it: no rule and no disk pressure may delete it


@dataclass(frozen=True)
class Plan:
    """Every checkpoint's decision, in the run's order, and what disk pressure could not free."""

    decisions: tuple[Decision, ...]
    shortfall: int = 0  # bytes still missing for min_free after every deletion the invariants allow

    @property
    def deletions(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if not d.keep)

    @property
    def bytes_freed(self) -> int:
        return sum(d.bytes for d in self.deletions)
