"""Signals of a resume that no loss writer shows: pure functions and a streaming scan, no file access.

Two signals, both read from what the watcher already reads:

- **The run's configuration in ``trainer_state.json``.** transformers 5.23 writes ``max_steps``,
  ``num_train_epochs``, ``train_batch_size``, ``logging_steps``, ``eval_steps`` and ``save_steps`` (besides
  the counters, ``log_history``, the best-model fields and ``stateful_callbacks``). One process keeps
  them fixed. A resumed process loads the checkpoint's state and then sets ``max_steps`` and
  ``num_train_epochs`` from its own arguments (``TrainerState.init_training_references``;
  ``num_train_epochs`` follows from ``max_steps`` and the batches per epoch, so a changed batch size
  shows there); a process that started over without the state writes all of them anew. So a
  configuration that differs between two consecutive checkpoints means another process wrote the
  later one: a resume, whether or not its loss is fine.
- **The loss going back to the run's initial level** after it had descended, inside one continuous
  history: a process that resumed but loaded no trained weights, in a history where no writer shows
  the resume (``trainer_state.json`` alone; a new log that continues above every step seen). ``LevelScan``
  looks for it block by block (``window`` points per block), with the same rule as a resume
  (``rule.judge``: the ratio and noise tests, then ``scratch_fraction`` of the way back to the initial
  loss): only that "from scratch" signature is reported, not any jump, because a loss spike or an
  LR restart inside one healthy process jumps too, but does not undo the training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ckptwatch.losswatch.points import LazyPoints, LossPoint
from ckptwatch.losswatch.rule import Judgement, judge, median
from ckptwatch.losswatch.settings import LossSettings

# The run-configuration fields of a transformers 5.23 ``trainer_state.json``: fixed within one process.
RUN_CONFIG_KEYS = ("max_steps", "num_train_epochs", "train_batch_size", "logging_steps", "eval_steps",
                   "save_steps")


def run_config(state: Any) -> dict[str, Any] | None:
    """The run-configuration fields of a parsed ``trainer_state.json`` (None when it records none)."""
    if not isinstance(state, dict):
        return None
    view = {k: state[k] for k in RUN_CONFIG_KEYS if k in state}
    return view or None


def config_change(before: dict[str, Any] | None, before_name: str, after: dict[str, Any] | None,
                  after_name: str) -> str | None:
    """What changed between two checkpoints' run configurations, naming both values and both
    checkpoints ("max_steps 20 in checkpoint-10, 30 in checkpoint-15"); None when nothing comparable
    changed (a field only one of them records is not a change: another transformers version)."""
    if not before or not after:
        return None
    changed = [f"{k} {before[k]!r} in {before_name}, {after[k]!r} in {after_name}"
               for k in RUN_CONFIG_KEYS if k in before and k in after and before[k] != after[k]]
    return "; ".join(changed) or None


@dataclass(frozen=True)
class LevelHit:
    """The loss went back to the initial level: ``before`` (the block before) and ``after`` (the block
    that jumped), ``at_step`` the first point of the return."""

    at_step: int
    before: tuple[LossPoint, ...]
    after: tuple[LossPoint, ...]
    judgement: Judgement


class LevelScan:
    """Streaming "back to the initial loss" scan of one history: fed its points in order, in batches.

    Cost: a batch none of whose losses reaches the lowest level a return could have (``quiet``) costs
    a ``min`` and a ``max`` in C: that is every batch of a run that is learning. Otherwise one ``sorted``
    of ``window`` values per ``window`` points, and ``judge`` only for a block whose median is at least
    ``jump_ratio`` times the previous block's. The points of an unfinished block are carried to the next
    batch. Memory: two blocks.
    """

    __slots__ = ("carry_steps", "carry_values", "prev_median", "prev_steps", "prev_values")

    def __init__(self) -> None:
        self.carry_steps: list[int] = []  # the unfinished block
        self.carry_values: list[float] = []
        self.prev_steps: list[int] = []  # the last full block of finite losses
        self.prev_values: list[float] = []
        self.prev_median: float | None = None

    def copy(self) -> LevelScan:
        """The same state, for a history that continues in another writer (a rotated log)."""
        other = LevelScan()
        other.carry_steps, other.carry_values = list(self.carry_steps), list(self.carry_values)
        other.prev_steps, other.prev_values = list(self.prev_steps), list(self.prev_values)
        other.prev_median = self.prev_median
        return other

    def feed(self, pts: Sequence[LossPoint] | LazyPoints, initial: Sequence[float],
             settings: LossSettings) -> list[LevelHit]:
        """Hits among the new points ``pts`` (steps not going back); ``initial`` is the run's first
        losses (empty: not known yet, so nothing is judged "from scratch")."""
        k = settings.window
        if isinstance(pts, LazyPoints):
            steps, values = pts.steps, pts.values
        else:
            steps, values = [p.step for p in pts], [p.value for p in pts]
        if self.carry_steps:
            steps, values = self.carry_steps + list(steps), self.carry_values + list(values)
        hits: list[LevelHit] = []
        n, half, ratio = len(values), k // 2, settings.jump_ratio
        full = n - n % k
        if full and self._quiet(values, initial, settings):
            last = values[full - k:full]
            if math.isfinite(sum(last)):
                s = sorted(last)
                self.prev_steps, self.prev_values = steps[full - k:full], last
                self.prev_median = s[half] if k % 2 else (s[half - 1] + s[half]) / 2
            self.carry_steps, self.carry_values = list(steps[full:]), list(values[full:])
            return hits
        i = 0
        while i + k <= n:
            vals = values[i:i + k]
            if not math.isfinite(sum(vals)):  # a NaN/inf block says nothing about the level
                i += k
                continue
            s = sorted(vals)
            m = s[half] if k % 2 else (s[half - 1] + s[half]) / 2
            pm = self.prev_median
            if pm is not None and initial and (m >= ratio * pm if pm > 0 else m > pm):
                j = judge(self.prev_values, vals, initial, settings)
                if j.alert and j.scratch:
                    hits.append(_hit(self.prev_steps, self.prev_values, steps[i:i + k], vals, j))
            self.prev_steps, self.prev_values, self.prev_median = steps[i:i + k], vals, m
            i += k
        self.carry_steps, self.carry_values = list(steps[i:]), list(values[i:])
        return hits

    def _quiet(self, values: list[float], initial: Sequence[float], settings: LossSettings) -> bool:
        """No block of ``values`` can be a return to the initial loss: its median would have to reach
        ``f * initial + (1 - f) * before`` (``rule.judge``'s scratch test, ``f`` = ``scratch_fraction``),
        and ``before``, a median of losses, is at least the lowest of them. A NaN makes ``min``/``max``
        answer NaN or a true bound, never a wrong "quiet"."""
        init = [x for x in initial if math.isfinite(x)]
        if not init:
            return True  # nothing is judged "from scratch" before the initial loss is known
        lo = min(values)
        if self.prev_values:
            lo = min(lo, min(self.prev_values))
        f = settings.scratch_fraction
        level = f * median(init) + (1 - f) * lo
        return max(values) < level


def _hit(b_steps: list[int], b_values: list[float], a_steps: list[int], a_values: list[float],
         j: Judgement) -> LevelHit:
    """The hit, placed at the first point of the two blocks that is past the midpoint between the two
    medians and from which on the (up to) ``window`` points have a median past it too."""
    steps, values = b_steps + a_steps, b_values + a_values
    mid = ((j.before or 0.0) + (j.after or 0.0)) / 2
    k = len(a_values)
    at = next((i for i in range(len(values))
               if values[i] >= mid and sorted(values[i:i + k])[len(values[i:i + k]) // 2] >= mid),
              len(b_values))
    return LevelHit(steps[at], tuple(map(LossPoint, b_steps, b_values)),
                    tuple(map(LossPoint, a_steps, a_values)), j)
