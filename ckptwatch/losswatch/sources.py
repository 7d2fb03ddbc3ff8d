"""Finding a run's loss sources and reading each one incrementally.

Auto-detection (``sources = ["auto"]``) walks the run dir (at most ``MAX_DEPTH`` levels, not into
checkpoint dirs, hidden dirs or ``__pycache__``) for

- ``events.out.tfevents.*`` (TensorBoard; each file is one writer: one process),
- ``metrics.csv`` (Lightning's ``CSVLogger``; one per ``version_N`` dir, i.e. per process),
- ``*.jsonl`` / ``*.ndjson``,
- ``*.log`` / ``*.txt`` / ``*.out`` (text; a file with no matching line simply yields nothing),

and takes ``trainer_state.json`` from each checkpoint dir (``checkpoint-<N>/``, or the dirs the caller
lists). Every reader yields ``Batch``es of new points since its last call and never holds more than one
chunk of a file in memory; TensorBoard files are read with tensorboard's own ``EventFileLoader``
(imported lazily; it tails a growing file itself).
"""

from __future__ import annotations

import csv
import glob
import io
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ckptwatch.formats.jsonfile import read_json
from ckptwatch.losswatch.parse import (
    parse_jsonl_lines,
    parse_log_history,
    parse_text_chunk_lazy,
    patterns_for,
    point_from_record,
)
from ckptwatch.losswatch.points import LossPoint
from ckptwatch.losswatch.settings import KINDS, LossSettings
from ckptwatch.losswatch.tail import Tailer

MAX_DEPTH = 4
_CKPT_DIR = re.compile(r"^(checkpoint|global_step|iter|step)[-_=]?\d+\Z|^checkpoints?\Z")
_SKIP_DIRS = {"__pycache__", "node_modules", ".git"}
TEXT_SUFFIXES = (".log", ".txt", ".out")


@dataclass(frozen=True)
class SourceFile:
    kind: str
    path: str


@dataclass(frozen=True)
class Batch:
    """New points of one writer. ``new_writer``: the first batch of a new file or of a new generation of
    it (truncated, replaced); ``order_key`` orders writers that appear in the same poll."""

    kind: str
    path: str
    generation: int
    points: Sequence[LossPoint]  # a tuple, or LazyPoints from the text reader
    new_writer: bool
    order_key: float


def kind_of(path: str) -> str:
    name = os.path.basename(path)
    if name.startswith("events.out.tfevents."):
        return "tensorboard"
    if name == "trainer_state.json":
        return "trainer_state"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "text"


def discover(run_root: str, settings: LossSettings) -> list[SourceFile]:
    """Every loss source file of the run (trainer_state.json excepted: see ``checkpoint_states``)."""
    wanted_kinds: set[str] = set()
    found: dict[str, SourceFile] = {}
    for src in settings.sources:
        if src == "auto":
            wanted_kinds.update(KINDS)
        elif src in KINDS:
            wanted_kinds.add(src)
        else:
            pattern = src if os.path.isabs(src) else os.path.join(run_root, src)
            for p in sorted(glob.glob(pattern, recursive=True)):
                if os.path.isfile(p):
                    found[p] = SourceFile(kind_of(p), p)
    if wanted_kinds - {"trainer_state"}:
        for p in _walk(run_root):
            k = _auto_kind(p)
            if k and k in wanted_kinds:
                found.setdefault(p, SourceFile(k, p))
    return sorted(found.values(), key=lambda s: s.path)


def wants_trainer_state(settings: LossSettings) -> bool:
    return any(s in ("auto", "trainer_state") for s in settings.sources)


def checkpoint_states(run_root: str,
                      checkpoints: Sequence[tuple[int | None, str]]
                      ) -> list[tuple[int, str, os.stat_result, str]]:
    """``(step, trainer_state.json path, its stat, the checkpoint dir)`` of each checkpoint that has one as
    a regular file, oldest step first (the dir is the caller's string: a key it may keep at no cost).
    Uses the caller's checkpoint list when given, else the ``checkpoint-<N>`` dirs directly under the run
    dir. The stat is returned because the caller compares it with the last read: one stat per checkpoint
    per pass, not two (10,000 runs' checkpoints at every whole-root pass)."""
    out: dict[str, tuple[int, os.stat_result, str]] = {}
    dirs = [(s, p) for s, p in checkpoints] or [(None, e.path) for e in _scandir(run_root) if e.is_dir()]
    for step, d in dirs:
        if step is None:
            m = re.search(r"(\d+)\Z", os.path.basename(d.rstrip("/")))
            if m is None or not os.path.basename(d).startswith("checkpoint"):
                continue
            step = int(m.group(1))
        path = os.path.join(d, "trainer_state.json")
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(st.st_mode):  # what os.path.isfile asked (a link is followed, as it did)
            out[path] = (step, st, d)
    return sorted(((s, p, st, d) for p, (s, st, d) in out.items()), key=lambda t: (t[0], t[1]))


