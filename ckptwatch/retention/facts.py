"""What the retention rules need to know of a judged run, read from the run itself: ``candidates_of``.

The keep rules and guards are pure (``policy``, ``guards``); everything they see of the disk comes from
here, once per plan: the configured metric at each checkpoint, ``.ckptwatch-keep`` pins, the framework
pointers that name a checkpoint (a resume follows them, so their targets must survive), the run's
recorded best, and whether a checkpoint's path is safe to delete at all.

Why reuse rather than re-parse: the pointer files are read by the same functions the layouts use for
their pointer findings (``deepspeed.read_pointers``, ``megatron.read_tracker``, Lightning's ``LAST``
names, ``pointer.current``), so "the pointer names X" means one thing in ``once`` and in ``prune``.

Reading rules (DESIGN.md invariants 1, 7, 8): every file is opened through ``formats._io.open_regular``
while confined to the watched root (a link out of it is never followed, a FIFO never blocks), JSON only
through ``jsonfile.read_json`` (bounded), pickles only through the stub unpickler. Nothing here raises
for what a file holds; a fact that cannot be read is absent (None, False), except a pin, which pins even
when it cannot be read: when in doubt, keep.
"""

from __future__ import annotations

import glob
import math
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ckptwatch import pointer
from ckptwatch.config.retention import RetentionConfig
from ckptwatch.formats._io import confined_to, open_regular
from ckptwatch.formats.jsonfile import read_json
from ckptwatch.formats.pickle_stub import get
from ckptwatch.formats.torchzip import check_torch_file, read_scalar
from ckptwatch.layouts.deepspeed import read_pointers
from ckptwatch.layouts.lightning import LAST, Lightning
from ckptwatch.layouts.megatron import read_tracker
from ckptwatch.layouts.nemo import Nemo
from ckptwatch.losswatch.parse import parse_log_history
from ckptwatch.model import RunReport, Verdict
from ckptwatch.resume import blocking_hazards
from ckptwatch.retention.model import Candidate
from ckptwatch.scan import PIN_NAME, inside, list_dir

PIN_MAX_CHARS = 200  # of the pin's text, after escaping: a reason line, not a document
PIN_READ_BYTES = 4096  # enough for 200 characters of any UTF-8 text, escaped or not
UNREADABLE_PIN = "(unreadable .ckptwatch-keep)"  # ``pinned`` of a pin that exists but cannot be read
TRAINER_STATE = "trainer_state.json"
LIGHTNING, NEMO = Lightning.name, Nemo.name  # the layouts whose own files name a last or best checkpoint

# Names the pointers go by in reasons ("named by DeepSpeed latest"): the words users know.
DEEPSPEED_NAMES = {"latest": "DeepSpeed latest", "latest_universal": "DeepSpeed latest_universal"}
MEGATRON_TRACKER = "Megatron tracker"
LIGHTNING_LAST = "Lightning last.ckpt"
NEMO_LAST = "NeMo -last"
CKPTWATCH_LATEST = "ckptwatch-latest"
SYMLINK = "symlink {name}"  # a link beside the checkpoints resolving to one (checkpoint-8 -> checkpoint-2)

# ``name=value`` in a Lightning ``ModelCheckpoint`` file name (``epoch=3-step=400-val_loss=0.31.ckpt``) or
# a NeMo checkpoint dir (``megatron_gpt--val_loss=1.23-step=100-consumed_samples=800``). A value is a
# decimal number (sign, exponent) or nan/inf; the name may hold ``/``-free metric characters.
_NAME_VALUE = re.compile(r"(?:^|(?<=[-_ ]))([A-Za-z][\w.]*)=([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
                         r"|[-+]?(?:nan|inf))(?=$|[-_ ])", re.IGNORECASE)


