"""Mirror one complete checkpoint to a target: one read pass, hashing while copying, committed last.

The order is what makes a copy trustworthy (DESIGN.md invariant 4):

1. Only a ``complete`` checkpoint is copied; one with a blocking resume hazard only with
   ``mirror_hazards`` (``why_not_mirrored``).
2. The data files, then the layout's own completion markers (``.metadata``, ``trainer_state.json``,
   ``commit_success.txt``, ...), so a half-written copy never looks complete to the framework reading it.
   Each file is read once through a page-aligned buffer (perf-baselines section 3: 6x faster than a
   misaligned ``bytearray``), hashed and written in the same pass, fsync'd and renamed into place.
3. Every source file is stat'ed again: a file that changed or vanished during the copy fails it.
4. Verification: ``size`` lists the copy and compares sizes; ``full`` re-reads and re-hashes every file.
5. The manifest, then the commit marker, last.

A copy interrupted anywhere (kill -9 included) is resumed file by file: the journal names the files
already in place with their hashes, and a file is skipped only while its source is unchanged (size,
mtime, ctime, inode) and the copy's file has its size. Temp leftovers and files the source no longer
has are removed from the uncommitted copy. A committed copy is never written again: a source whose
files still have the stamps (size, mtime, ctime, inode) in its manifest is ``up_to_date`` without a
read; one whose stamps moved is re-hashed, and is ``up_to_date`` when its bytes are the same and a
``conflict`` when they differ, and nothing is written.

Three kinds of checkpoint are copied (``checkpoint_kind``), each to its own dir ``<to>/<run>/<name>/``
(``copy_name``) holding the manifest and the marker beside the files:

- a checkpoint directory (``dir``): ``<name>`` is the directory's name, the files keep their paths
  inside it (manifest version 1, as before).
- one file (``file``: a Lightning ``.ckpt``, a plain ``torch.save`` or safetensors file): ``<name>`` is
  the file's name, and the file sits in the copy at its path relative to the run root (usually just its
  name), so ``restore`` gives back the file itself.
- a per-rank set of files (``files``: MindSpore ``rank_*/net_rank_*-1_5.ckpt``, NVRx
  ``*/iter_0000100_*_local.pt``; ``Verdict.path`` is a pattern with ``*`` for the rank): ``<name>`` is the
  pattern's last part with ``*`` spelled ``all`` (``net_rank_all-1_5.ckpt``, ``iter_0000100_all_local.pt``:
  no ``*`` for a shell to expand, one name per (step, prefix) as the layout has one checkpoint per
  pattern), and every rank's file sits at its path relative to the run root (``rank_0/net_rank_0-1_5.ckpt``),
  so a restore gives back the ``rank_N/`` tree the framework resumes from.

Names are stable (the same checkpoint always maps to the same copy) and cannot collide within a run: a
run has one layout, and a layout has one checkpoint per directory, file or pattern name.

Run-level pointers (DeepSpeed's ``latest``, Megatron's ``latest_checkpointed_iteration.txt``, a MindSpore
rank's ``meta.json``) live beside the checkpoints, not in them: ``mirror.pointers`` records them per run,
each only once the copy of the checkpoint it names is committed. Two writers of one copy are kept apart
by ``mirror.lock``; the second one fails saying who holds it.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import socket
import threading
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Any, BinaryIO

from ckptwatch.config.mirror import MirrorConfig
from ckptwatch.formats._io import display, open_regular
from ckptwatch.formats._stream import CHUNK, read_ahead
from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror import pointers
from ckptwatch.mirror.hashing import ALGORITHM, new_hasher
from ckptwatch.mirror.lock import CopyBusy, Lease, copy_lock
from ckptwatch.mirror.target import Target, is_temp, join
from ckptwatch.model import RunReport, Status, Verdict
from ckptwatch.resume import blocking_hazards
from ckptwatch.scan import inside, tree

# The layouts' completion markers: written by the frameworks after their data, so copied after ours.
COMPLETION_MARKERS = (".metadata", "trainer_state.json", "latest", "commit_success.txt", "metadata.json",
                      "latest_checkpointed_iteration.txt")
JOURNAL_RATIO = 10  # the journal is rewritten once at least this many times its size was copied since


class MirrorFailed(Exception):
    """This checkpoint could not be copied now (a source or target fault); nothing was committed."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one checkpoint.

    ``result``: ``committed`` (copied and committed now), ``up_to_date`` (a committed copy matches the
    source), ``skipped`` (not to be mirrored: ``reason`` says why), ``conflict`` (the source differs from
    its committed copy; nothing written) or ``failed`` (nothing committed; ``reason`` names the file).
    """

    checkpoint: str
    copy: str
    result: str
    reason: str = ""
    bytes: int = 0
    files: int = 0
    copied: int = 0  # files copied by this call
    resumed: int = 0  # files an interrupted copy had already put in place, verified and kept
    pointers: tuple[str, ...] = ()  # run-level pointers naming this checkpoint, recorded (mirror.pointers)

    def as_json(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "copy": self.copy, "result": self.result,
                "reason": self.reason, "bytes": self.bytes, "files": self.files, "copied": self.copied,
                "resumed": self.resumed, "pointers": list(self.pointers)}


def why_not_mirrored(v: Verdict, *, mirror_hazards: bool = False) -> str | None:
    """Why ``v`` must not be mirrored, or None. Pure."""
    if v.status is not Status.COMPLETE:
        return f"{v.status.value}: only complete checkpoints are mirrored"
    blocking = blocking_hazards(v)
    if blocking and not mirror_hazards:
        kinds = ", ".join(dict.fromkeys(h.kind for h in blocking))
        return f"complete, but {kinds} would make a resume load the wrong weights (mirror_hazards = true " \
               "mirrors it anyway)"
    if checkpoint_kind(v.path) is None:
        return f"{display(v.path)} is no longer a directory, a file or a per-rank set of files: nothing " \
               "to copy"
    return None


def checkpoint_kind(path: str) -> str | None:
    """``dir``, ``file`` or ``files`` (a per-rank set: a pattern with ``*``), or None when ``path`` is none
    of them now (gone, or a FIFO where the file was)."""
    if "*" in path:
        return "files"
    if os.path.isdir(path):
        return "dir"
    if os.path.isfile(path):
        return "file"
    return None


def run_name(run_root: str, runs_under: str = "") -> str:
    """The run's part of its copies' names: its path below ``runs_under`` (the watched root, or the PATH
    given to ``ckptwatch mirror``), so two runs of one name never share copies (every Lightning run's
    dir is ``.../version_N/checkpoints``); the run dir's own name when it is ``runs_under`` itself, or
    without one."""
    run = os.path.normpath(run_root)
    if runs_under:
        base = os.path.normpath(runs_under)
        if run.startswith(base.rstrip(os.sep) + os.sep):
            return os.path.relpath(run, base).replace(os.sep, "/")
    return os.path.basename(run)


def copy_name(run_root: str, checkpoint: str, runs_under: str = "") -> str:
    """``<run>/<name>``: where the copy of ``checkpoint`` lives under the target (module docstring)."""
    name = os.path.basename(os.path.normpath(checkpoint))
    return join(run_name(run_root, runs_under), name.replace("*", "all"))


def run_path(run_root: str, checkpoint: str) -> str:
    """The checkpoint's path relative to its run root, ``/``-separated (``*`` kept in a pattern)."""
    return os.path.relpath(checkpoint, run_root).replace(os.sep, "/")


