"""Resume detection over a run's loss writers, and the two drivers: ``RunLossWatcher`` (the daemon's,
stateful, incremental) and ``analyse_run`` (``ckptwatch once``; the same code run once to the end).

What counts as a resume. Within one *family* of writers (all TensorBoard files of the run, all its text
logs, ...), a new segment (a new file, a new generation of a file, or a step sequence that goes back
within a file) whose first step is at or below a step already seen: a process started again from an
earlier step. A new writer that continues above every step seen is a rotated log or a clean continuation,
not a resume (its loss could not have been compared with a later one anyway). Two writers whose wall
times overlap are concurrent (two runs in one dir), not a resume of each other.

What the real Trainer writes (transformers 5.23, checked with ``tests/builders/loss.py``): each process
writes a new ``events.out.tfevents.*`` file; ``trainer_state.json`` of a checkpoint holds the
``log_history`` of the checkpoint it resumed from *verbatim*, then the new entries; the steps the dead
process logged after its last checkpoint never reach any ``trainer_state.json``. So a resume from the
newest checkpoint leaves no overlap in ``trainer_state.json``: it is seen when the watcher saw an
earlier history that a later one contradicts (a rewritten ``checkpoint-N``, or an older checkpoint whose
entries after the resume step differ), or when the run configuration the file records changed between
two consecutive checkpoints (``signals``: the later one was written by another process, resumed from
the earlier one). TensorBoard and text logs show it directly; they win when several families report
the same resume step.

Where nothing shows a resume, each history is still scanned for the loss going back to the run's
initial level (``signals.LevelScan``): reported as a resume with ``signal="loss_level"`` unless a resume
was reported within ``2 * window`` steps of it (the same event, seen better).

The reference window is the last ``window`` points below the resume's first step in the newest earlier
segment that has any; the resumed-from step is the newest checkpoint step at or below that first step
(strictly below when steps are logged 1-based as the Trainer does: the loss logged at step 21 is the first
after checkpoint-20; at or below when 0-based as Lightning does: the first after ``step=20.ckpt`` is logged
as step 20). Without a matching checkpoint it is the newest earlier step below the first step.
"""

from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ckptwatch.losswatch.points import LazyPoints, LossPoint, Segment, WriterId
from ckptwatch.losswatch.report import LossReport, Resume, SegmentSummary
from ckptwatch.losswatch.rule import judge
from ckptwatch.losswatch.settings import LossSettings
from ckptwatch.losswatch.signals import LevelHit, LevelScan, config_change, run_config
from ckptwatch.losswatch.sources import (
    Batch,
    LineReader,
    SourceFile,
    TensorBoardReader,
    checkpoint_states,
    discover,
    read_trainer_state,
    wants_trainer_state,
)
from ckptwatch.losswatch.tail import Tailer

MAX_SEGMENTS = 64  # per family; a run resumed more often than this keeps its first and newest segments

# the family whose view of a resume is reported when several see it (finest, most direct first)
PRIORITY = ("tensorboard", "text", "jsonl", "csv", "trainer_state")


@dataclass
class _Pending:
    segment: Segment
    at_step: int
    earlier: Segment | None  # the segment the reference window comes from
    signal: str = "writer"  # what showed it (``Resume.signal``)
    evidence: str = ""


