"""Run-level pointers: copied only once the checkpoint they name has a committed copy.

A framework resumes from what its pointer names: DeepSpeed's ``latest`` (and ``latest_universal``) holds a
tag dir's name, Megatron's ``latest_checkpointed_iteration.txt`` an iteration (``iter_<7 digits>``), and
each MindSpore rank dir's ``meta.json`` the rank's file of the checkpoint MindFormers resumes
(``last_ckpt_file``). They live beside the checkpoints, not in them, so no checkpoint copy holds them.

Where they go: one record per run on the target, ``<to>/<run>/.ckptwatch-mirror-pointers.json`` (a name of
ours: never judged as a checkpoint), mapping each pointer's path in the run (``latest``,
``rank_0/meta.json``) to its exact bytes (base64), their hash, the source's mtime, and the copy it names.
An entry is written only by the mirror that has just committed (or found up to date) the copy of the
checkpoint the pointer names *in the bytes recorded* (the bytes are read once and judged from that read),
so the record never names a copy that is not committed; a pointer that now names a checkpoint whose copy
is not committed yet keeps its previous entry, which names an older committed copy. Each update is one
whole-object write (temp + rename locally, one PUT on S3) under the run's lock (``mirror.lock`` on
``<to>/<run>``), so two mirrors of one run never lose each other's entries.

How they come back: ``restore <to>/<run> DEST`` (``restore.restore_run``) restores every committed copy
of the run at its place and then each recorded pointer whose copy it restored, so DEST resumes from the
step the source would have (checked against the hash in the record). A restore of one checkpoint's copy
brings no pointer: its DEST is that checkpoint, and a pointer belongs in the run dir around it.
Not pointers here: Lightning's ``last.ckpt`` link (Lightning resumes "last" from the newest ``last*.ckpt``;
a single-file copy of the step file restores the weights), NeMo's ``-last`` checkpoint (a checkpoint of
its own, copied like any other), our own ``ckptwatch-latest`` (the service writes it again).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass

from ckptwatch.formats._io import open_regular_file
from ckptwatch.layouts.deepspeed import POINTERS as DEEPSPEED_POINTERS
from ckptwatch.layouts.megatron import TRACKER
from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror.hashing import ALGORITHM, digest_of
from ckptwatch.mirror.lock import CopyBusy, copy_lock
from ckptwatch.mirror.pointer_record import RECORD_NAME, Entry, read_record, record_bytes
from ckptwatch.mirror.target import Target, join

MAX_POINTER_BYTES = 64 * 1024  # a pointer is a tag, a number or a small JSON; anything bigger is not one
RANK_DIR = re.compile(r"^rank_\d+\Z")
LOCK_TRIES = 20  # the run's lock is held for one small read and write: wait a little rather than skip


@dataclass(frozen=True)
class Pointer:
    """One pointer file of a run, as read once: its path in the run, its bytes and mtime."""

    rel: str
    data: bytes
    mtime_ns: int


def _read(path: str) -> tuple[bytes, int] | None:
    """(bytes, mtime_ns) of a small regular file, not through a link; None when it is not one."""
    try:
        with open_regular_file(path, follow=False) as f:
            data = f.read(MAX_POINTER_BYTES + 1)
            mtime = os.fstat(f.fileno()).st_mtime_ns
    except OSError:
        return None
    return (data, mtime) if len(data) <= MAX_POINTER_BYTES else None


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None


def _pattern(checkpoint: str) -> re.Pattern[str]:
    """A per-rank set's path as a regex (``*``: one name part), other characters literal."""
    return re.compile("[^/]*".join(re.escape(p) for p in checkpoint.split("*")) + r"\Z")


def naming(run_root: str, checkpoint: str) -> list[Pointer]:
    """The run's pointers whose bytes (read once, here) name ``checkpoint`` (a ``Verdict.path``)."""
    want = os.path.normpath(checkpoint)
    out: list[Pointer] = []
    for name in (*DEEPSPEED_POINTERS, TRACKER):
        got = _read(os.path.join(run_root, name))
        text = _text(got[0]) if got else None
        if not got or not text:
            continue
        if name == TRACKER:
            named = os.path.join(run_root, f"iter_{int(text):07d}") if text.isdigit() else None
        else:
            named = os.path.join(run_root, text) if "/" not in text and text not in (".", "..") else None
        if named is not None and os.path.normpath(named) == want:
            out.append(Pointer(name, got[0], got[1]))
    if "*" in checkpoint:
        pattern = _pattern(want)
        try:
            rank_dirs = sorted(n for n in os.listdir(run_root) if RANK_DIR.match(n))
        except OSError:
            rank_dirs = []
        for d in rank_dirs:
            got = _read(os.path.join(run_root, d, "meta.json"))
            if not got:
                continue
            try:
                last = json.loads(got[0]).get("last_ckpt_file")
            except (ValueError, UnicodeDecodeError, AttributeError):
                continue
            if isinstance(last, str) and "/" not in last and \
                    pattern.match(os.path.normpath(os.path.join(run_root, d, last))):
                out.append(Pointer(f"{d}/meta.json", got[0], got[1]))
    return out


def record(target: Target, run_root: str, checkpoint: str, copy_prefix: str, *, host: str) -> list[str]:
    """Record the pointers of ``run_root`` that name ``checkpoint``, whose copy at ``copy_prefix`` is
    committed: call only then. The paths recorded or already current. OSError/ManifestError for a target
    fault; ``CopyBusy`` when the run's lock stays taken (the next pass records them)."""
    found = naming(run_root, checkpoint)
    if not found:
        return []
    run_prefix, copy = copy_prefix.rsplit("/", 1)
    for attempt in range(LOCK_TRIES):
        try:
            with copy_lock(target, run_prefix, host=host):
                entries = read_record(target, run_prefix)
                before = dict(entries)
                for p in found:
                    entries[p.rel] = Entry(copy, p.data, ALGORITHM, digest_of(p.data, ALGORITHM), p.mtime_ns)
                if entries != before:
                    mf.put(target, join(run_prefix, RECORD_NAME), record_bytes(entries))
                return [p.rel for p in found]
        except CopyBusy:
            if attempt == LOCK_TRIES - 1:
                raise
            time.sleep(0.05)
    return []