def members(pattern: str) -> list[str]:
    """The files a per-rank set's pattern covers now (only ``*`` is a wildcard; ``[`` in a name is not)."""
    return sorted(glob.glob("*".join(glob.escape(part) for part in pattern.split("*"))))


def upload_order(paths: list[str]) -> list[str]:
    """Data files first (in path order), then the completion markers in ``COMPLETION_MARKERS`` order."""
    rank = {name: i for i, name in enumerate(COMPLETION_MARKERS)}

    def key(p: str) -> tuple[int, int, str]:
        name = p.rsplit("/", 1)[-1]
        return (1, rank[name], p) if name in rank else (0, 0, p)

    return sorted(paths, key=key)


@dataclass(frozen=True)
class _Source:
    rel: str
    path: str


@dataclass(frozen=True)
class _Copied:
    rel: str
    entry: mf.JournalEntry


def source_files(v: Verdict, run_root: str) -> list[_Source]:
    """The checkpoint's files (``scan.tree``: regular files, no link out of the run, no pins), each with
    its path in the copy: relative to the checkpoint for a directory, to the run root otherwise."""
    kind = checkpoint_kind(v.path)
    paths = members(v.path) if kind == "files" else [v.path]
    if kind == "files" and not paths:
        raise MirrorFailed(f"{display(v.path)}: no file matches it any more (deleted since it was judged)")
    out = []
    for path in paths:
        if kind != "dir" and not inside(path, run_root):
            raise MirrorFailed(f"{display(path)} leads out of the run {display(run_root)} (a symlink); "
                               "it is not copied")
        out.extend(_listed(path, run_root, v.path if kind == "dir" else run_root))
    return out


