"""Bring a committed copy back, verifying every hash, and check a copy in place against its manifest.

Both refuse what is not a backup: a copy without its commit marker, one whose marker does not commit
the manifest there, and one whose files differ from the manifest (missing, another size, other bytes).
Every refusal names the file. ``restore`` writes into a new temp dir beside DEST and renames it to
DEST only when every file matched, so DEST is either the whole checkpoint or absent; files get the
source's mtimes back, so the restored checkpoint is settled and judged like the original at once.

What DEST becomes follows the copy's kind (manifest ``kind``), so a framework loads it as it is:

- a checkpoint directory: DEST is that directory (``DEST/model.safetensors``, ...).
- one file (a Lightning ``.ckpt``, a ``torch.save`` file): DEST is the file itself (put in place with
  ``link``, which refuses an existing name, then the staging dir is removed).
- a per-rank set: DEST is a run directory holding each rank's file at its path in the run
  (``DEST/rank_0/net_rank_0-1_5.ckpt``, ...; NVRx ``DEST/0/iter_0000100_0_local.pt``).

``restore_run`` brings back a whole run copy (``<to>/<run>``): every committed copy below it at its
place in the run, then the run's pointers that name a restored checkpoint (``mirror.pointers``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ckptwatch.formats._stream import CHUNK, read_ahead
from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror import pointer_record as pointers
from ckptwatch.mirror.hashing import digest_of, new_hasher
from ckptwatch.mirror.target import TEMP_MARK, LocalTarget, Target, is_temp, join

# Files restored at once. Each file's fsync waits for its writeback; with two files in flight one is
# copied while the other is flushed, so the disk is never idle (as with ``MirrorConfig.parallel``'s 2).
RESTORE_PARALLEL = 2


@dataclass(frozen=True)
class CopyFinding:
    """One thing wrong with a copy. ``kind``: not_committed | broken | missing | size | hash | unexpected."""

    kind: str
    file: str
    message: str


class RestoreRefused(Exception):
    """The copy is no backup, or DEST is unusable; nothing was left at DEST. ``findings`` say why."""

    def __init__(self, findings: list[CopyFinding]) -> None:
        super().__init__("; ".join(f.message for f in findings[:3]))
        self.findings = findings


def committed(target: Target, prefix: str) -> tuple[mf.Manifest | None, list[CopyFinding]]:
    """The copy's committed manifest, or the finding that says it has none."""
    state = mf.copy_state(target, prefix)
    if state.state == "committed":
        return state.manifest, []
    marker = target.describe(join(prefix, mf.MARKER_NAME))
    if state.state == "broken":
        return None, [CopyFinding("broken", marker, f"{state.reason}: not a backup")]
    return None, [CopyFinding("not_committed", marker, f"{state.reason}; it is not a backup")]


def _hash_stream(f: object, algorithm: str, sink: Any = None) -> tuple[str, int]:
    """(hash, bytes) of the reader ``f``, each chunk also written to ``sink`` (an ``Upload``) when given.

    The next chunk is read ahead in a reader thread (``_stream.read_ahead``); with a sink, that thread
    also hashes, so this one only writes: read, hash and write overlap, and the hash is still of the
    bytes written, in order."""
    h = new_hasher(algorithm)
    total = 0
    reader = read_ahead(f.readinto, on_read=h.update if sink is not None else None,  # type: ignore[attr-defined]
                        size=CHUNK)
    with contextlib.closing(reader) as chunks:  # the reader thread is done before ``f`` is closed
        for chunk in chunks:
            if sink is None:
                h.update(chunk)
            else:
                sink.write(chunk)
            total += len(chunk)
    return h.hexdigest(), total


def _check_file(target: Target, prefix: str, entry: mf.FileEntry, algorithm: str,
                sink: Any = None) -> CopyFinding | None:
    name = join(prefix, entry.path)
    where = target.describe(name)
    try:
        with target.open_read(name) as f:
            digest, size = _hash_stream(f, algorithm, sink)
    except FileNotFoundError:
        return CopyFinding("missing", where, f"{where} is missing from the copy")
    except OSError as exc:
        return CopyFinding("missing", where, f"{where} cannot be read ({exc.strerror or exc})")
    if size != entry.size:
        return CopyFinding("size", where, f"{where} has {size} bytes; the manifest says {entry.size}")
    if digest != entry.hash:
        return CopyFinding("hash", where, f"{where}: its {algorithm} hash differs from the manifest's "
                           "(the bytes changed after the copy was committed)")
    return None