@dataclass(slots=True)
class _Family:
    kind: str
    settings: LossSettings
    segments: list[Segment] = field(default_factory=list)
    current: dict[tuple[str, int], Segment] = field(default_factory=dict)  # (path, generation) -> segment
    pending: list[_Pending] = field(default_factory=list)
    decided: list[Resume] = field(default_factory=list)  # closed before the end of the poll
    checkpoints: Sequence[tuple[int | None, str]] = ()  # the current poll's
    scans: dict[WriterId, LevelScan] = field(default_factory=dict)  # per segment: back to the initial loss?
    level_hits: list[Resume] = field(default_factory=list)  # found by the scans, not yet reported

    def _close(self, seg: Segment) -> None:
        """``seg`` can grow no more (its writer went back in steps): decide its pending resume now, so
        that the segments it holds on to can be forgotten."""
        keep = []
        for pend in self.pending:
            if pend.segment is seg:
                self.decided.append(self._resume(pend, pend.segment.first[:self.settings.window],
                                                 self.checkpoints))
            else:
                keep.append(pend)
        self.pending = keep

    def add(self, batch: Batch, *, evidence: str = "") -> None:
        """Feed a batch of one writer. ``evidence``: another signal (the run configuration changed) says
        the batch's first new segment is a resumed process, even where its steps do not go back."""
        key = (batch.path, batch.generation)
        seg = self.current.get(key)
        pts = batch.points
        if seg is None:
            for old in [k for k in self.current if k[0] == batch.path]:  # an older generation of this file
                del self.current[old]
            seg = self._new_segment(WriterId(batch.kind, batch.path, batch.generation, 0), pts[0], evidence)
            self.current[key] = seg
        # split where the step goes back (a resumed process appending to the same file)
        steps = pts.steps if isinstance(pts, LazyPoints) else [p.step for p in pts]
        prev = seg.last.step if seg.last is not None else steps[0]
        if steps[0] >= prev and steps == sorted(steps):  # the common case, checked in C
            cuts: list[int] = []
        else:
            cuts = [i for i, (a, b) in enumerate(zip([prev] + steps, steps)) if b < a]
        start = 0
        for cut in cuts + [len(pts)]:
            if cut > start:
                self.extend(seg, pts[start:cut])
            if cut < len(pts):
                self._close(seg)
                seg = self._new_segment(WriterId(batch.kind, batch.path, batch.generation,
                                                 seg.writer.segment + 1), pts[cut])
                self.current[key] = seg
            start = cut

    def extend(self, seg: Segment, pts: Sequence[LossPoint] | LazyPoints, where: str = "") -> None:
        """Append points to a segment (steps not going back) and scan them for a return to the run's
        initial loss. ``where``: the file they came from when it is not the segment's own (a later
        checkpoint's trainer_state.json continuing the history)."""
        seg.extend(pts)  # type: ignore[arg-type]
        scan = self.scans.get(seg.writer)
        if scan is None:
            return
        first = self.segments[0].first if self.segments else []
        initial = [p.value for p in first] if len(first) >= self.settings.min_points else []
        for hit in scan.feed(pts, initial, self.settings):
            self.level_hits.append(self._level_resume(seg, hit, initial, where))

    def _new_segment(self, writer: WriterId, first: LossPoint, evidence: str = "") -> Segment:
        seg = Segment(writer, keep_first=self.settings.window)
        earlier = list(self.segments)
        self.segments.append(seg)
        if len(self.segments) > MAX_SEGMENTS:
            # bounded: forget the oldest segment that is neither the run's first (its initial loss), a
            # writer's current one, nor needed by an undecided resume
            busy = {id(s) for s in self.current.values()} | {id(p.segment) for p in self.pending} | \
                   {id(p.earlier) for p in self.pending}
            for i, old in enumerate(self.segments[1:-1], 1):
                if id(old) not in busy:
                    del self.segments[i]
                    break
        resumed = False
        if earlier:
            max_seen = max(s.max_step for s in earlier)
            concurrent = self._concurrent(earlier[-1], first)
            if (first.step <= max_seen and not concurrent) or evidence:
                ref = next((s for s in reversed(earlier) if s.before(first.step, 1)), None)
                signal = "config" if evidence else "history" if self.kind == "trainer_state" else "writer"
                self.pending.append(_Pending(seg, first.step, ref, signal, evidence))
                resumed = True
            # a writer that continues the history (a rotated log) continues its scan; a resumed or
            # concurrent one starts its own (a resume's loss is judged by the resume rule)
            prev_scan = self.scans.get(earlier[-1].writer)
            inherit = prev_scan is not None and not resumed and not concurrent
            self.scans[writer] = prev_scan.copy() if inherit else LevelScan()  # type: ignore[union-attr]
        else:
            self.scans[writer] = LevelScan()
        live = {s.writer for s in self.segments}
        for w in [w for w in self.scans if w not in live]:
            del self.scans[w]
        return seg

    @staticmethod
    def _concurrent(prev: Segment, first: LossPoint) -> bool:
        last = prev.last
        if last is None or last.wall_time is None or first.wall_time is None:
            return False
        return first.wall_time < last.wall_time

    @property
    def zero_based(self) -> bool:
        first = self.segments[0].first_point if self.segments else None
        return first is not None and first.step == 0

    def decide(self, final: bool, checkpoints: Sequence[tuple[int | None, str]]) -> list[Resume]:
        """Resumes whose post-resume window is full (or holds a non-finite loss, or can grow no more)."""
        k = self.settings.window
        out, self.decided = self.decided, []
        keep: list[_Pending] = []
        for pend in self.pending:
            after = pend.segment.first[:k]
            closed = final or pend.segment is not self.current.get((pend.segment.writer.path,
                                                                    pend.segment.writer.generation))
            if len(after) >= k or any(not math.isfinite(p.value) for p in after) or closed:
                out.append(self._resume(pend, after, checkpoints))
            else:
                keep.append(pend)
        self.pending = keep
        return out

    def _resume(self, pend: _Pending, after: list[LossPoint],
                checkpoints: Sequence[tuple[int | None, str]]) -> Resume:
        s = self.settings
        before = pend.earlier.before(pend.at_step, s.window) if pend.earlier else ()
        initial = self.segments[0].first[:s.window] if self.segments else []
        j = judge([p.value for p in before], [p.value for p in after], [p.value for p in initial], s)
        from_step, from_ckpt = self._from(pend.at_step, before, checkpoints)
        r = Resume(
            at_step=pend.at_step, from_step=from_step, from_checkpoint=from_ckpt, before=j.before,
            after=j.after, ratio=j.ratio, alert=j.alert, reason="", scratch=j.scratch, nonfinite=j.nonfinite,
            judged=j.judged,
            initial=_median(initial), source=self.kind, writer=pend.segment.writer.label(),
            before_writer=pend.earlier.writer.label() if pend.earlier else "",
            before_steps=(before[0].step, before[-1].step) if before else None,
            after_steps=(after[0].step, after[-1].step) if after else None,
            kind="loss_nonfinite" if j.nonfinite else "loss_jump", signal=pend.signal, evidence=pend.evidence,
        )
        return _with_reason(r, s)

    def _level_resume(self, seg: Segment, hit: LevelHit, initial: list[float], where: str) -> Resume:
        """A return to the initial loss inside one history, as a resume no writer showed."""
        j = hit.judgement
        from_step, from_ckpt = self._from(hit.at_step, [p for p in hit.before if p.step < hit.at_step],
                                          self.checkpoints)
        r = Resume(
            at_step=hit.at_step, from_step=from_step, from_checkpoint=from_ckpt, before=j.before,
            after=j.after, ratio=j.ratio, alert=True, reason="", scratch=True, nonfinite=False, judged=True,
            initial=_median_of(initial), source=self.kind, writer=where or seg.writer.label(),
            before_writer=seg.writer.label(), before_steps=(hit.before[0].step, hit.before[-1].step),
            after_steps=(hit.after[0].step, hit.after[-1].step), kind="loss_jump", signal="loss_level",
        )
        return _with_reason(r, self.settings)

    def _from(self, at_step: int, before: Sequence[LossPoint],
              checkpoints: Sequence[tuple[int | None, str]]) -> tuple[int | None, str | None]:
        zero = self.zero_based
        ok = [(st, p) for st, p in checkpoints
              if st is not None and (st <= at_step if zero else st < at_step)]
        if ok:
            st, p = max(ok, key=lambda t: t[0])
            return st, p
        if not before:
            return None, None
        # 0-based logging: the loss logged at step s is the first after s completed steps
        return before[-1].step + (1 if zero else 0), None


