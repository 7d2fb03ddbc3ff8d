"""Pure parsers: bytes or rows in, loss points out. No file access here (``tail.py`` does the I/O).

Text logs are parsed a chunk at a time with bytes regexes (each built-in pattern begins with a literal,
which ``re`` finds with a fast substring search, and a pattern whose literal is absent from a chunk is not
run at all), so a GB of log costs a few seconds, not a Python loop over every line.

Built-in text patterns:

- Hugging Face console dicts, as ``PrinterCallback`` prints them (``{'loss': '0.0898', ...}`` in
  transformers 5; ``{'loss': 0.0898, ...}`` in 4.x). The step is the dict's ``'step'`` or
  ``'global_step'`` key when present, else the ordinal of the loss line in the file.
- ``Epoch: 2, Steps: 70070, Batch: 21771, Loss: 0.0898`` (the diffusers-style print of seed report 4).
- MindSpore / MindFormers ``step:[ 42/100], loss: 2.31``.

Other formats (MindSpore's ``LossMonitor`` prints ``step: 42, loss is 2.31``) go through ``regex``: every
built-in pattern costs one scan of each chunk for its literal (about 0.7 s per GB), so the list is short.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ckptwatch.losswatch.points import LazyPoints, LossPoint

_NUM = rb"([-+]?[\w.]+)"  # float() decides; a non-number (``Loss: n/a``) is skipped


@dataclass(frozen=True)
class TextPattern:
    """One line format: a regex whose groups are (loss, step) in that order (the step group may match
    nothing: then the loss line's ordinal in the file is its step)."""

    name: str
    needle: bytes  # a literal every match contains: the chunk prefilter (b"" = always run)
    regex: re.Pattern[bytes]
    swapped: bool = False  # groups are (step, loss)


_HF_DICT = TextPattern("hf_dict", b"{'loss': ",
                       re.compile(rb"\{'loss': '?([^',}\s]+)'?(?:[^\n]*'(?:global_)?step': '?(\d+))?"))
_EPOCH_STEPS = TextPattern("epoch_steps", b"Steps: ", re.compile(rb"Steps: (\d+)[^\n]*?Loss: " + _NUM), True)
# MindFormers prints the step *within the epoch* (``Epoch:[  2/  5], step:[   42/  100]``): the global step
# is (epoch - 1) * steps_per_epoch + step, else every epoch would look like a resume.
_MS_BRACKET = TextPattern("mindspore", b"step:[",
                          re.compile(rb"(?:Epoch:\[\s*(\d+)\s*/\s*\d+\s*\],\s*)?"
                                     rb"step:\[\s*(\d+)\s*/\s*(\d+)\s*\],\s*loss: " + _NUM))
BUILTIN_PATTERNS = (_HF_DICT, _EPOCH_STEPS, _MS_BRACKET)


def custom_pattern(regex: str) -> TextPattern:
    """A user pattern with a named group ``loss`` and optionally ``step`` (checked by the settings),
    rewritten as (loss, step) groups."""
    return TextPattern("custom", b"", re.compile(regex.encode(), re.MULTILINE))


def patterns_for(regex: str | None) -> tuple[TextPattern, ...]:
    return ((custom_pattern(regex),) if regex else ()) + BUILTIN_PATTERNS


def _pairs(pat: TextPattern, chunk: bytes,
           with_pos: bool) -> list[tuple[int, bytes, bytes]] | list[tuple[bytes, bytes]]:
    """(loss, step) byte pairs of every match, with the match position first when ``with_pos``."""
    rx = pat.regex
    if pat.name == "custom":
        li, si = rx.groupindex["loss"], rx.groupindex.get("step")
        if with_pos:
            return [(m.start(), m.group(li), (m.group(si) or b"") if si else b"") for m in rx.finditer(chunk)]
        return [(m.group(li), (m.group(si) or b"") if si else b"") for m in rx.finditer(chunk)]
    if pat.name == "mindspore":
        def glob_step(m: re.Match[bytes]) -> bytes:
            epoch, step, per = m.group(1), int(m.group(2)), int(m.group(3))
            return str((int(epoch) - 1) * per + step if epoch else step).encode()

        if with_pos:
            return [(m.start(), m.group(4), glob_step(m)) for m in rx.finditer(chunk)]
        return [(m.group(4), glob_step(m)) for m in rx.finditer(chunk)]
    if with_pos:
        out = [(m.start(), m.group(1), m.group(2) or b"") for m in rx.finditer(chunk)]
        return [(p, b, a) for p, a, b in out] if pat.swapped else out
    pairs = rx.findall(chunk)
    return [(b, a) for a, b in pairs] if pat.swapped else pairs


def _matches(chunk: bytes, patterns: Sequence[TextPattern]) -> list[tuple[bytes, bytes]]:
    """(value, step) byte pairs of every pattern whose literal occurs in ``chunk``, in file order.

    One pattern (the common case): a single ``findall``. Several: each with positions, merged by offset.
    """
    active = [p for p in patterns if not p.needle or p.needle in chunk]
    if len(active) == 1:
        return _pairs(active[0], chunk, False)
    found: list = []
    for pat in active:
        found.extend(_pairs(pat, chunk, True))
    found.sort(key=lambda t: t[0])
    return [(v, s) for _, v, s in found]


def parse_text_chunk(chunk: bytes, patterns: Sequence[TextPattern],
                     ordinal: int) -> tuple[list[LossPoint], int]:
    """Loss points in ``chunk`` (complete lines only), in file order, and the updated loss-line ordinal.

    ``ordinal`` counts loss lines seen so far in this writer; a line without a step gets ``ordinal + 1``.
    The common case (one line format in the chunk) runs ``findall`` and two list comprehensions.
    """
    pairs = _matches(chunk, patterns)
    if not pairs:
        return [], ordinal
    new = tuple.__new__
    try:
        if all(s for _, s in pairs):
            out = [new(LossPoint, (int(s), float(v), None)) for v, s in pairs]
        else:
            out = [new(LossPoint, (int(s) if s else ordinal + i, float(v), None))
                   for i, (v, s) in enumerate(pairs, 1)]
    except ValueError:  # a non-number in some match (``Loss: n/a``): drop those lines
        pairs = [(v, s) for v, s in pairs if _is_float(v)]
        out = [new(LossPoint, (int(s) if s else ordinal + i, float(v), None))
               for i, (v, s) in enumerate(pairs, 1)]
    return out, ordinal + len(out)


def parse_text_chunk_lazy(chunk: bytes, patterns: Sequence[TextPattern],
                          ordinal: int) -> tuple[LazyPoints, int]:
    """``parse_text_chunk`` for the bulk path: steps and values converted with C-level ``map``, the
    ``LossPoint`` tuples made only for the points a segment keeps."""
    pairs = _matches(chunk, patterns)
    if not pairs:
        return LazyPoints([], []), ordinal
    vals_b, steps_b = zip(*pairs)
    try:
        values = list(map(float, vals_b))
    except ValueError:  # some match is not a number (``Loss: n/a``): drop those lines
        pairs = [(v, s) for v, s in pairs if _is_float(v)]
        if not pairs:
            return LazyPoints([], []), ordinal
        vals_b, steps_b = zip(*pairs)
        values = list(map(float, vals_b))
    if b"" not in steps_b:
        steps = list(map(int, steps_b))
    else:
        steps = [int(s) if s else ordinal + i for i, s in enumerate(steps_b, 1)]
    return LazyPoints(steps, values), ordinal + len(steps)


def _is_float(b: bytes) -> bool:
    try:
        float(b)
    except ValueError:
        return False
    return True


_STEP_KEYS = ("step", "global_step", "_step", "iteration", "iter", "trainer/global_step")
_TIME_KEYS = ("wall_time", "timestamp", "time", "_timestamp")


def _number(v: object) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def point_from_record(rec: dict, metrics: Sequence[str], ordinal: int) -> LossPoint | None:
    """A loss point from one structured record (a JSON line, a CSV row, a ``log_history`` entry).

    The loss is the first of ``metrics`` present with a number; the step the first step-like key
    (``step``, ``global_step``, ...), else ``ordinal``; the wall time a ``wall_time``/``timestamp``/``time``
    key when it holds a number."""
    value = None
    for name in metrics:
        if name in rec:
            value = _number(rec[name])
            if value is not None:
                break
    if value is None:
        return None
    step = None
    for key in _STEP_KEYS:
        if key in rec:
            s = _number(rec[key])
            if s is not None and math.isfinite(s):
                step = int(s)
                break
    wall = None
    for key in _TIME_KEYS:
        if key in rec:
            wall = _number(rec[key])
            if wall is not None:
                break
    return LossPoint(ordinal if step is None else step, value, wall)


def parse_jsonl_lines(lines: Iterable[bytes], metrics: Sequence[str],
                      ordinal: int) -> tuple[list[LossPoint], int]:
    """Loss points from complete JSON lines; lines that do not parse or lack the metric are skipped."""
    needles = [m.encode() for m in metrics]
    out: list[LossPoint] = []
    for line in lines:
        if not any(n in line for n in needles):
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, an int over 4,300 digits, or nested too deep
            continue
        if not isinstance(rec, dict):
            continue
        p = point_from_record(rec, metrics, ordinal + 1)
        if p is not None:
            ordinal += 1
            out.append(p)
    return out, ordinal


def parse_log_history(history: object, metrics: Sequence[str]) -> list[LossPoint]:
    """Loss points from a ``trainer_state.json`` ``log_history`` (eval and summary entries skipped)."""
    out: list[LossPoint] = []
    if not isinstance(history, list):
        return out
    for i, rec in enumerate(history):
        if isinstance(rec, dict) and "train_runtime" not in rec:  # the end-of-training summary entry
            p = point_from_record(rec, metrics, i + 1)
            if p is not None:
                out.append(p)
    return out
