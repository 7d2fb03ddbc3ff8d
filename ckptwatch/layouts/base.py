"""What every layout module provides, and the small helpers they share.

A layout owns "where" and "when complete" for one framework (STYLE.md convention 4): it recognises a
run directory, lists its checkpoint candidates, and judges one candidate into problems plus the rank
facts. It never decides the final status: the engine applies the generic rules (settle, expected ranks
from siblings, stale temp markers) the same way for every layout.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from ckptwatch.formats._io import problem_from_oserror
from ckptwatch.formats.limits import ReadLimits
from ckptwatch.model import Hazard, Problem, Record, Verdict, set_field
from ckptwatch.scan import Entry, display


@dataclass(frozen=True)
class CheckOptions:
    """How deep to look. Time is not here: the engine passes ``now`` explicitly."""

    deep: bool = False
    scan_values: bool = False
    settle_seconds: float = 60.0
    stale_after: float = 1800.0
    expected_ranks: int | None = None
    # The service looks twice: file sizes, mtimes and inodes are listed again after the files were read,
    # and a checkpoint whose files changed in between is in_progress (a writer that keeps old mtimes,
    # e.g. rsync -t or cp -p, defeats the settle rule alone).
    second_look: bool = False
    # `latest --allow-hazards`: a complete checkpoint whose hazards block a resume may still be named.
    allow_hazards: bool = False
    # What reading one file may cost (``[service] max_seconds_per_file``, ``max_memory_per_file``); None:
    # the ``[service]`` defaults. The engine puts them in force around each judgement (formats/limits.py).
    limits: ReadLimits | None = None


# Candidate, Judgement and RunFound are plain classes, not dataclasses: mutable working records that
# nothing compares, copies or replaces, built by every layout on `latest`'s start-up path, where each
# dataclass cost ~0.5 ms of CPU to create at import (bench/startup.py).


class Candidate:
    """A checkpoint found on disk, not yet judged. Slotted: a whole-root pass over 1,000,000 files holds
    100,000 of them at once (a dict each was ~10 MiB of the service's high-water mark)."""

    __slots__ = ("data", "layout", "members", "order", "path", "step")

    def __init__(self, path: str, step: int | None, layout: str, order: tuple[Any, ...] = (),
                 data: dict[str, Any] | None = None, members: tuple[str, ...] = ()) -> None:
        self.path = path
        self.step = step
        self.layout = layout
        self.order = order  # sort key within the run; defaults to (step,)
        self.data: dict[str, Any] = {} if data is None else data
        self.members = members  # the files, when a checkpoint is not one path (one file per rank dir)

    def sort_key(self) -> tuple[Any, ...]:
        return self.order or (self.step if self.step is not None else -1,)


class RankFile(Record):
    """The file a rank writes, for messages naming a missing rank: ``template.format(r=, tp=, pp=)``.

    A value, not a closure, so judgements can cross a process boundary. With ``tp_width`` the rank
    number is a cell of a tensor x pipeline grid (Megatron): ``tp = r % tp_width``, ``pp = r // tp_width``.
    """

    __slots__ = ("template", "tp_width")
    template: str
    tp_width: int

    def __init__(self, template: str, tp_width: int = 0) -> None:
        set_field(self, "template", template)
        set_field(self, "tp_width", tp_width)

    def __call__(self, r: int) -> str:
        if self.tp_width:
            return self.template.format(r=r, tp=r % self.tp_width, pp=r // self.tp_width)
        return self.template.format(r=r)


class Judgement:
    """A layout's findings on one candidate."""

    def __init__(self, problems: list[Problem] | None = None, present_ranks: tuple[int, ...] | None = None,
                 expected_ranks: int | None = None, step: int | None = None,
                 rank_file: RankFile | None = None, facts: dict[str, Any] | None = None) -> None:
        self.problems: list[Problem] = [] if problems is None else problems
        self.present_ranks = present_ranks  # None: this layout has no notion of ranks here
        self.expected_ranks = expected_ranks  # from the checkpoint's own metadata, when it records it
        self.step = step  # learned from content (e.g. Lightning's pickled global_step)
        self.rank_file = rank_file  # names the file a missing rank should have written
        self.facts: dict[str, Any] = {} if facts is None else facts  # for hazards (adapters, weights files)


class RunFound:
    """A training run: one directory whose checkpoints share a layout."""

    def __init__(self, root: str, layout: Layout, candidates: list[Candidate],
                 consumed: set[str] | None = None, problems: list[Problem] | None = None,
                 data: dict[str, Any] | None = None) -> None:
        self.root = root
        self.layout = layout
        self.candidates = candidates
        self.consumed: set[str] = set() if consumed is None else consumed  # not to descend into
        self.problems: list[Problem] = [] if problems is None else problems
        self.data: dict[str, Any] = {} if data is None else data  # layout specific (pointer links, caches)


class Layout(Protocol):
    name: str

    def find(self, directory: str, entries: list[Entry]) -> RunFound | None:
        """If ``directory`` is a run root of this layout, the run and its candidates."""

    def judge(self, cand: Candidate, opts: CheckOptions) -> Judgement:
        """Findings on one candidate (files, metadata cross-checks, ranks)."""

    def run_findings(self, run: RunFound, verdicts: list[Verdict],
                     latest_resumable: Verdict | None) -> tuple[list[Problem], list[Hazard]]:
        """Run-level findings, e.g. a framework pointer that names an incomplete checkpoint."""


class NoRunFindings:
    """Mixin for layouts without pointer files."""

    def run_findings(self, run: RunFound, verdicts: list[Verdict],
                     latest_resumable: Verdict | None) -> tuple[list[Problem], list[Hazard]]:
        return [], []


MAX_RANKS = 1 << 20  # more processes than any job runs: a pickled count above it is not believed
MAX_STEP = (1 << 63) - 1


def pickled_count(value: Any) -> int | None:
    """A world size or parallel width read from a pickle, or None when it is not a plausible one.

    Pickled values are attacker-controlled: a count of 10**5000 would make the rank rules enumerate
    that many ranks, and a message that formats it raises (Python refuses str() past 4,300 digits).
    """
    return value if type(value) is int and 1 <= value <= MAX_RANKS else None


def pickled_step(value: Any) -> int | None:
    """A training step read from a pickle, or None when it is not a plausible one (see ``pickled_count``)."""
    return value if type(value) is int and 0 <= value <= MAX_STEP else None


# Discovery asks every layout about every directory, and several layouts list each sub-directory to
# recognise it (DeepSpeed tags, DCP, NeMo, MindSpore): within one discovery walk (``listing_memo``) a
# directory is listed once, not once per layout. Judging never runs under it: it always lists afresh.
_Listing = tuple[list[str], Problem | None]
_MEMO: ContextVar[dict[str, _Listing] | None] = ContextVar("listing_memo", default=None)


@contextmanager
def listing_memo() -> Iterator[None]:
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def listdir_names(path: str) -> tuple[list[str], Problem | None]:
    memo = _MEMO.get()
    if memo is not None:
        hit = memo.get(path)
        if hit is None:
            hit = memo[path] = _listdir_names(path)
        return list(hit[0]), hit[1]
    return _listdir_names(path)


def _listdir_names(path: str) -> _Listing:
    try:
        return sorted(os.listdir(path)), None
    except OSError as exc:
        return [], problem_from_oserror(display(path), exc)


def missing(path: str, what: str) -> Problem:
    return Problem("missing_file", display(path), f"{display(path)} is missing ({what})")


def pointer_hazard(pointer_path: str, named: str, target: Verdict | None,
                   latest_resumable: Verdict | None) -> Hazard | None:
    """The hazard of a framework pointer (DeepSpeed ``latest``, Megatron tracker) naming a bad checkpoint."""
    use = (f"resume from {display(latest_resumable.path)} instead" if latest_resumable
           else "no complete checkpoint exists in this run")
    if target is None:
        return Hazard("latest_points_to_missing", display(pointer_path),
                      f"{display(pointer_path)} names {named!r}, which does not exist; {use}")
    if target.status.value in ("incomplete", "corrupt"):
        return Hazard("latest_points_to_incomplete", display(pointer_path),
                      f"{display(pointer_path)} names {display(target.path)}, which is "
                      f"{target.status.value}; a resume through this pointer will fail or load garbage; "
                      f"{use}")
    return None