def _listed(path: str, run_root: str, base: str) -> list[_Source]:
    listing = tree(path, run_root)
    if listing.problems:
        p = listing.problems[0]
        raise MirrorFailed(f"{p.file}: {p.message}")
    out = []
    for e in listing.files:
        rel = os.path.relpath(e.path, base).replace(os.sep, "/")
        if rel.rsplit("/", 1)[-1].startswith(mf.PREFIX):
            continue  # a checkpoint restored from a copy may still hold our names; they are not its files
        out.append(_Source(rel, e.path))
    return out


def _chunks(f: BinaryIO | int,
            on_read: Callable[[memoryview], None] | None = None) -> Generator[memoryview, None, None]:
    """Views of the whole of ``f`` (an fd or a reader with ``readinto``), the next read in flight while
    the caller uses the current view (``_stream.read_ahead``); ``on_read`` runs on each in the reader."""
    readinto: Callable[[memoryview], int] = (lambda v: os.readv(f, [v])) if isinstance(f, int) \
        else f.readinto  # type: ignore[assignment]
    return read_ahead(readinto, on_read=on_read, size=CHUNK)


def hash_source(path: str, algorithm: str) -> tuple[str, int]:
    """(hash, bytes) of a source file, read once through aligned buffers, reading ahead while hashing."""
    h = new_hasher(algorithm)
    fd = open_regular(path)
    total = 0
    try:
        with closing(_chunks(fd)) as chunks:  # the reader is done with fd before it is closed
            for chunk in chunks:
                h.update(chunk)
                total += len(chunk)
    finally:
        os.close(fd)
    return h.hexdigest(), total