def candidates_of(report: RunReport, policy: RetentionConfig, *, root: str,
                  mirrored: Callable[[str], bool] | None = None) -> list[Candidate]:
    """One ``Candidate`` per checkpoint verdict of ``report``, in the report's order.

    ``root`` is the watched root: nothing outside its real path is read, and a checkpoint that lies
    outside it (or is a symlink) is ``unsafe_path``. ``mirrored`` is None when no mirror is configured;
    otherwise it answers, per checkpoint path, "has a committed, verified copy".
    """
    verdicts = report.checkpoints
    with confined_to(root):
        pointed = pointers_naming(report)
        best = best_paths(verdicts)
        metric = policy.metric if policy.keep_best is not None else None  # only keep_best reads one
        metrics = metrics_of(verdicts, metric) if metric else {}
        return [
            Candidate(
                path=v.path,
                step=v.step,
                status=v.status,
                mtime=v.newest_mtime,
                bytes=v.bytes,
                metric=metrics.get(v.path),
                pinned=pin_of(v.path),
                pointed_by=tuple(pointed.get(_key(v.path), ())),
                best=_key(v.path) in best,
                unsafe_path=unsafe_path(v.path, root),
                mirrored=None if mirrored is None else bool(mirrored(v.path)),
                blocks_resume=bool(blocking_hazards(v)),
            )
            for v in verdicts
        ]


def _key(path: str) -> str:
    """How two spellings of one checkpoint path compare (``a/b/`` and ``a//b`` are ``a/b``)."""
    return os.path.normpath(path)


def _basename(path: str) -> str:
    """The last component of a path written here or on another machine (``/`` or ``\\``, trailing ones)."""
    return re.split(r"[/\\]", path.rstrip("/\\"))[-1]


def _newest_first(verdicts: Iterable[Verdict]) -> list[Verdict]:
    return sorted(verdicts, key=lambda v: (v.step is not None, v.step or 0, v.newest_mtime), reverse=True)


# ---------------------------------------------------------------------------------------------------
# unsafe paths


def unsafe_path(path: str, root: str) -> bool:
    """A checkpoint that is itself a symlink, or whose real path is outside the real path of ``root``.

    Deleting through a link deletes (or renames) something other than what was judged; a path that
    leads out of the root is someone else's data. For a checkpoint that is a set of per-rank files (a
    MindSpore glob pattern), every file it covers is checked.
    """
    members = _members(path)
    if not members:
        return os.path.islink(path) or not inside(path, root)
    return any(os.path.islink(m) or not inside(m, root) for m in members)


def _members(path: str) -> list[str]:
    """The files a glob-pattern checkpoint path covers (MindSpore: ``rank_*/net_rank_*-1_100.ckpt``)."""
    if os.path.lexists(path) or not glob.has_magic(path):
        return []
    return sorted(glob.glob(path))


# ---------------------------------------------------------------------------------------------------
# pins


def pin_paths(path: str) -> list[str]:
    """Where a ``.ckptwatch-keep`` pinning the checkpoint at ``path`` lives.

    Inside a checkpoint dir; beside a checkpoint file, as ``<file name>.ckptwatch-keep`` (Lightning's
    ``epoch=3-step=400.ckpt.ckptwatch-keep``); beside any rank's file of a per-rank set (MindSpore).
    """
    members = _members(path)
    if members:
        return sorted(glob.glob(path + PIN_NAME))
    if os.path.isdir(path):
        return [os.path.join(path, PIN_NAME)]
    return [path + PIN_NAME]


def pin_of(path: str) -> str | None:
    """The text of the checkpoint's pin (see ``pin_text``), ``UNREADABLE_PIN``, or None when unpinned.

    Any entry named ``.ckptwatch-keep`` pins, whatever it is: a FIFO, a directory, a dangling link or a
    link out of the root pins just as a file does, and its text is never read (``open_regular``).
    """
    for pin in pin_paths(path):
        text = read_pin(pin)
        if text is not None:
            return text
    return None


def read_pin(pin: str) -> str | None:
    """The text of the pin file ``pin``; ``UNREADABLE_PIN`` when it exists but cannot be read; None
    when there is no such entry."""
    try:
        os.lstat(pin)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return UNREADABLE_PIN  # e.g. a parent we may not search: something is there, or may be
    try:
        fd = open_regular(pin)
        with os.fdopen(fd, "rb") as f:
            raw = f.read(PIN_READ_BYTES)
    except OSError:
        return UNREADABLE_PIN
    return pin_text(raw)


