"""Conditions that are not a checkpoint's verdict: a run that stopped saving, a disk filling up.

The rules are pure (times, sizes and thresholds in, a finding or ``None`` out) so they are tested as
tables; the only I/O is ``disk_usage``, a three-line adapter over psutil.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ckptwatch.alerts.config import STALLED_MIN_SECONDS
from ckptwatch.alerts.messages import human_bytes

RECENT = 10  # checkpoint intervals the inferred stalled threshold looks at
STALLED_FACTOR = 3.0
DISK_CLEAR_MARGIN = 1.1  # a low disk clears only 10% above its threshold: no flapping at the line


@dataclass(frozen=True)
class Stalled:
    """A run whose newest checkpoint is older than the threshold."""

    last_at: float
    silent_for: float
    threshold: float
    threshold_source: str  # "alerts.stalled_after" or "3x median interval of the last N checkpoints"
    writing: bool  # the run's files are still being written (hung save) vs. nothing written (dead)


def stalled_threshold(checkpoint_times: Sequence[float],
                      configured: float | None) -> tuple[float, str] | None:
    """The silence after which a run counts as stalled, and where that number came from.

    Inferred (no ``alerts.stalled_after``): three times the median interval between the last ``RECENT``
    checkpoints, never below 10 minutes. Why the median: one long eval pause or one restart does not
    move it. Why 3x: saves jitter with eval and I/O load; one missed save is noise, two are not. Fewer
    than two checkpoints give no interval: ``None``, the run is not judged.
    """
    if configured is not None:
        return configured, "alerts.stalled_after"
    times = sorted(checkpoint_times)[-(RECENT + 1):]
    intervals = [b - a for a, b in itertools.pairwise(times) if b > a]
    if not intervals:
        return None
    inferred = STALLED_FACTOR * statistics.median(intervals)
    source = f"3x median interval of the last {len(intervals) + 1} checkpoints"
    if inferred < STALLED_MIN_SECONDS:
        return STALLED_MIN_SECONDS, source + ", raised to the 10 min floor"
    return inferred, source


def stalled(checkpoint_times: Sequence[float], now: float, configured: float | None, *,
            writing: bool) -> Stalled | None:
    """Is this run stalled at ``now``? ``checkpoint_times``: when each complete checkpoint was written.

    ``writing`` is passed through to the finding: the caller knows (from the settle tracker) whether
    files of the run are still changing, which tells a hung save from a dead trainer.
    """
    if not checkpoint_times:
        return None
    threshold = stalled_threshold(checkpoint_times, configured)
    if threshold is None:
        return None
    last = max(checkpoint_times)
    silent = now - last
    if silent <= threshold[0]:
        return None
    return Stalled(last, silent, threshold[0], threshold[1], writing)


@dataclass(frozen=True)
class DiskUsage:
    path: str
    total: int
    free: int

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free / self.total if self.total else 0.0


@dataclass(frozen=True)
class DiskLow:
    usage: DiskUsage
    reasons: tuple[str, ...]  # which thresholds it is below, in words


def disk_usage(path: str) -> DiskUsage:
    """Free and total bytes of the filesystem holding ``path`` (the only I/O here). Raises OSError."""
    import psutil

    u = psutil.disk_usage(path)
    return DiskUsage(path, int(u.total), int(u.free))


def disk_low(usage: DiskUsage, *, percent: float, free_bytes: int | None, next_save_bytes: int | None = None,
             was_low: bool = False) -> DiskLow | None:
    """Is this filesystem low on space? Below any threshold is low.

    Thresholds: ``percent`` free (0 = off), ``free_bytes`` absolute (None = off) and, when the caller
    knows the size of the run's newest checkpoint, ``next_save_bytes``: less free space than the next
    save needs is low whatever the percentages say. ``was_low`` (an alert is open) adds hysteresis: it
    clears only ``DISK_CLEAR_MARGIN`` above each threshold, so a disk hovering at the line alerts once.
    """
    margin = DISK_CLEAR_MARGIN if was_low else 1.0
    reasons = []
    if percent > 0 and usage.free_percent < percent * margin:
        reasons.append(f"alerts.disk_low_percent = {percent:g}% free")
    if free_bytes is not None and usage.free < free_bytes * margin:
        reasons.append(f"alerts.disk_low_free = {human_bytes(free_bytes)}")
    if next_save_bytes and usage.free < next_save_bytes * margin:
        reasons.append(f"the size of the next save ({human_bytes(next_save_bytes)}, as big as the newest "
                       "checkpoint)")
    return DiskLow(usage, tuple(reasons)) if reasons else None