def verify_copy(target: Target, prefix: str = "") -> tuple[mf.Manifest | None, list[CopyFinding]]:
    """Check the copy at ``prefix`` in place: committed, every file present with its size and hash, and
    nothing else in it. Reads every byte once."""
    manifest, findings = committed(target, prefix)
    if manifest is None:
        return None, findings
    present = target.list(prefix)
    for entry in manifest.files:
        if entry.path not in present:
            where = target.describe(join(prefix, entry.path))
            findings.append(CopyFinding("missing", where, f"{where} is missing from the copy"))
        elif present[entry.path] != entry.size:
            where = target.describe(join(prefix, entry.path))
            findings.append(CopyFinding("size", where, f"{where} has {present[entry.path]} bytes; the "
                                        f"manifest says {entry.size}"))
        else:
            found = _check_file(target, prefix, entry, manifest.algorithm)
            if found:
                findings.append(found)
    listed = {e.path for e in manifest.files} | set(mf.OURS)
    for name in sorted(present):
        if name not in listed and not is_temp(name):
            where = target.describe(join(prefix, name))
            findings.append(CopyFinding("unexpected", where, f"{where} is in the copy but not in its "
                                        "manifest (added after the commit)"))
    return manifest, findings


def restore(target: Target, prefix: str, dest: str) -> mf.Manifest:
    """Copy the committed copy at ``prefix`` to ``dest`` (a new directory, or the new file of a single-file
    copy: module docstring), verifying every hash.

    Raises ``RestoreRefused`` (nothing left at ``dest``) when the copy is not committed or any file
    differs from its manifest, or when ``dest`` exists. Missing parents of ``dest`` are created.
    """
    dest = os.path.abspath(dest)
    if os.path.lexists(dest):
        raise RestoreRefused([CopyFinding("dest", dest, f"{dest} already exists; restore writes a new "
                                          "directory (choose another DEST or move it aside)")])
    manifest, findings = committed(target, prefix)
    if manifest is None:
        raise RestoreRefused(findings)
    if manifest.kind == "file" and len(manifest.files) != 1:
        where = target.describe(join(prefix, mf.MANIFEST_NAME))
        raise RestoreRefused([CopyFinding("broken", where, f"{where}: a single-file copy that lists "
                                          f"{len(manifest.files)} files; not a backup ckptwatch made")])
    parent = os.path.dirname(dest)
    try:
        os.makedirs(parent, exist_ok=True)  # DEST's parents, like `mkdir -p`; DEST itself stays new
    except OSError as exc:
        raise RestoreRefused([CopyFinding("dest", parent, f"{parent}: cannot be a directory for DEST "
                                          f"({exc.strerror or exc})")]) from None
    staging = os.path.join(parent, f".{os.path.basename(dest)}{TEMP_MARK}restore-{secrets.token_hex(6)}")
    os.mkdir(staging, 0o755)  # ours: a fresh name; fails rather than reuse anything
    try:
        out = LocalTarget(staging)
        algorithm = manifest.algorithm

        def one(entry: mf.FileEntry) -> None:
            upload = out.open_write(entry.path)
            try:
                found = _check_file(target, prefix, entry, algorithm, upload)
                if found:
                    raise RestoreRefused([found])
                upload.commit(entry.mtime_ns)
            finally:
                upload.abort()  # no-op after commit

        with ThreadPoolExecutor(RESTORE_PARALLEL, thread_name_prefix="ckptwatch-restore") as pool:
            jobs = [pool.submit(one, entry) for entry in manifest.files]
            try:
                for job in jobs:  # the first refusal in manifest order is the one reported
                    job.result()
            except BaseException:
                for job in jobs:
                    job.cancel()  # those not started; the pool's exit waits for the running ones
                raise
        _place(staging, dest, manifest)  # DEST appears whole, or not at all
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)  # our own staging dir, created above
        raise
    return manifest


def _place(staging: str, dest: str, manifest: mf.Manifest) -> None:
    """Make the verified staging dir DEST: the dir itself, or for a single-file copy its one file."""
    if manifest.kind != "file":
        os.rename(staging, dest)
        return
    [entry] = manifest.files  # a single-file copy lists exactly one file (checked by ``restore``)
    path = os.path.join(staging, *entry.path.split("/"))
    try:
        os.link(path, dest)  # refuses an existing DEST, never follows it
    except OSError as exc:
        if exc.errno == errno.EEXIST or os.path.lexists(dest):
            raise
        os.rename(path, dest)  # a filesystem without hard links (some FUSE mounts): DEST was checked absent
    shutil.rmtree(staging)  # our own staging dir; DEST is a second name of its file