def pin_text(raw: bytes) -> str:
    """A pin file's bytes as a reason: UTF-8 (bad bytes replaced), stripped, control and format
    characters escaped (``\\x1b``, ``\\n``, ``\\u202e``), at most ``PIN_MAX_CHARS`` characters.

    Anyone who can write in the root can write a pin, and its text ends up in terminals, logs and alerts.
    """
    text = raw.decode("utf-8", "replace").strip()
    shown = "".join(_escape(ch) for ch in text)
    if len(shown) > PIN_MAX_CHARS:
        shown = shown[: PIN_MAX_CHARS - 3] + "..."
    return shown


def _escape(ch: str) -> str:
    if unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp"):
        return ch
    if ch in "\n\t\r":
        return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# ---------------------------------------------------------------------------------------------------
# framework pointers


def pointers_naming(report: RunReport) -> dict[str, list[str]]:
    """{normalised checkpoint path: the pointers that name it}, for every pointer the run has.

    DeepSpeed ``latest`` (and ``latest_universal``) names a tag dir; Megatron's tracker an iteration
    (``iter_0000500``); Lightning's ``last.ckpt`` is a symlink or hard link to a step checkpoint, or a
    copy that is itself what ``ckpt_path="last"`` resumes; NeMo's ``-last`` checkpoint is what NeMo
    resumes; ``ckptwatch-latest`` (link and JSON) is ours; any other symlink in the run dir or beside the
    checkpoints that resolves to a checkpoint names it (``symlink_names``). A pointer naming nothing judged
    names nothing.
    """
    by_key = {_key(v.path): v for v in report.checkpoints}
    found: dict[str, list[str]] = {}

    def add(path: str, name: str) -> None:
        k = _key(path)
        if k in by_key and name not in found.setdefault(k, []):
            found[k].append(name)

    root = report.root
    for ptr, tag, _problem in read_pointers(root):
        if tag is not None:
            add(os.path.join(root, tag), DEEPSPEED_NAMES.get(os.path.basename(ptr), "DeepSpeed latest"))
    iteration, _problem = read_tracker(root)
    if iteration is not None:
        add(os.path.join(root, f"iter_{iteration:07d}"), MEGATRON_TRACKER)
    for path in _lightning_last(report.checkpoints, root):
        add(path, LIGHTNING_LAST)
    for v in report.checkpoints:
        name = _basename(v.path)
        if v.layout == NEMO and (name.endswith("-last") or name.endswith("-last.ckpt")):
            add(v.path, NEMO_LAST)
    for path in _ckptwatch_latest(root, by_key):
        add(path, CKPTWATCH_LATEST)
    for path, link_name in symlink_names(report.checkpoints, root):
        add(path, SYMLINK.format(name=link_name))
    return found


def symlink_names(verdicts: Sequence[Verdict], root: str) -> list[tuple[str, str]]:
    """(checkpoint path, link name) for each symlink in ``root`` or in a dir holding checkpoints whose
    real path is a judged checkpoint's, other than the links named above (Lightning's ``last*.ckpt``,
    ``ckptwatch-latest``) and a checkpoint path that is itself a link (``unsafe_path``).

    Why a pointer: a framework's resume scan follows it (the Trainer's ``get_last_checkpoint`` takes
    ``checkpoint-8 -> checkpoint-2`` for step 8, it checks ``os.path.isdir``), and whoever made it meant
    the target. Deleting the target leaves a dangling link, which ``once`` then reports.
    """
    real = {os.path.realpath(v.path): v.path for v in verdicts}
    own = {_key(v.path) for v in verdicts}
    dirs = {root} | {os.path.dirname(v.path) for v in verdicts}
    named: list[tuple[str, str]] = []
    for d in sorted(dirs):
        entries, _ = list_dir(d)
        for e in entries:
            if not e.is_symlink or e.name == pointer.LINK or LAST.search(e.name) or _key(e.path) in own:
                continue
            target = real.get(os.path.realpath(e.path))
            if target is not None:
                named.append((target, e.name))
    return named