def _median(pts: Sequence[LossPoint]) -> float | None:
    return _median_of([p.value for p in pts])


def _median_of(values: Sequence[float]) -> float | None:
    from ckptwatch.losswatch.rule import median

    vals = [v for v in values if math.isfinite(v)]
    return median(vals) if vals else None


def _fmt(x: float | None) -> str:
    return "?" if x is None else f"{x:.4g}"


def _span(steps: tuple[int, int] | None) -> str:
    return "?" if steps is None else f"{steps[0]}-{steps[1]}"


def _with_reason(r: Resume, s: LossSettings) -> Resume:
    from dataclasses import replace

    where = f"in {r.writer}" if r.writer else ""
    frm = (f"from {r.from_checkpoint} (step {r.from_step})" if r.from_checkpoint
           else f"from step {r.from_step}" if r.from_step is not None else "from an unknown step")
    ckpt = r.from_checkpoint or (f"the checkpoint of step {r.from_step}" if r.from_step is not None else
                                 "the checkpoint it resumed from")
    if r.signal == "config":
        frm += f" (trainer_state.json shows a new process: {r.evidence})"
    if r.signal == "loss_level":
        ratio = f" ({r.ratio:.1f}x)" if r.ratio is not None else ""
        after = f"after {ckpt}" if r.from_step is not None else "here"
        msg = (f"loss went back to the run's initial level at step {r.at_step} in {r.writer}, where no "
               f"resume is visible: median {_fmt(r.before)} over steps {_span(r.before_steps)}, "
               f"{_fmt(r.after)} over steps {_span(r.after_steps)}{ratio}; the run started at "
               f"{_fmt(r.initial)}. Training probably restarted from scratch: a process that resumed {after} "
               f"loaded no trained weights, or the run started over. Stop the run, check what its last start "
               f"loaded, and resume again from {ckpt}.")
    elif r.nonfinite:
        msg = (f"loss is not finite right after the resume at step {r.at_step} {frm} {where} (last good loss "
               f"before it {_fmt(r.before)}). The resumed state is broken; stop the run and check that "
               f"{ckpt} is complete and was loaded as a whole (weights, optimizer, scaler).")
    elif not r.judged:
        msg = (f"resume at step {r.at_step} {frm} {where}: too few losses to judge (need {s.min_points} on "
               f"each side; before {_fmt(r.before)}, after {_fmt(r.after)})")
    elif r.alert:
        ratio = f"{r.ratio:.1f}x" if r.ratio is not None else f"by {r.after - r.before:.3g}"  # type: ignore[operator]
        msg = (f"loss jumped {ratio} after the resume at step {r.at_step} {frm}: median of the last "
               f"{s.window} losses before it {_fmt(r.before)}, of the first {s.window} after it "
               f"{_fmt(r.after)} ({where.removeprefix('in ')})")
        if r.scratch:
            where_to = ("at or above"
                        if r.initial is not None and r.after is not None and r.after >= r.initial
                        else "back near")
            msg += (f"; that is {where_to} the run's initial loss {_fmt(r.initial)}: training probably "
                    f"restarted from scratch")
        msg += (f". The resumed model is probably not the trained one: check that {ckpt} holds the trained "
                f"weights and that they were loaded (a stub pytorch_model.bin beside an adapter, or a fresh "
                f"adapter created before loading, does exactly this); stop the run, fix the load and resume "
                f"again from {ckpt}.")
    else:
        msg = (f"resume at step {r.at_step} {frm} continued normally: loss {_fmt(r.before)} before, "
               f"{_fmt(r.after)} after" + (f" ({r.ratio:.2f}x)" if r.ratio is not None else ""))
    return replace(r, reason=msg)


