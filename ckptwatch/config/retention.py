"""``[watch.retention]``: which checkpoints the service (and ``ckptwatch prune``) may delete.

A checkpoint survives when any keep rule keeps it or an invariant protects it (DESIGN.md invariant 3;
``retention.guards``). Defaults and why:

- every keep rule is off unless set. ``keep_last`` N keeps the newest N complete checkpoints;
  ``keep_every_steps`` K keeps milestones (steps divisible by K); ``keep_best`` M keeps the M best by
  ``metric`` in ``mode`` ("min", the default: losses); ``keep_within`` keeps everything younger than a
  duration; ``keep_interval`` keeps one complete checkpoint per interval of age (Orbax's
  ``keep_time_interval``), the oldest in each bucket.
- a table must set at least one keep rule, ``delete_incomplete_after`` or ``min_free``: an empty
  ``[watch.retention]`` would otherwise mean "delete everything the invariants allow", which nobody asks
  for by writing an empty table.
- with no keep rule set, complete checkpoints are not deleted for age: ``min_free`` and
  ``delete_incomplete_after`` alone delete only under disk pressure and crashed saves.
- ``delete_incomplete_after``: off. Crashed saves are evidence; deleting them is opt-in.
- ``min_free``: off. A size (``"50G"``) or a percentage of the filesystem (``"10%"``).
- ``metric``: the Trainer's ``metric_for_best_model`` name (``eval_loss``) or a Lightning monitor; needed
  by ``keep_best``. ``"loss"`` reads the training loss the loss watch reads.
- ``dry_run = false``: the service plans, logs ``retention_planned`` and deletes. ``true`` plans and
  logs only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ckptwatch.config.kinds import Boolean, Duration, OneOf, Text, Whole, parse_size
from ckptwatch.config.reader import Location, setting

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True)
class FreeSpace:
    """``min_free``: bytes, or a percentage of the filesystem's size (exactly one is set)."""

    bytes: int | None = None
    percent: float | None = None

    def required(self, fs_size: int) -> int:
        """The free bytes this asks for on a filesystem of ``fs_size`` bytes."""
        if self.bytes is not None:
            return self.bytes
        return int(fs_size * (self.percent or 0.0) / 100.0)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else f"{self.bytes} bytes"


class FreeSpaceKind:
    """``"50G"``, a number of bytes, or ``"10%"`` of the filesystem -> ``FreeSpace``."""

    __slots__ = ()

    def read(self, value: Any, at: Location) -> FreeSpace:
        if isinstance(value, str) and _PERCENT.match(value):
            percent = float(_PERCENT.match(value).group(1))  # type: ignore[union-attr]
            if not 0 < percent < 100:
                raise at.error(f"must be a percentage above 0 and below 100, not {value!r}")
            return FreeSpace(percent=percent)
        try:
            return FreeSpace(bytes=parse_size(value))
        except ValueError as exc:
            raise at.error(f"{exc} (or a percentage such as \"10%\")") from None


@dataclass(frozen=True, kw_only=True)
class RetentionConfig:
    keep_last: int | None = setting(Whole(1), default=None)
    keep_every_steps: int | None = setting(Whole(1), default=None)
    keep_best: int | None = setting(Whole(1), default=None)
    metric: str | None = setting(Text("a metric name such as \"eval_loss\""), default=None)
    mode: str = setting(OneOf("min", "max"), default="min")
    keep_within: float | None = setting(Duration(above=True), default=None)  # seconds
    keep_interval: float | None = setting(Duration(above=True), default=None)  # seconds
    delete_incomplete_after: float | None = setting(Duration(), default=None)  # seconds
    min_free: FreeSpace | None = setting(FreeSpaceKind(), default=None)
    dry_run: bool = setting(Boolean(), default=False)

    @property
    def keep_rules(self) -> tuple[str, ...]:
        """The names of the keep rules that are set, in the order the policy applies them."""
        names = ("keep_last", "keep_every_steps", "keep_best", "keep_within", "keep_interval")
        return tuple(n for n in names if getattr(self, n) is not None)

    def checked(self, at: Location) -> RetentionConfig:
        if self.keep_best is not None and self.metric is None:
            raise at.key("metric").error("must be set when keep_best is (the metric the best are chosen by, "
                                         "e.g. \"eval_loss\")")
        if not self.keep_rules and self.delete_incomplete_after is None and self.min_free is None:
            raise at.error("sets no keep rule, delete_incomplete_after or min_free; an empty retention "
                           "table would delete everything the safety rules allow. Set e.g. keep_last = 3")
        return self