def _lightning_last(verdicts: Sequence[Verdict], root: str) -> list[str]:
    """The checkpoints Lightning's ``last*.ckpt`` names, in each dir holding ``.ckpt`` checkpoints.

    A symlink names its target (real paths compared); a hard link names every checkpoint of the same
    inode; a regular ``last.ckpt`` that is a checkpoint of its own (``save_last=True`` writes a copy) is
    what a resume from "last" reads, so it names itself. A copy does not name the step checkpoint it
    copies: deleting that one loses nothing the copy does not hold.
    """
    verdicts = [v for v in verdicts if v.layout == LIGHTNING]
    dirs = {os.path.dirname(v.path) for v in verdicts}
    if not dirs:
        return []
    dirs.add(root)
    real = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for v in verdicts:
        real[os.path.realpath(v.path)] = v.path
        try:
            st = os.stat(v.path, follow_symlinks=False)
        except OSError:
            continue
        inodes.setdefault((st.st_dev, st.st_ino), []).append(v.path)
    named: list[str] = []
    for d in sorted(dirs):
        entries, _ = list_dir(d)
        for e in entries:
            if not LAST.search(e.name):
                continue
            if e.is_symlink:
                target = real.get(os.path.realpath(e.path))
                if target is not None:
                    named.append(target)
                continue
            try:
                st = os.stat(e.path, follow_symlinks=False)
            except OSError:
                continue
            named.extend(inodes.get((st.st_dev, st.st_ino), []))  # itself, and every hard link of it
    return named


def _ckptwatch_latest(root: str, by_key: dict[str, Verdict]) -> list[str]:
    """What our own resume pointer names: the JSON's path, and the ``ckptwatch-latest`` link's target."""
    named = []
    path = pointer.current(root)
    if path is not None:
        named.append(path)
    link = os.path.join(root, pointer.LINK)
    if os.path.islink(link):
        target = os.path.realpath(link)
        named.extend(p for p in by_key if os.path.realpath(p) == target)
    return named


# ---------------------------------------------------------------------------------------------------
# the recorded best


def best_paths(verdicts: Sequence[Verdict]) -> set[str]:
    """Normalised paths of the checkpoints the framework recorded as the run's best.

    The Trainer's ``best_model_checkpoint`` from the newest readable ``trainer_state.json`` (the newest
    record of the run; it names a path written on the training machine, often absolute elsewhere or
    relative, so it is matched by its last component inside this run), and each ``ModelCheckpoint``'s
    ``best_model_path`` from the newest readable Lightning ``.ckpt`` (its pickle, read by the stub).
    """
    by_name: dict[str, list[str]] = {}
    for v in verdicts:
        by_name.setdefault(_basename(v.path), []).append(_key(v.path))
    named: list[str] = []
    hf = hf_best_checkpoint(verdicts)
    if hf is not None:
        named.append(hf)
    named.extend(lightning_best_paths(verdicts))
    return {k for n in named for k in by_name.get(_basename(n), [])}


def trainer_state(path: str) -> dict[str, Any] | None:
    """The parsed ``trainer_state.json`` of the checkpoint dir ``path``, or None (absent, unreadable)."""
    state_path = os.path.join(path, TRAINER_STATE)
    if not os.path.isdir(path) or not os.path.lexists(state_path):
        return None
    value, problem = read_json(state_path)
    return value if problem is None and isinstance(value, dict) else None


def hf_best_checkpoint(verdicts: Sequence[Verdict]) -> str | None:
    """``best_model_checkpoint`` of the newest checkpoint with a readable ``trainer_state.json``."""
    for v in _newest_first(verdicts):
        state = trainer_state(v.path)
        if state is not None:
            best = state.get("best_model_checkpoint")
            return best if isinstance(best, str) and best.strip("/\\") else None
    return None


def lightning_best_paths(verdicts: Sequence[Verdict]) -> list[str]:
    """Every ``ModelCheckpoint`` callback's ``best_model_path`` in the newest readable ``.ckpt``."""
    for v in _newest_first(v for v in verdicts if v.layout == LIGHTNING):
        found = model_checkpoint_states(v.path)
        if found is None:
            continue  # not readable (cut short, not a torch file): the next newest holds the record
        return [best for state in found[0]
                if isinstance(best := get(state, "best_model_path"), str) and best]
    return []