def _scandir(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return []


def _walk(root: str, depth: int = 0) -> Iterator[str]:
    for e in sorted(_scandir(root), key=lambda e: e.name):
        if e.name.startswith("."):
            continue
        try:
            if e.is_dir(follow_symlinks=False):
                if depth < MAX_DEPTH and e.name not in _SKIP_DIRS and not _CKPT_DIR.match(e.name):
                    yield from _walk(e.path, depth + 1)
            elif e.is_file(follow_symlinks=False):
                yield e.path
        except OSError:
            continue


def _auto_kind(path: str) -> str | None:
    name = os.path.basename(path)
    if name.startswith("events.out.tfevents."):
        return "tensorboard"
    if name == "metrics.csv":
        return "csv"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    return None


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


class LineReader:
    """Text, JSON-lines and CSV files through a shared ``Tailer``."""

    def __init__(self, src: SourceFile, tailer: Tailer, settings: LossSettings) -> None:
        self.src = src
        self.tailer = tailer
        self.metrics = settings.metric
        self.patterns = patterns_for(settings.regex)
        self.ordinal = 0
        self.header: list[str] | None = None
        self.csv_rows = 0  # loss rows read from the file's current content
        self.skip_rows = 0  # rows of an in-place rewrite that re-emit what was already read
        self.announced = -1  # the generation whose first batch was sent

    def read(self) -> Iterator[Batch]:
        path = self.src.path
        for chunk in self.tailer.read(path):
            rewrite = False
            if chunk.reset:
                self.ordinal = 0
                rewrite = self.src.kind == "csv" and chunk.generation > 0
                self.header = None
            if self.src.kind == "text":
                pts, self.ordinal = parse_text_chunk_lazy(chunk.data, self.patterns, self.ordinal)
            elif self.src.kind == "jsonl":
                pts, self.ordinal = parse_jsonl_lines(chunk.data.splitlines(), self.metrics, self.ordinal)
            else:
                pts = self._csv(chunk.data, rewrite)
            if not pts:
                continue
            # Lightning rewrites metrics.csv in place when a column appears: the same writer, not a new one
            gen = 0 if self.src.kind == "csv" else chunk.generation
            new = self.announced != gen
            self.announced = gen
            first = pts[0]
            yield Batch(self.src.kind, path, gen, pts if self.src.kind == "text" else tuple(pts), new,
                        first.wall_time if first.wall_time is not None else _mtime(path))

    def _csv(self, data: bytes, rewrite: bool) -> list[LossPoint]:
        if rewrite:  # an in-place rewrite re-emits the rows we already have: skip that many rows (not
            # "up to our last step": a resumed process's rows start below it and must be read)
            self.skip_rows, self.csv_rows = self.csv_rows, 0
        rows = csv.reader(io.StringIO(data.decode("utf-8", "replace")))
        out: list[LossPoint] = []
        for row in rows:
            if self.header is None:
                self.header = row
                continue
            if len(row) != len(self.header):
                continue
            rec = {k: v for k, v in zip(self.header, row) if v != ""}
            p = point_from_record(rec, self.metrics, self.ordinal + 1)
            if p is None:
                continue
            self.ordinal += 1
            self.csv_rows += 1
            if self.skip_rows:
                self.skip_rows -= 1
                continue
            out.append(p)
        return out


class TensorBoardReader:
    """One events file via ``tensorboard``'s ``EventFileLoader``: scalar values whose tag is one of the
    metric names (the first that appears is then the writer's only tag)."""

    def __init__(self, src: SourceFile, settings: LossSettings) -> None:
        self.src = src
        self.metrics = settings.metric
        self.tag: str | None = None
        self.loader = None
        self.ident: tuple[int, int] | None = None
        self.size = -1
        self.generation = -1
        self.announced = -1

    def read(self) -> Iterator[Batch]:
        try:
            st = os.stat(self.src.path)
        except OSError:
            return
        if not stat.S_ISREG(st.st_mode):
            return  # tensorboard's loader would block on a FIFO: only regular files are read
        ident = (st.st_dev, st.st_ino)
        if self.loader is None or ident != self.ident or st.st_size < self.size:
            from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

            self.loader = EventFileLoader(self.src.path)
            self.ident, self.generation, self.tag = ident, self.generation + 1, None
        elif st.st_size == self.size:
            return
        self.size = st.st_size
        pts: list[LossPoint] = []
        for event in self.loader.Load():
            if not event.HasField("summary"):
                continue
            for v in event.summary.value:
                if self.tag is None and v.tag in self.metrics:
                    self.tag = v.tag
                if v.tag != self.tag:
                    continue
                val = _scalar(v)
                if val is not None:
                    pts.append(LossPoint(int(event.step), val, float(event.wall_time)))
        if pts:
            new = self.announced != self.generation
            self.announced = self.generation
            yield Batch("tensorboard", self.src.path, self.generation, tuple(pts), new,
                        pts[0].wall_time or 0.0)


def _scalar(v: Any) -> float | None:  # a TensorBoard Summary.Value
    if v.HasField("simple_value"):
        return float(v.simple_value)
    if v.HasField("tensor"):
        t = v.tensor
        if t.float_val:
            return float(t.float_val[0])
        if t.double_val:
            return float(t.double_val[0])
        if t.tensor_content:
            from tensorboard.util import tensor_util

            arr = tensor_util.make_ndarray(t)
            if arr.size == 1:
                return float(arr.reshape(-1)[0])
    return None


def read_trainer_state(path: str, metrics: Sequence[str]) -> tuple[list[LossPoint], dict[str, Any]] | None:
    """The loss points of one ``trainer_state.json`` and its other top-level fields (the run's
    configuration among them); None when it cannot be read or parsed (a checkpoint being written is
    judged by the validators, not here)."""
    state, problem = read_json(path)  # bounded: regular file, size, depth, digits, memory (jsonfile.py)
    if problem is not None or not isinstance(state, dict):
        return None
    history = state.pop("log_history", None)
    return parse_log_history(history, metrics), state
