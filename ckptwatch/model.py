"""Domain types shared by every part of ckptwatch.

Findings are data, not exceptions: a validator that sees a truncated file returns a ``Problem``; it does
not raise. Everything here is frozen so a verdict can be cached, compared across scans and stored.

``Problem``, ``Hazard`` and ``Ranks`` are ``NamedTuple`` records and ``FileCheck`` a class written out,
``Verdict`` and ``RunReport`` frozen dataclasses: every command imports this module, a frozen dataclass
costs ~0.7 ms of CPU to create and a NamedTuple ~0.15 ms (``ckptwatch latest``'s start-up is measured:
bench/startup.py). All are immutable, compare by value and hash as the dataclasses did;
``dataclasses.replace`` is only ever applied to the two dataclasses.
"""

from __future__ import annotations

import enum
from dataclasses import FrozenInstanceError, dataclass
from typing import Any, NamedTuple


class Status(enum.StrEnum):
    """The verdict on one checkpoint (a stable part of the ``--json`` contract)."""

    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    CORRUPT = "corrupt"
    IN_PROGRESS = "in_progress"


class Severity(enum.StrEnum):
    """What a problem does to the verdict.

    ``corrupt`` and ``incomplete`` decide the status; ``transient`` means "being written, deleted or
    otherwise in flux": the checkpoint is ``in_progress`` until it settles; ``warning`` is reported but
    leaves a complete checkpoint complete.
    """

    CORRUPT = "corrupt"
    INCOMPLETE = "incomplete"
    TRANSIENT = "transient"
    WARNING = "warning"


class Problem(NamedTuple):
    """One thing wrong with one file (or a whole checkpoint, when ``file`` is its directory).

    ``kind`` is from the stable vocabulary in ``ckptwatch.vocabulary``, which gives it a severity and
    advice (``severity_of``, ``full_message``); ``message`` says what is wrong and where.
    """

    kind: str
    file: str
    message: str


class Hazard(NamedTuple):
    """A checkpoint that is structurally fine but would resume wrongly (e.g. a stub beside an adapter)."""

    kind: str
    file: str
    message: str


class FileCheck:
    """What a format reader found in one file: its problems and the facts later checks cross-check.

    ``facts`` is format specific (tensor table of a safetensors header, storage table and scalar
    metadata of a pickle, ...) and documented by the reader that fills it.

    Written out rather than a frozen dataclass (~0.7 ms of CPU to create at import) or a NamedTuple
    (whose default would be one dict shared by every instance): read-only, compared and hashed by path
    and problems (the facts are not compared), pickled with its attributes as the dataclass was.
    """

    path: str
    problems: tuple[Problem, ...]
    facts: dict[str, Any]

    def __init__(self, path: str, problems: tuple[Problem, ...] = (),
                 facts: dict[str, Any] | None = None) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "problems", problems)
        object.__setattr__(self, "facts", {} if facts is None else facts)

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.path, self.problems) == (other.path, other.problems)  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.path, self.problems))

    def __repr__(self) -> str:
        return f"FileCheck(path={self.path!r}, problems={self.problems!r}, facts={self.facts!r})"


class Ranks(NamedTuple):
    """Which ranks (processes, or shards per the layout's own unit) a checkpoint expects and has."""

    expected: int | None
    present: tuple[int, ...]
    # where ``expected`` came from: "metadata", "siblings", "config", or "files" (lower bound)
    source: str = ""

    @property
    def missing(self) -> tuple[int, ...]:
        if self.expected is None:
            return ()
        have = set(self.present)
        return tuple(r for r in range(self.expected) if r not in have)


@dataclass(frozen=True)
class Verdict:
    """The judgement on one checkpoint."""

    path: str
    step: int | None
    layout: str
    status: Status
    ranks: Ranks | None = None
    problems: tuple[Problem, ...] = ()
    hazards: tuple[Hazard, ...] = ()
    newest_mtime: float = 0.0
    bytes: int = 0  # apparent size of every file of the checkpoint

    @property
    def resumable(self) -> bool:
        return self.status is Status.COMPLETE


@dataclass(frozen=True)
class RunReport:
    """Every checkpoint of one training run, and which one a resume should use.

    ``newest_complete`` and ``newest_resumable`` are verdicts set by whoever builds the report from
    ``resume.resume_choice`` (the engine, or ``resume.with_checkpoints`` after a verdict changed):
    every consumer (``latest``, the resume pointer, alerts, metrics, state, status) reads them instead
    of deriving them again, so the rule retention's most important guard depends on lives in one place.
    """

    root: str
    layout: str
    checkpoints: tuple[Verdict, ...]
    newest_complete: Verdict | None
    problems: tuple[Problem, ...] = ()  # run-level findings (e.g. a pointer file that does not parse)
    hazards: tuple[Hazard, ...] = ()  # run-level hazards (a `latest` naming an incomplete step)
    loss: Any = None  # a losswatch.LossReport when the loss watch ran (model does not import losswatch)
    newest_resumable: Verdict | None = None

    @property
    def latest_resumable(self) -> str | None:
        """The path ``latest`` prints and the JSON's ``latest_resumable`` (a contract field)."""
        return self.newest_resumable.path if self.newest_resumable is not None else None

