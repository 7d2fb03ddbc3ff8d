"""The data the loss watch works on: loss points, writers, and a bounded history per writer segment.

A *writer* is one thing that appended loss points: one TensorBoard events file, one text log, one
``metrics.csv``, or the history a checkpoint's ``trainer_state.json`` adds. A writer whose step goes back
(an appended log that a resumed process continues) is split into *segments*; a segment is the unit the
resume detection compares. Memory is bounded per segment, whatever the length of the run: the first few
points (the run's initial loss), an exact ring of the newest points (the reference window before a resume
may lie some way back from the end: a process logs on after its last checkpoint until it dies), and a
decimated history for plots.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple


class LossPoint(NamedTuple):
    """One logged loss. ``wall_time`` is seconds since the epoch when the source records it, else None.

    A NamedTuple rather than a dataclass: the text reader makes millions of these per GB of log.
    """

    step: int
    value: float
    wall_time: float | None = None


@dataclass(frozen=True, slots=True)
class WriterId:
    """Where a segment's points came from: the source kind, the file, and which segment of that file.

    ``generation`` counts restarts of the file itself (truncated or replaced: a new writer at the same
    path); ``segment`` counts step sequences that went back within one generation.
    """

    kind: str  # trainer_state | tensorboard | csv | jsonl | text
    path: str
    generation: int = 0
    segment: int = 0

    def label(self) -> str:
        extra = []
        if self.generation:
            extra.append(f"generation {self.generation}")
        if self.segment:
            extra.append(f"segment {self.segment}")
        return self.path + (f" ({', '.join(extra)})" if extra else "")


EXACT_POINTS = 4096  # newest points kept exactly per segment (~200 KB)
PLOT_POINTS = 1000  # decimated history per segment for plots


class Decimated:
    """Keeps at most ``cap`` points spread over the whole sequence: when full, every other point is
    dropped and the keep-stride doubles. O(cap) memory, O(1) amortised per point."""

    __slots__ = ("_seen", "cap", "points", "stride")

    def __init__(self, cap: int = PLOT_POINTS) -> None:
        self.cap = max(2, cap)
        self.stride = 1
        self.points: list[LossPoint] = []
        self._seen = 0

    def extend(self, pts: list[LossPoint] | LazyPoints) -> None:
        """``add`` for each point, in C-speed slices."""
        off = (-self._seen) % self.stride
        self.points.extend(pts[off::self.stride])
        self._seen += len(pts)
        while len(self.points) > self.cap:
            # keep every other point; the kept ones stay on the (doubled) stride grid
            self.points = self.points[::2]
            self.stride *= 2

    def add(self, p: LossPoint) -> None:
        if self._seen % self.stride == 0:
            self.points.append(p)
            if len(self.points) > self.cap:
                self.points = self.points[::2]
                self.stride *= 2
        self._seen += 1


class Segment:
    """The bounded history of one writer segment (mutable: the watcher appends as the file grows)."""

    __slots__ = ("count", "first", "keep_first", "last", "max_step", "order_key", "plot", "recent", "ring",
                 "writer")

    def __init__(self, writer: WriterId, keep_first: int, exact: int = EXACT_POINTS,
                 plot_points: int = PLOT_POINTS, order_key: float = 0.0) -> None:
        self.writer = writer
        self.keep_first = keep_first
        self.first: list[LossPoint] = []
        # The newest ``ring`` points (up to an eighth more between trims). A list, not a bounded deque: a
        # deque's first block alone is 760 bytes, and the service keeps a segment per run (10,000 runs).
        self.ring = max(exact, keep_first)
        self.recent: list[LossPoint] = []
        self.plot = Decimated(plot_points)
        self.count = 0
        self.max_step = -1
        self.last: LossPoint | None = None
        self.order_key = order_key  # sort key among a family's segments (first wall time or mtime)

    def add(self, p: LossPoint) -> None:
        if self.count < self.keep_first:
            self.first.append(p)
        self.recent.append(p)
        self._trim()
        self.plot.add(p)
        self.count += 1
        self.max_step = max(self.max_step, p.step)
        self.last = p

    def extend(self, pts: list[LossPoint] | LazyPoints) -> None:
        """Append points whose steps do not go back (the caller splits segments where they do); only
        the points kept are materialised."""
        if not len(pts):
            return
        if self.count < self.keep_first:
            self.first.extend(pts[:self.keep_first - self.count])
        self.recent.extend(pts[-self.ring:])
        self._trim()
        self.plot.extend(pts)
        self.count += len(pts)
        self.max_step = max(self.max_step, pts[-1].step, pts[0].step)
        self.last = pts[-1]

    def _trim(self) -> None:
        over = len(self.recent) - self.ring
        if over > self.ring // 8:  # amortised: a trim every ring/8 appends
            del self.recent[:over]

    @property
    def first_point(self) -> LossPoint | None:
        return self.first[0] if self.first else None

    def before(self, step: int, k: int) -> tuple[LossPoint, ...]:
        """The last ``k`` points with a step below ``step`` (exact while they are in the ring)."""
        out: list[LossPoint] = []
        for p in reversed(self.recent):
            if p.step < step:
                out.append(p)
                if len(out) == k:
                    break
        if len(out) < k and self.count > len(self.recent):
            # older than the ring: fall back on the decimated history (approximate, but bounded)
            older = [p for p in self.plot.points if p.step < step and (not out or p.step < out[-1].step)]
            out.extend(reversed(older[-(k - len(out)):]))
        return tuple(reversed(out))

    def history(self) -> list[LossPoint]:
        """Points for a plot: the decimated history plus the exact tail, in order."""
        pts = list(self.plot.points)
        if self.last is not None and (not pts or pts[-1] != self.last):
            pts.append(self.last)
        return pts


class LazyPoints:
    """Loss points held as two lists (steps, values); ``LossPoint`` tuples are made on access.

    A GB of text log holds millions of loss lines, but a segment keeps only a few thousand of them (the
    first ``window``, an exact ring of the newest, a decimated history): making a tuple per line would
    cost more than finding the lines. Slicing stays lazy (list slices, in C).
    """

    __slots__ = ("steps", "values")

    def __init__(self, steps: list[int], values: list[float]) -> None:
        self.steps = steps
        self.values = values

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int | slice) -> LossPoint | LazyPoints:
        if isinstance(i, slice):
            return LazyPoints(self.steps[i], self.values[i])
        return LossPoint(self.steps[i], self.values[i])

    def __iter__(self) -> Iterator[LossPoint]:
        return map(LossPoint, self.steps, self.values)