def hash_copy(target: Target, name: str, algorithm: str) -> tuple[str, int]:
    """(hash, bytes) of a file of a copy, read once, reading ahead while hashing."""
    h = new_hasher(algorithm)
    total = 0
    with target.open_read(name) as f, closing(_chunks(f)) as chunks:
        for chunk in chunks:
            h.update(chunk)
            total += len(chunk)
    return h.hexdigest(), total


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    """What says a source file is unchanged without reading it: size, mtime, ctime, inode."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _same_file(st: os.stat_result, e: mf.JournalEntry) -> bool:
    return _stamp(st) == e.stamp()


def copy_file(src: _Source, target: Target, name: str, algorithm: str) -> mf.JournalEntry:
    """Copy one file in one read pass, hashing while copying; the copy appears whole or not at all.

    A reader thread reads and hashes the next chunk while this one writes the current one (``_chunks``),
    so the read, the hash and the write overlap; the hash still covers exactly the bytes written, in
    order. A failed write stops the reader and aborts the upload: nothing is committed."""
    try:
        fd = open_regular(src.path)
    except OSError as exc:
        raise MirrorFailed(f"{display(src.path)}: cannot be read ({exc.strerror or exc})") from None
    upload = None
    try:
        before = os.fstat(fd)
        upload = target.open_write(name)
        h, total = new_hasher(algorithm), 0
        with closing(_chunks(fd, h.update)) as chunks:  # the reader stops before fd is closed
            for chunk in chunks:
                upload.write(chunk)
                total += len(chunk)
        after = os.fstat(fd)
        moved = _stamp(after) != _stamp(before)
        if total != before.st_size or moved:
            raise MirrorFailed(f"{display(src.path)} changed while it was copied ({before.st_size} bytes "
                               f"when opened, {total} read); the copy is retried once it settles")
        upload.commit(before.st_mtime_ns)
        upload = None
        return mf.JournalEntry(h.hexdigest(), total, before.st_mtime_ns, before.st_ino, before.st_ctime_ns)
    except OSError as exc:
        where = exc.filename if exc.filename else target.describe(name)
        raise MirrorFailed(f"{display(str(where))}: {exc.strerror or exc} while copying "
                           f"{display(src.path)}") from None
    finally:
        if upload is not None:
            upload.abort()
        os.close(fd)


def _conflict_or_current(v: Verdict, files: list[_Source], state: mf.CopyState, where: str) -> Outcome:
    """A committed copy exists: is the source still what it holds? Nothing is written either way."""
    manifest = state.manifest
    assert manifest is not None
    listed = {f.path: f for f in manifest.files}
    if set(listed) != {s.rel for s in files}:
        extra = sorted({s.rel for s in files} - set(listed))
        gone = sorted(set(listed) - {s.rel for s in files})
        base = v.path if manifest.kind == "dir" else os.path.dirname(v.path.split("*", 1)[0].rstrip("/"))
        what = f"{base}/{extra[0]} is not in it" if extra else f"{base}/{gone[0]} is gone from the source"
        return Outcome(v.path, where, "conflict", f"the source differs from its committed copy: {what}; "
                       "nothing was written (move the copy aside to mirror the new checkpoint)")
    for s in files:
        entry = listed[s.rel]
        try:
            st = os.stat(s.path)
        except OSError as exc:
            return Outcome(v.path, where, "failed", f"{display(s.path)}: {exc.strerror or exc}")
        if _stamp(st) == (entry.size, entry.mtime_ns, entry.ctime_ns, entry.ino):
            continue  # unchanged since the copy, without reading it
        try:
            digest, size = hash_source(s.path, manifest.algorithm)
        except OSError as exc:
            return Outcome(v.path, where, "failed", f"{display(s.path)}: {exc.strerror or exc}")
        if (digest, size) != (entry.hash, entry.size):
            return Outcome(v.path, where, "conflict", f"{display(s.path)} differs from its committed copy "
                           f"({size} bytes against {entry.size}, or different bytes); nothing was written "
                           "(move the copy aside to mirror the new checkpoint)")
    return Outcome(v.path, where, "up_to_date", "", manifest.bytes, len(manifest.files))


def _tidy(target: Target, prefix: str, host: str) -> None:
    """A kill after the commit marker can leave the journal, a temp file or the lock of ours: remove
    those names (never a file the manifest lists; the lock only by taking it, which removes it)."""
    present = target.list(prefix)
    for name in present:
        if is_temp(name) or name == mf.JOURNAL_NAME:
            target.remove(join(prefix, name))
    if mf.LOCK_NAME in present:
        try:
            with copy_lock(target, prefix, host=host):
                pass
        except CopyBusy:
            pass  # someone holds it now (and finds the copy committed): it is theirs to remove


def mirror_checkpoint(v: Verdict, run_root: str, target: Target, config: MirrorConfig, *, now: float,
                      host: str | None = None, progress: Callable[[str], None] | None = None) -> Outcome:
    """Mirror ``v`` (a checkpoint of the run at ``run_root``) to ``target``; never raises for a fault."""
    prefix = copy_name(run_root, v.path, config.runs_under)
    where = target.describe(prefix)
    reason = why_not_mirrored(v, mirror_hazards=config.mirror_hazards)
    if reason:
        return Outcome(v.path, where, "skipped", reason)
    host = host or socket.gethostname()
    outcome = _mirror(v, run_root, target, config, prefix, where, now=now, host=host, progress=progress)
    if outcome.result not in ("committed", "up_to_date"):
        return outcome
    try:  # only now: the copy these pointers name is committed
        recorded = pointers.record(target, run_root, v.path, prefix, host=host)
    except (OSError, mf.ManifestError, CopyBusy) as exc:
        what = f"{display(str(exc.filename))}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename \
            else str(exc)
        return dataclasses.replace(outcome, reason=f"the run's pointers naming it were not recorded "
                                   f"({what}); the next pass records them")
    return dataclasses.replace(outcome, pointers=tuple(recorded))


def _mirror(v: Verdict, run_root: str, target: Target, config: MirrorConfig, prefix: str, where: str, *,
            now: float, host: str, progress: Callable[[str], None] | None) -> Outcome:
    try:
        files = source_files(v, run_root)
        state = mf.copy_state(target, prefix)
        if state.state not in ("committed", "broken"):
            with copy_lock(target, prefix, host=host) as lease:  # CopyBusy: another writer has it
                state = mf.copy_state(target, prefix)  # it may have committed while we looked
                if state.state not in ("committed", "broken"):
                    return _copy(v, run_root, files, target, prefix, config, now=now, host=host,
                                 progress=progress, lease=lease)
        if state.state == "committed":
            outcome = _conflict_or_current(v, files, state, where)
            if outcome.result == "up_to_date":
                _tidy(target, prefix, host)
            return outcome
        return Outcome(v.path, where, "conflict", f"{state.reason}; it is no backup and is left as it "
                       "is: move it aside to mirror again")
    except CopyBusy as exc:
        return Outcome(v.path, where, "failed", str(exc))
    except MirrorFailed as exc:
        return Outcome(v.path, where, "failed", str(exc))
    except (OSError, mf.ManifestError) as exc:
        if isinstance(exc, OSError):
            # a write through a descriptor (a file's bytes, the lock's lease) fails without a file name: the
            # copy being written is where
            what = f"{display(str(exc.filename or where))}: {exc.strerror or exc}"
        else:
            what = str(exc)
        return Outcome(v.path, where, "failed", what)


def _copy(v: Verdict, run_root: str, files: list[_Source], target: Target, prefix: str,
          config: MirrorConfig, *, now: float, host: str, progress: Callable[[str], None] | None,
          lease: Lease) -> Outcome:
    algorithm = ALGORITHM
    journal = mf.read_journal(target, prefix, algorithm, v.path)
    present = target.list(prefix)
    wanted = {s.rel for s in files}
    for name in present:  # temp leftovers of a killed copy, and files the source no longer has
        if is_temp(name) or (name not in wanted and name not in mf.OURS):
            target.remove(join(prefix, name))
    done: dict[str, mf.JournalEntry] = {}
    resumed = 0
    for s in files:
        entry = journal.get(s.rel)
        if entry is None or present.get(s.rel) != entry.size:
            continue
        try:
            st = os.stat(s.path)
        except OSError:
            continue
        if _same_file(st, entry):
            done[s.rel] = entry
            resumed += 1
    todo = [s for s in files if s.rel not in done]
    by_rel = {s.rel: s for s in todo}
    order = upload_order(list(by_rel))
    data = [by_rel[r] for r in order if r.rsplit("/", 1)[-1] not in COMPLETION_MARKERS]
    markers = [by_rel[r] for r in order if r.rsplit("/", 1)[-1] in COMPLETION_MARKERS]
    for s in markers:  # a marker an earlier attempt put there must not vouch for data being replaced
        if s.rel in present:
            target.remove(join(prefix, s.rel))
    lock = threading.Lock()
    since_journal = [0]

    def record(c: _Copied) -> None:
        with lock:
            done[c.rel] = c.entry
            since_journal[0] += c.entry.size
            size = 100 * len(done)
            if since_journal[0] >= JOURNAL_RATIO * size:
                mf.put(target, join(prefix, mf.JOURNAL_NAME), mf.journal_bytes(algorithm, v.path, done))
                lease.renew()
                since_journal[0] = 0
        if progress:
            progress(c.rel)

    def one(s: _Source) -> _Copied:
        return _Copied(s.rel, copy_file(s, target, join(prefix, s.rel), algorithm))

    if config.parallel > 1 and len(data) > 1:
        with ThreadPoolExecutor(config.parallel, thread_name_prefix="ckptwatch-mirror") as pool:
            for c in pool.map(one, data):
                record(c)
    else:
        for s in data:
            record(one(s))
    for s in markers:
        record(one(s))
    _check_source_unchanged(files, done)
    _verify_before_commit(target, prefix, files, done, algorithm, full=config.verify == "full")
    manifest = mf.Manifest(
        algorithm=algorithm,
        files=tuple(mf.FileEntry(s.rel, e.size, e.hash, e.mtime_ns, e.ctime_ns, e.ino)
                    for s in files for e in (done[s.rel],)),
        verdict=v.status.value, layout=v.layout, step=v.step,
        run=run_name(run_root, config.runs_under),
        checkpoint=prefix.rsplit("/", 1)[-1],
        source_host=host, source_path=v.path, created=now, **_kind_fields(v, run_root))
    mf.commit(target, prefix, manifest)
    target.remove(join(prefix, mf.JOURNAL_NAME))
    return Outcome(v.path, target.describe(prefix), "committed", "", manifest.bytes, len(files),
                   len(todo), resumed)


def _kind_fields(v: Verdict, run_root: str) -> dict[str, Any]:
    """The manifest's version, kind and run path: version 1 (no kind) for a directory, as before."""
    kind = checkpoint_kind(v.path) or "dir"
    if kind == "dir":
        return {}
    return {"version": mf.KINDS[kind], "kind": kind, "run_path": run_path(run_root, v.path)}