def model_checkpoint_states(path: str) -> tuple[list[Any], str] | None:
    """The ``ModelCheckpoint`` callback states pickled in the Lightning ``.ckpt`` at ``path`` (walked by
    the stub unpickler, never executed) and the zip's top-level folder; None when it cannot be read."""
    fc = check_torch_file(path, read_pickle=True)
    obj = fc.facts.get("object")
    if obj is None:
        return None
    callbacks = get(obj, "callbacks")
    if not isinstance(callbacks, dict):
        return [], ""
    states = [state for name, state in callbacks.items()
              if isinstance(name, str) and name.startswith("ModelCheckpoint")]
    return states, str(fc.facts.get("prefix", ""))


# ---------------------------------------------------------------------------------------------------
# the metric


def metrics_of(verdicts: Sequence[Verdict], metric: str) -> dict[str, float]:
    """{checkpoint path: the value of ``metric`` at that checkpoint}, for those where the run records it.

    From the checkpoint's own ``trainer_state.json`` (``metric_at``), else its own Lightning callback state
    (``lightning_metric``), else its name (Lightning and NeMo write ``name=value`` into checkpoint names
    when asked to; ``metric_in_name``: rounded as the name is).
    """
    out: dict[str, float] = {}
    for v in verdicts:
        value = None
        state = trainer_state(v.path)
        if state is not None:
            step = v.step if v.step is not None else state.get("global_step")
            value = metric_at(state.get("log_history"), metric, step if isinstance(step, int) else None)
        if value is None and v.layout == LIGHTNING:
            value = lightning_metric(v.path, metric)
        if value is None:
            value = metric_in_name(_basename(v.path), metric)
        if value is not None:
            out[v.path] = value
    return out


def metric_names(metric: str) -> tuple[str, ...]:
    """The ``log_history`` keys ``metric`` may be logged under: itself, and ``eval_<metric>`` as the
    Trainer reads ``metric_for_best_model`` (``"accuracy"`` means ``eval_accuracy``). ``"loss"`` is the
    training loss, the key the Trainer's training log entries use."""
    if metric == "loss" or metric.startswith("eval_"):
        return (metric,)
    return (metric, f"eval_{metric}")


def metric_at(history: object, metric: str, step: int | None) -> float | None:
    """The value of ``metric`` in a ``log_history`` at ``step``: the entry logged at that step, else the
    latest one before it (None: no entry at or before it). Without a step, the last entry."""
    for name in metric_names(metric):
        points = [p for p in parse_log_history(history, [name]) if step is None or p.step <= step]
        if points:
            newest = max(p.step for p in points)
            value = [p for p in points if p.step == newest][-1].value
            return None if math.isnan(value) else float(value)
    return None


def lightning_metric(path: str, metric: str) -> float | None:
    """The score of the Lightning ``.ckpt`` at ``path`` by the ``ModelCheckpoint`` that monitors
    ``metric``: its own entry in that callback's ``best_k_models``, read from the file itself.

    Why that entry: the callback adds a top-k file's score to ``best_k_models`` before it saves the file,
    so each top-k file records its own exact score (its ``current_score`` is not updated by a save that
    does not enter the top k, so it can be stale in ``last.ckpt``, which gets no score here).
    """
    found = model_checkpoint_states(path)
    if found is None:
        return None
    states, prefix = found
    own = _basename(path)
    for state in states:
        scores = get(state, "best_k_models")
        if get(state, "monitor") != metric or not isinstance(scores, dict):
            continue
        for named, score in scores.items():
            if not isinstance(named, str) or _basename(named) != own:
                continue
            if isinstance(score, (int, float)) and not isinstance(score, bool):
                value: float | None = float(score)
            else:
                value = read_scalar(path, score, prefix)
            if value is not None and not math.isnan(value):
                return value
    return None


def metric_in_name(name: str, metric: str) -> float | None:
    """The value of ``metric`` written into a checkpoint's name (``epoch=3-step=400-val_loss=0.31.ckpt``)."""
    stem = name[: -len(".ckpt")] if name.endswith(".ckpt") else name
    for m in _NAME_VALUE.finditer(stem):
        if m.group(1) == metric:
            value = float(m.group(2))
            return None if math.isnan(value) else value
    return None