@dataclass(frozen=True)
class RunRestored:
    """What ``restore_run`` put at DEST: the copies (dir names) restored, the pointers, what was left out."""

    copies: tuple[str, ...]
    pointers: tuple[str, ...]
    files: int
    bytes: int
    skipped: tuple[CopyFinding, ...]  # copies not committed (a mirror under way, or broken): not restored


def run_copies(target: Target, prefix: str) -> list[str]:
    """The copy dirs directly below ``prefix`` (a run copy ``<to>/<run>``): those holding any of our names."""
    names = set()
    for name in target.list(prefix):
        parts = name.split("/")
        if len(parts) == 2 and parts[1] in mf.OURS:
            names.add(parts[0])
    return sorted(names)


def is_run_copy(target: Target, prefix: str = "") -> bool:
    """Is ``prefix`` a run's dir of copies (no copy itself, copies below it)?"""
    return mf.copy_state(target, prefix).state in ("absent", "partial") and bool(run_copies(target, prefix))


def restore_run(target: Target, prefix: str, dest: str) -> RunRestored:
    """Restore every committed copy below the run copy at ``prefix`` into the new run dir ``dest``, each at
    its place in the run (a directory under its name, a file or a per-rank set at its run-relative paths),
    then the recorded pointers (``mirror.pointers``) that name a restored copy, each checked against its
    hash. Copies without a commit (a mirror under way) are left out and listed; a committed copy whose
    files differ from its manifest refuses the whole restore (``RestoreRefused``: nothing at ``dest``)."""
    dest = os.path.abspath(dest)
    if os.path.lexists(dest):
        raise RestoreRefused([CopyFinding("dest", dest, f"{dest} already exists; restore writes a new "
                                          "directory (choose another DEST or move it aside)")])
    restored: list[str] = []
    skipped: list[CopyFinding] = []
    plan: list[tuple[str, mf.Manifest]] = []
    for name in run_copies(target, prefix):
        manifest, findings = committed(target, join(prefix, name))
        if manifest is None:
            skipped.extend(findings)
        else:
            plan.append((name, manifest))
    if not plan:
        raise RestoreRefused(skipped or [CopyFinding("not_committed", target.describe(prefix),
                                                     f"{target.describe(prefix)} holds no committed copy")])
    try:
        record = pointers.read_record(target, prefix)
    except mf.ManifestError as exc:
        raise RestoreRefused([CopyFinding("broken", target.describe(join(prefix, pointers.RECORD_NAME)),
                                          str(exc))]) from None
    parent = os.path.dirname(dest)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise RestoreRefused([CopyFinding("dest", parent, f"{parent}: cannot be a directory for DEST "
                                          f"({exc.strerror or exc})")]) from None
    staging = os.path.join(parent, f".{os.path.basename(dest)}{TEMP_MARK}restore-{secrets.token_hex(6)}")
    os.mkdir(staging, 0o755)
    files = size = 0
    placed: set[str] = set()
    try:
        out = LocalTarget(staging)
        for name, manifest in plan:
            base = manifest.where_in_run if manifest.kind == "dir" else ""
            for entry in manifest.files:
                path = join(base, entry.path)
                if path in placed:
                    where = target.describe(join(prefix, name, mf.MANIFEST_NAME))
                    raise RestoreRefused([CopyFinding("broken", where, f"{where} lists {path}, which another "
                                                      "copy of the run already holds")])
                placed.add(path)
                upload = out.open_write(path)
                try:
                    found = _check_file(target, join(prefix, name), entry, manifest.algorithm, upload)
                    if found:
                        raise RestoreRefused([found])
                    upload.commit(entry.mtime_ns)
                finally:
                    upload.abort()
                files += 1
                size += entry.size
            restored.append(name)
        put_back = []
        for rel, p in sorted(record.items()):
            if p.copy not in restored or rel in placed:
                continue  # names a copy not restored (never a dangling pointer), or shadows a file
            if digest_of(p.data, p.algorithm) != p.hash:
                where = target.describe(join(prefix, pointers.RECORD_NAME))
                raise RestoreRefused([CopyFinding("hash", where, f"{where}: the bytes recorded for {rel} "
                                                  "differ from their hash (changed after recording)")])
            upload = out.open_write(rel)
            try:
                upload.write(p.data)
                upload.commit(p.mtime_ns)
            finally:
                upload.abort()
            put_back.append(rel)
        os.rename(staging, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)  # our own staging dir, created above
        raise
    return RunRestored(tuple(restored), tuple(put_back), files, size, tuple(skipped))