def _check_source_unchanged(files: list[_Source], done: dict[str, mf.JournalEntry]) -> None:
    for s in files:
        try:
            st = os.stat(s.path)
        except OSError as exc:
            raise MirrorFailed(f"{display(s.path)} vanished or became unreadable during the copy "
                               f"({exc.strerror or exc}); nothing was committed") from None
        if not _same_file(st, done[s.rel]):
            raise MirrorFailed(f"{display(s.path)} changed during the copy; nothing was committed (the copy "
                               "is resumed once the checkpoint settles again)")


def _verify_before_commit(target: Target, prefix: str, files: list[_Source], done: dict[str, mf.JournalEntry],
                          algorithm: str, *, full: bool) -> None:
    present = target.list(prefix)
    for s in files:
        name, entry = join(prefix, s.rel), done[s.rel]
        if present.get(s.rel) != entry.size:
            raise MirrorFailed(f"{target.describe(name)}: {present.get(s.rel, 'no')} bytes in the copy, "
                               f"{entry.size} expected; nothing was committed")
        if full:
            digest, size = hash_copy(target, name, algorithm)
            if (digest, size) != (entry.hash, entry.size):
                raise MirrorFailed(f"{target.describe(name)}: the copy's bytes differ from the source's "
                                   "(re-read after writing); nothing was committed")


def mirror_run(run: RunReport, target: Target, config: MirrorConfig, *, now: float,
               progress: Callable[[str], None] | None = None) -> list[Outcome]:
    """Mirror every checkpoint of ``run``, newest first (the one a resume needs most is safe soonest)."""
    return [mirror_checkpoint(v, run.root, target, config, now=now, progress=progress)
            for v in reversed(run.checkpoints)]
