"""Bring a committed copy back, verifying every hash, and check a copy in place against its manifest.

Both refuse what is not a backup: a copy without its commit marker, one whose marker does not commit
the manifest there, and one whose files differ from the manifest (missing, another size, other bytes).
Every refusal names the file. ``restore`` writes into a new temp dir beside DEST and renames it to
DEST only when every file matched, so DEST is either the whole checkpoint or absent; files get the
source's mtimes back, so the restored checkpoint is settled and judged like the original at once.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ckptwatch.formats._stream import CHUNK, read_ahead
from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror.hashing import new_hasher
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
    """Copy the committed copy at ``prefix`` to the new directory ``dest``, verifying every hash.

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
        os.rename(staging, dest)  # DEST appears whole, or not at all
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)  # our own staging dir, created above
        raise
    return manifest
