"""Per-file time and memory limits of the format readers (DESIGN.md invariant 8).

Why: a hostile or broken file must become a finding, never a hang or an exhausted machine, and the
bounds must hold for every reader the same way. Each file a reader opens gets a ``Budget``: a deadline
(``seconds`` of CPU time of the reading thread from the moment the file is opened) and a memory
allowance (``memory`` bytes). CPU time, not wall-clock time: the readers are CPU-bound, and on a training
node whose cores the data loaders saturate, a wall-clock limit would cut legitimate files (walking the
7.9 MB ``.metadata`` of a 40,000-tensor DCP checkpoint took 2.5 s of CPU and up to 5.5 s of wall-clock
time at a load of 4 on 2 cores). On an idle machine the two are the same. Readers enforce it in two ways:

- before they materialise something whose size the file declares (a header, a central directory, a
  JSON document and the objects parsing it builds), they ``reserve`` its estimated cost, so the
  allocation never happens when it would not fit;
- their loops call ``tick()``, which stops the read once the deadline has passed or the process's
  resident memory grew by more than the allowance (``/proc/self/statm``, looked at every 20 ms of CPU
  time from the file's first 20 ms on: a measurement, so it also catches costs no estimate foresaw).

Either raises ``LimitExceeded``, a ``FormatError`` of kind ``exceeds_limits``: the file is named and
not verified (the vocabulary says what to do). The limits are ``[service] max_seconds_per_file`` and
``max_memory_per_file``; the engine puts the configured ones in force for the checkpoints it judges
(``limits_in_force``), and a reader called with none in force uses the ``[service]`` defaults, so no
read is ever unbounded. Nested reads (a DCP directory check opening a shard) start their own budget
and give the outer one back when they end.
"""

from __future__ import annotations

import contextvars
import functools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ckptwatch.formats._io import FormatError
from ckptwatch.model import Record, set_field

if TYPE_CHECKING:
    from ckptwatch.config.service import ServiceConfig

KIND = "exceeds_limits"
_RSS_EVERY = 0.02  # CPU seconds between two looks at the resident set size
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class ReadLimits(Record):
    """What one file may cost a reader: CPU seconds of the reading thread and bytes of memory."""

    __slots__ = ("seconds", "memory")
    seconds: float
    memory: int

    def __init__(self, seconds: float, memory: int) -> None:
        set_field(self, "seconds", seconds)
        set_field(self, "memory", memory)


@functools.cache
def default_limits() -> ReadLimits:
    """The ``[service]`` defaults, read without building the section (config/defaults.py)."""
    from ckptwatch.config import defaults

    return ReadLimits(defaults.MAX_SECONDS_PER_FILE, defaults.MAX_MEMORY_PER_FILE)


def limits_of(service: ServiceConfig) -> ReadLimits:
    """The limits a ``[service]`` section sets."""
    return ReadLimits(service.max_seconds_per_file, service.max_memory_per_file)


class LimitExceeded(FormatError):
    """A read stopped at its file's limit; the file is not verified (kind ``exceeds_limits``)."""

    def __init__(self, message: str) -> None:
        super().__init__(KIND, message)


_clock = time.thread_time  # CPU seconds of the calling thread


def _rss() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n} bytes"


class Budget:
    """One file's allowance: a deadline and a memory cap, checked by ``tick`` and ``reserve``."""

    __slots__ = ("deadline", "limits", "next_rss", "rss0", "shown", "started")

    def __init__(self, shown: str, limits: ReadLimits) -> None:
        self.shown, self.limits = shown, limits
        self.started = _clock()
        self.deadline = self.started + limits.seconds
        # The baseline is taken at the first look, after 20 ms of CPU, not here: reading /proc costs
        # ~20 us, more than the whole check of most files. What a file allocates in its first 20 ms
        # (tens of MB at most) is left to ``reserve``.
        self.rss0: int | None = None
        self.next_rss = self.started + _RSS_EVERY

    def tick(self, where: str = "") -> None:
        now = _clock()
        if now > self.deadline:
            at = f" ({where})" if where else ""
            raise LimitExceeded(f"{self.shown}: reading stopped after {now - self.started:.1f} s of CPU{at}, "
                                f"past the limit of {self.limits.seconds:g} s per file "
                                "(service.max_seconds_per_file)")
        if now >= self.next_rss:
            self.next_rss = now + _RSS_EVERY
            rss = _rss()
            if self.rss0 is None:
                self.rss0 = rss
            elif rss is not None and rss - self.rss0 > self.limits.memory:
                at = f" ({where})" if where else ""
                raise LimitExceeded(f"{self.shown}: reading it grew memory by {_mib(rss - self.rss0)}{at}, "
                                    f"more than the limit of {_mib(self.limits.memory)} per file "
                                    "(service.max_memory_per_file)")

    def reserve(self, nbytes: int, what: str) -> None:
        if nbytes > self.limits.memory:
            raise LimitExceeded(f"{self.shown}: {what} would take about {_mib(nbytes)} of memory, more than "
                                f"the limit of {_mib(self.limits.memory)} per file "
                                "(service.max_memory_per_file)")

    def reserve_seconds(self, seconds: float, what: str) -> None:
        """For work that cannot be interrupted (a C parser, ``zipfile``'s directory): refuse it up front."""
        left = self.deadline - _clock()
        if seconds > left:
            raise LimitExceeded(f"{self.shown}: {what} would take about {seconds:.0f} s, more than the "
                                f"{max(left, 0.0):.1f} s left of the limit of {self.limits.seconds:g} s "
                                "per file (service.max_seconds_per_file)")


