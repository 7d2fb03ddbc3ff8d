"""Domain types shared by every part of ckptwatch.

Findings are data, not exceptions: a validator that sees a truncated file returns a ``Problem``; it does
not raise. Everything here is frozen so a verdict can be cached, compared across scans and stored.

``Problem``, ``Hazard`` and ``Ranks`` are ``Record``s and ``FileCheck`` is written out likewise;
``Verdict`` and ``RunReport`` are frozen dataclasses. Every command imports this module, and creating a
frozen dataclass costs ~0.7 ms of CPU (``ckptwatch latest``'s start-up is measured: bench/startup.py).
All are immutable, compare by value and hash as the dataclasses did; ``dataclasses.replace`` is only
ever applied to the two dataclasses.
"""

from __future__ import annotations

import enum
from dataclasses import FrozenInstanceError, dataclass
from typing import Any


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


set_field = object.__setattr__  # how a Record's __init__ fills its slots (read-only afterwards)


class Record:
    """Base of the small immutable value records (``Problem``, ``Hazard``, ``Ranks``, ``RankFile``, ...).

    What ``@dataclass(frozen=True)`` gave them, written once: the fields are the ``__slots__``, set by the
    subclass's ``__init__`` (``set_field``, in slot order); assigning or deleting one raises
    ``FrozenInstanceError``; equality and hash by value over the fields (same class only); the repr
    ``Name(field=...)``; pickled and copied through the constructor. Why not the decorator: creating a
    frozen dataclass costs ~0.7 ms of CPU (it execs each method), a NamedTuple ~0.15 ms (and is a tuple),
    a Record ~0.02 ms, and ``ckptwatch latest`` creates a dozen at import (bench/startup.py).
    """

    __slots__ = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self.__slots__])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self.__slots__)})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return type(self), self._values()


class Problem(Record):
    """One thing wrong with one file (or a whole checkpoint, when ``file`` is its directory).

    ``kind`` is from the stable vocabulary in ``ckptwatch.vocabulary``, which gives it a severity and
    advice (``severity_of``, ``full_message``); ``message`` says what is wrong and where.
    """

    __slots__ = ("kind", "file", "message")
    kind: str
    file: str
    message: str

    def __init__(self, kind: str, file: str, message: str) -> None:
        set_field(self, "kind", kind)
        set_field(self, "file", file)
        set_field(self, "message", message)


class Hazard(Record):
    """A checkpoint that is structurally fine but would resume wrongly (e.g. a stub beside an adapter)."""

    __slots__ = ("kind", "file", "message")
    kind: str
    file: str
    message: str

    def __init__(self, kind: str, file: str, message: str) -> None:
        set_field(self, "kind", kind)
        set_field(self, "file", file)
        set_field(self, "message", message)


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


class Ranks(Record):
    """Which ranks (processes, or shards per the layout's own unit) a checkpoint expects and has."""

    __slots__ = ("expected", "present", "source")
    expected: int | None
    present: tuple[int, ...]
    source: str  # where ``expected`` came from: "metadata", "siblings", "config", or "files" (lower bound)

    def __init__(self, expected: int | None, present: tuple[int, ...], source: str = "") -> None:
        set_field(self, "expected", expected)
        set_field(self, "present", present)
        set_field(self, "source", source)

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