_LIGHTNING_STEP = re.compile(r"step=(\d+)")


def find_checkpoints(run_root: str) -> list[tuple[int | None, str]]:
    """Checkpoints to name in resumes when the caller has none: the Trainer's ``checkpoint-<N>/`` dirs
    and Lightning's ``checkpoints/*step=<N>*.ckpt`` files (one and two levels down)."""
    out: list[tuple[int | None, str]] = []
    for pattern in ("checkpoint-*", "*/checkpoint-*"):
        for p in glob.glob(os.path.join(run_root, pattern)):
            m = re.fullmatch(r"checkpoint-(\d+)", os.path.basename(p))
            if m and os.path.isdir(p):
                out.append((int(m.group(1)), p))
    for pattern in ("checkpoints/*.ckpt", "*/checkpoints/*.ckpt", "*/*/checkpoints/*.ckpt"):
        for p in glob.glob(os.path.join(run_root, pattern)):
            m = _LIGHTNING_STEP.search(os.path.basename(p))
            if m:
                out.append((int(m.group(1)), p))
    return sorted(set(out), key=lambda t: (t[0] or 0, t[1]))


class RunLossWatcher:
    """The loss watch of one run dir, fed incrementally.

    ``poll(checkpoints)`` reads what was appended since the last call (a stat per known file when nothing
    changed, plus one directory walk to find new files) and returns only the resumes decided in this
    call: a resume is decided once ``window`` post-resume points exist, at once when one is not finite.
    """

    __slots__ = ("_polled", "_seen", "_ts_conf", "_ts_hist", "_ts_seen", "families", "grew", "level_steps",
                 "notes", "readers", "reported", "resumes", "root", "settings", "tailer")

    def __init__(self, run_root: str, settings: LossSettings, *, tailer: Tailer | None = None) -> None:
        self.root = run_root
        self.settings = settings
        self.tailer = tailer or Tailer()
        self.readers: dict[str, LineReader | TensorBoardReader] = {}
        self.families: dict[str, _Family] = {}
        # Several sources see the same resume (TensorBoard and the text log of one process): the n-th
        # resume at a step seen by a family is reported only if fewer than n were reported at that step,
        # so a second resume from the same checkpoint (a crash loop) is still reported, once.
        self.reported: dict[int, int] = {}  # at_step -> resumes reported there
        self._seen: dict[tuple[str, int], int] = {}  # (family, at_step) -> resumes that family decided there
        self.grew = False  # the last poll read new loss points (the daemon polls growing runs often)
        self._polled = False
        self.resumes: list[Resume] = []
        self.notes: list[str] = []
        self._ts_seen: dict[str, int] = {}  # checkpoint dir -> hash of its trainer_state.json's size, mtime
        self._ts_hist: dict[int, float] = {}  # step -> loss of the accumulated trainer_state history
        # step -> run configuration of the trainer_state.json last read at that step (one view shared by
        # the steps that have the same: 10,000 runs' checkpoints are kept)
        self._ts_conf: dict[int, dict[str, Any]] = {}
        self.level_steps: list[int] = []  # steps of the returns to the initial loss reported

    def _family(self, kind: str) -> _Family:
        fam = self.families.get(kind)
        if fam is None:
            fam = self.families[kind] = _Family(kind, self.settings)
        return fam

    def poll(self, checkpoints: Sequence[tuple[int | None, str]] = (), *,
             final: bool = False) -> list[Resume]:
        # Each reader streams its batches (one chunk in memory at a time). Only the first batch of each is
        # peeked first, so that writers appearing in the same poll are fed in the order they started
        # (wall time or mtime): the earlier process first.
        heads: list[tuple[Batch, Iterator[Batch], SourceFile]] = []
        sources = discover(self.root, self.settings)
        self._forget_vanished({src.path for src in sources})
        for src in sources:
            reader = self.readers.get(src.path)
            if reader is None:
                reader = self.readers[src.path] = (TensorBoardReader(src, self.settings)
                                                   if src.kind == "tensorboard"
                                                   else LineReader(src, self.tailer, self.settings))
            it = reader.read()
            head = self._next(src, it)
            if head is not None:
                heads.append((head, it, src))
        for fam in self.families.values():
            fam.checkpoints = checkpoints
        heads.sort(key=lambda h: (h[0].new_writer, h[0].order_key if h[0].new_writer else 0.0))
        for head, it, src in heads:
            fam = self._family(head.kind)
            fam.checkpoints = checkpoints
            fam.add(head)
            while (b := self._next(src, it)) is not None:
                fam.add(b)
        grew = bool(heads)
        if wants_trainer_state(self.settings):
            grew |= self._poll_trainer_state(checkpoints)
        self.grew = grew and self._polled  # the first poll reads the history; only later reads are growth
        self._polled = True
        decided: list[Resume] = []
        near = 2 * self.settings.window  # a return to the initial loss this close to a resume is that resume
        for kind in PRIORITY:
            fam = self.families.get(kind)
            if fam is None:
                continue
            for r in fam.decide(final, checkpoints):
                n = self._seen[(kind, r.at_step)] = self._seen.get((kind, r.at_step), 0) + 1
                if self.reported.get(r.at_step, 0) >= n:
                    continue  # another source already reported this resume
                self.reported[r.at_step] = n
                if any(abs(s - r.at_step) <= near for s in self.level_steps):
                    continue  # reported already, as the loss going back to its initial level
                decided.append(r)
        for kind in PRIORITY:
            fam = self.families.get(kind)
            if fam is None:
                continue
            hits, fam.level_hits = fam.level_hits, []
            for r in hits:
                if any(abs(s - r.at_step) <= near for s in [*self.reported, *self.level_steps]):
                    continue  # a resume a writer showed, or another source's view of the same return
                self.level_steps.append(r.at_step)
                decided.append(r)
        del self.level_steps[:-MAX_SEGMENTS]
        self.resumes.extend(decided)
        return decided

    def _forget_vanished(self, live: set[str]) -> None:
        """Drop the readers, tailer offsets and open segments of files that are gone (rotated logs, old
        events files, rotated-away checkpoints): a long-running service must not keep one per file ever
        seen. Closed segments stay, bounded by MAX_SEGMENTS."""
        for path in [p for p in self.readers if p not in live]:
            del self.readers[path]
            self.tailer.forget(path)
        for fam in self.families.values():
            gone = [k for k in fam.current
                    if (not os.path.exists(k[0]) if fam.kind == "trainer_state" else k[0] not in live)]
            for key in gone:
                del fam.current[key]

    def _next(self, src: SourceFile, it: Iterator[Batch]) -> Batch | None:
        """The reader's next batch; a source we cannot read becomes a note, never a crash of the watch."""
        try:
            return next(it, None)
        except Exception as exc:  # noqa: BLE001 - any reader failure is reported the same way
            note = f"{src.path}: cannot read as {src.kind}: {exc}"
            if note not in self.notes:
                self.notes.append(note)
            return None

    def _poll_trainer_state(self, checkpoints: Sequence[tuple[int | None, str]]) -> bool:
        """Read new or rewritten trainer_state.json files; True if any was read."""
        grew = False
        fam = self._family("trainer_state")
        fam.checkpoints = checkpoints
        present = set()
        states = checkpoint_states(self.root, checkpoints)
        names = {step: ckpt for step, _, _, ckpt in states}  # for messages naming the checkpoint before
        for step, path, st, ckpt in states:
            present.add(ckpt)
            sig = hash((st.st_size, st.st_mtime_ns))  # one int a checkpoint (10,000 runs' worth are kept)
            if self._ts_seen.get(ckpt) == sig:
                continue
            read = read_trainer_state(path, self.settings.metric)
            if read is None:
                continue  # being written: try again next poll
            pts, state = read
            self._ts_seen[ckpt] = sig
            grew = True
            evidence = self._config_evidence(step, path, run_config(state), names)
            hist = self._ts_hist
            diverge = next((i for i, p in enumerate(pts)
                            if p.step in hist and not _same(hist[p.step], p.value)), None)
            if diverge is not None:
                new = pts[diverge:]
                gen = len(fam.segments)
                fam.add(Batch("trainer_state", path, gen, tuple(new), True, 0.0), evidence=evidence)
            else:
                top = max(hist) if hist else -1
                new = [p for p in pts if p.step > top]
                if new and evidence and fam.segments:
                    # the history continues, but another process wrote it: a resume from the newest
                    # checkpoint before this one
                    fam.add(Batch("trainer_state", path, len(fam.segments), tuple(new), True, 0.0),
                            evidence=evidence)
                elif new:
                    # the history continues: extend the newest segment (a continuation, not a new writer)
                    if fam.segments:
                        fam.extend(fam.segments[-1], new, path)
                    else:
                        fam.add(Batch("trainer_state", path, 0, tuple(new), True, 0.0))
            if diverge is not None and pts:
                # the steps past this file's last belong to the timeline it replaced (a checkpoint saved
                # over by a resumed process): its next checkpoints continue this one, not that one
                for st in [st for st in hist if st > pts[-1].step]:
                    del hist[st]
            for p in pts:
                hist[p.step] = p.value
            while len(hist) > 4 * 4096:  # bounded: forget the oldest steps
                hist.pop(min(hist))
        for ckpt in [p for p in self._ts_seen
                     if p not in present and not os.path.exists(os.path.join(p, "trainer_state.json"))]:
            del self._ts_seen[ckpt]  # rotated away
        return grew

    def _config_evidence(self, step: int, path: str, config: dict[str, Any] | None,
                         names: dict[int, str]) -> str:
        """What changed in the run configuration since the checkpoint before ``step`` ("" if nothing).
        ``names``: step -> checkpoint dir of the checkpoints present (the one before is named by it)."""
        name = os.path.basename(os.path.dirname(path))
        earlier = [s for s in self._ts_conf if s < step]
        prev = max(earlier) if earlier else None
        before = self._ts_conf[prev] if prev is not None else None
        if config is not None:
            if before is not None and before == config:
                config = before  # one view for a run's checkpoints, not one each (memory)
            self._ts_conf[step] = config
            while len(self._ts_conf) > 4096:  # bounded: forget the oldest checkpoints
                self._ts_conf.pop(min(self._ts_conf))
        if before is None or prev is None:
            return ""
        before_name = os.path.basename(names[prev]) if prev in names else f"the checkpoint at step {prev}"
        return config_change(before, before_name, config, name) or ""

    def report(self) -> LossReport:
        segs: list[SegmentSummary] = []
        hists: list[tuple[LossPoint, ...]] = []
        for kind in PRIORITY:
            fam = self.families.get(kind)
            if fam is None:
                continue
            for seg in fam.segments:
                if seg.count == 0 or seg.last is None or seg.first_point is None:
                    continue
                first = seg.first_point
                segs.append(SegmentSummary(kind, seg.writer.label(), first.step, seg.last.step, first.value,
                                           seg.last.value, seg.count))
                hists.append(tuple(seg.history()))
        return LossReport(self.root, tuple(self.resumes), tuple(segs), tuple(hists), tuple(self.notes))


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9 * max(abs(a), abs(b))


def analyse_run(run_root: str, settings: LossSettings,
                checkpoints: Sequence[tuple[int | None, str]] = ()) -> LossReport:
    """One pass over a run dir (``ckptwatch once``): every resume found, each judged with what exists."""
    w = RunLossWatcher(run_root, settings)
    w.poll(checkpoints or find_checkpoints(run_root), final=True)
    return w.report()


__all__ = ["RunLossWatcher", "SourceFile", "analyse_run"]