_IN_FORCE: contextvars.ContextVar[ReadLimits | None] = contextvars.ContextVar("ckptwatch_limits",
                                                                             default=None)
_CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("ckptwatch_budget", default=None)


@contextmanager
def limits_in_force(limits: ReadLimits | None) -> Iterator[None]:
    """Every file read inside the block gets ``limits`` (None: the ``[service]`` defaults)."""
    token = _IN_FORCE.set(limits)
    try:
        yield
    finally:
        _IN_FORCE.reset(token)


class file_budget:  # lower case: used like the function it replaces, ``with file_budget(shown)``
    """Start the budget of one file, current until the block ends (a class: a generator-based context
    manager costs ~3 us more, and every file of every checkpoint opens one)."""

    __slots__ = ("budget", "outer", "token")

    def __init__(self, shown: str) -> None:
        self.outer = _CURRENT.get()
        self.budget = Budget(shown, _IN_FORCE.get() or default_limits())

    def __enter__(self) -> Budget:
        self.token = _CURRENT.set(self.budget)
        return self.budget

    def __exit__(self, *exc: object) -> None:
        _CURRENT.reset(self.token)
        if self.outer is not None:  # the inner file's time is its own, not the outer file's
            self.outer.deadline += _clock() - self.budget.started


@contextmanager
def unmetered() -> Iterator[None]:
    """Time spent inside does not count against the current file's deadline.

    For the streaming reads of ``--deep`` (every byte once, in a fixed buffer): their cost is the
    file's size at disk speed, chosen by the operator, and a 50 GB shard must not be cut at 5 s.
    """
    budget = _CURRENT.get()
    start = _clock()
    try:
        yield
    finally:
        if budget is not None:
            budget.deadline += _clock() - start


def tick(where: str = "") -> None:
    """Stop the current file's read if it is past its deadline or memory allowance (no-op outside one)."""
    budget = _CURRENT.get()
    if budget is not None:
        budget.tick(where)


def reserve(nbytes: int, what: str) -> None:
    """Refuse, before allocating, something estimated at ``nbytes`` the current file cannot afford."""
    budget = _CURRENT.get()
    if budget is not None:
        budget.reserve(nbytes, what)


def reserve_seconds(seconds: float, what: str) -> None:
    """Refuse uninterruptible work estimated at ``seconds`` that the current file's deadline cannot cover."""
    budget = _CURRENT.get()
    if budget is not None:
        budget.reserve_seconds(seconds, what)


_JSON_MAX_FACTOR = 9 + 100  # json_cost never exceeds this many bytes per byte of text


def reserve_json(text: bytes | str, what: str, shown: str = "") -> None:
    """Refuse to parse JSON whose objects would not fit the file's memory allowance (``json_cost``).

    Outside a file's budget, ``shown`` names the file. Text under 1/109 of the allowance (under 9.8 MB
    at 1 GiB) always fits and is not even counted.
    """
    budget = _CURRENT.get()
    limits = budget.limits if budget is not None else (_IN_FORCE.get() or default_limits())
    if len(text) * _JSON_MAX_FACTOR <= limits.memory:
        return
    (budget or Budget(shown, limits)).reserve(json_cost(text), what)


def json_cost(text: bytes | str) -> int:
    """An upper estimate of the bytes ``json.loads`` holds at its peak for ``text``.

    The input, the decoded ``str`` and the strings parsed out of it (1 byte a character for ASCII, up
    to 4 otherwise), plus the objects: an empty ``{}`` of 2 characters becomes a 64-byte dict and an
    8-byte slot in its container (~30x its text), so the count of items (one per ``,``, ``:``, ``[``
    and ``{``) times 100 bytes bounds what any document builds. Real safetensors headers and
    trainer_state.json files estimate at 1-3x their measured cost.
    """
    sep = (",", ":", "[", "{") if isinstance(text, str) else (b",", b":", b"[", b"{")
    items = sum(text.count(s) for s in sep)  # type: ignore[arg-type]
    width = 1 if text.isascii() else 4
    return len(text) * (1 + 2 * width) + items * 100
