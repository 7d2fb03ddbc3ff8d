"""A copy's manifest and its commit marker: the format, its checks, and reading and writing them.

The manifest (``.ckptwatch-mirror.json``, inside the copy) lists every file of the checkpoint: its path
(see below), its size, its hash and the source file's mtime, ctime and inode; and the hash algorithm,
the verdict, the layout, the step, the source host and path, the time of the copy and the format version.

Format versions (a reader takes both; a writer writes the lowest that can say what it copied, so a copy
of a checkpoint directory is byte for byte what earlier ckptwatch wrote and still reads):

- ``1``: a checkpoint directory. File paths are relative to the checkpoint; the copy's dir is named after
  it (``kind`` is ``dir``, ``run_path`` its name).
- ``2``: adds ``kind`` and ``run_path`` (the checkpoint's path relative to its run root). ``kind`` is
  ``file`` (one file: a Lightning ``.ckpt``, a plain ``torch.save`` file) or ``files`` (a per-rank set,
  ``run_path`` the pattern with ``*`` for the rank: ``rank_*/net_rank_*-1_5.ckpt``); file paths are then
  relative to the *run root* (``rank_0/net_rank_0-1_5.ckpt``), so a restore puts each file back where the
  framework looks for it. A reader of version 1 only refuses these copies instead of misplacing files.
The commit marker (``.ckptwatch-mirror-committed``) is written after it and after every file, and holds
the hash of the manifest's exact bytes: a copy is committed only when the marker exists *and* names the
manifest that is there (a manifest swapped or edited after the commit is caught, not trusted). The
marker's bytes follow from the manifest's alone, so two writers committing the same manifest write the
same marker.

The journal (``.ckptwatch-mirror-journal.json``) is the resume state of an uncommitted copy: the files
already copied, each with its hash and the source's size, mtime, inode and ctime at the time. It is a hint:
resume trusts an entry only while the source still matches it and the copy's file has its size, and
``verify = "full"`` re-hashes everything before the marker anyway.

Everything read from a target is untrusted: sizes are bounded, paths are checked (no ``..``, nothing
absolute, none of our own names), and every fault is a ``ManifestError`` saying what and where.
The pure part (format, parse, marker) needs no target; ``read_*``/``write_*`` go through one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ckptwatch.mirror.hashing import ALGORITHM, digest_of, known
from ckptwatch.mirror.target import Target, TargetPathError, check_name, join

PREFIX = ".ckptwatch-mirror"  # every name of ours inside a copy starts with it (scan.MIRROR_PREFIX)
MANIFEST_NAME = PREFIX + ".json"
MARKER_NAME = PREFIX + "-committed"
JOURNAL_NAME = PREFIX + "-journal.json"
LOCK_NAME = PREFIX + "-lock"  # mirror/lock.py: who is writing this copy now
OURS = (MANIFEST_NAME, MARKER_NAME, JOURNAL_NAME, LOCK_NAME)
VERSION = 1  # a checkpoint directory's manifest, the commit marker's and the journal's format
VERSION_RUN_PATHS = 2  # a single file's or a per-rank set's manifest: ``kind``, ``run_path``
KINDS = {"dir": VERSION, "file": VERSION_RUN_PATHS, "files": VERSION_RUN_PATHS}
MAX_MANIFEST_BYTES = 32 << 20  # ~150,000 files; a bigger "manifest" is not one of ours
MAX_MARKER_BYTES = 4096


class ManifestError(Exception):
    """A manifest, marker or journal that is missing, unreadable or not what ckptwatch writes."""


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the checkpoint, "/"-separated
    size: int
    hash: str
    mtime_ns: int  # the source file's, restored with it (a restored checkpoint settles at once)
    # The source file's inode and ctime at the copy: with size and mtime, what says "unchanged" without
    # reading it. A file replaced by one of the same size and mtime (rsync -t, cp -p) has a new ctime.
    ctime_ns: int = 0
    ino: int = 0


@dataclass(frozen=True)
class Manifest:
    algorithm: str
    files: tuple[FileEntry, ...]
    verdict: str
    layout: str
    step: int | None
    run: str  # the run's name: the copy's parent dir under the target
    checkpoint: str  # the checkpoint's name: the copy's dir
    source_host: str
    source_path: str
    created: float  # unix time of the commit
    version: int = VERSION
    kind: str = "dir"  # dir | file | files (a per-rank set); see the module docstring
    run_path: str = ""  # the checkpoint relative to its run root ("" in version 1: ``checkpoint``)

    @property
    def where_in_run(self) -> str:
        """The checkpoint's path relative to its run root (``*`` for the rank of a per-rank set)."""
        return self.run_path or self.checkpoint

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def entry(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    def to_bytes(self) -> bytes:
        doc = {"version": self.version, "algorithm": self.algorithm, "verdict": self.verdict,
               "layout": self.layout, "step": self.step, "run": self.run, "checkpoint": self.checkpoint,
               "source_host": self.source_host, "source_path": self.source_path, "created": self.created,
               "bytes": self.bytes,
               **({"kind": self.kind, "run_path": self.run_path}
                  if self.version >= VERSION_RUN_PATHS else {}),
               "files": [{"path": f.path, "size": f.size, "hash": f.hash, "mtime_ns": f.mtime_ns,
                          "ctime_ns": f.ctime_ns, "ino": f.ino} for f in self.files]}
        return (json.dumps(doc, indent=1, ensure_ascii=True) + "\n").encode("ascii")


def _field(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ManifestError(f"{where}: {key!r} is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def member_path(path: Any, where: str) -> str:
    """A manifest's file path, checked: relative, no ``..``, not one of our own names."""
    if not isinstance(path, str):
        raise ManifestError(f"{where}: a file path is not a string")
    try:
        check_name(path)
    except TargetPathError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    if path in OURS:
        raise ManifestError(f"{where}: lists {path}, a name of ckptwatch's own")
    return path


def parse(data: bytes, where: str) -> Manifest:
    """The manifest in ``data`` (read from ``where``), checked; ``ManifestError`` saying what is wrong."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{where}: not a ckptwatch manifest ({exc})") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: not a ckptwatch manifest (no JSON object)")
    version = _field(doc, "version", int, where)
    if version not in (VERSION, VERSION_RUN_PATHS):
        raise ManifestError(f"{where}: manifest version {version}; this ckptwatch reads versions {VERSION} "
                            f"and {VERSION_RUN_PATHS} (upgrade ckptwatch)")
    kind, run_path = "dir", ""
    if version >= VERSION_RUN_PATHS:
        kind = _field(doc, "kind", str, where)
        if KINDS.get(kind) != version:
            raise ManifestError(f"{where}: kind {kind!r} is not one this ckptwatch writes in version "
                                f"{version}")
        run_path = member_path(_field(doc, "run_path", str, where), where)
    algorithm = _field(doc, "algorithm", str, where)
    if not known(algorithm):
        raise ManifestError(f"{where}: hashed with {algorithm!r}, which this ckptwatch cannot compute")
    raw_files = _field(doc, "files", list, where)
    files: list[FileEntry] = []
    seen: set[str] = set()
    for raw in raw_files:
        if not isinstance(raw, dict):
            raise ManifestError(f"{where}: a file entry is not an object")
        path = member_path(raw.get("path"), where)
        if path in seen:
            raise ManifestError(f"{where}: lists {path} twice")
        seen.add(path)
        size, digest, mtime = raw.get("size"), raw.get("hash"), raw.get("mtime_ns")
        ctime, ino = raw.get("ctime_ns"), raw.get("ino")
        if not (isinstance(size, int) and size >= 0 and isinstance(digest, str) and digest
                and all(isinstance(x, int) and not isinstance(x, bool) for x in (mtime, ctime, ino))) \
                or isinstance(size, bool):
            raise ManifestError(f"{where}: the entry of {path} needs a size, a hash, mtime_ns, ctime_ns and "
                                "ino")
        files.append(FileEntry(path, size, digest, mtime, ctime, ino))
    step = doc.get("step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        raise ManifestError(f"{where}: 'step' is not a whole number")
    return Manifest(algorithm=algorithm, files=tuple(files), verdict=_field(doc, "verdict", str, where),
                    layout=_field(doc, "layout", str, where), step=step, run=_field(doc, "run", str, where),
                    checkpoint=_field(doc, "checkpoint", str, where),
                    source_host=_field(doc, "source_host", str, where),
                    source_path=_field(doc, "source_path", str, where),
                    created=float(_field(doc, "created", (int, float), where)), version=version,
                    kind=kind, run_path=run_path)


def marker_bytes(manifest_data: bytes, algorithm: str = ALGORITHM) -> bytes:
    """The commit marker of the manifest whose exact bytes are ``manifest_data``."""
    doc = {"version": VERSION, "manifest": MANIFEST_NAME, "algorithm": algorithm,
           "hash": digest_of(manifest_data, algorithm)}
    return (json.dumps(doc, sort_keys=True) + "\n").encode("ascii")


def marker_matches(marker: bytes, manifest_data: bytes) -> bool:
    """Does the marker ``marker`` commit exactly the manifest bytes ``manifest_data``?"""
    try:
        doc = json.loads(marker)
        algorithm = doc["algorithm"]
        return isinstance(algorithm, str) and known(algorithm) and \
            marker == marker_bytes(manifest_data, algorithm)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return False


def read_small(target: Target, name: str, limit: int) -> bytes | None:
    """The bytes of ``name`` on ``target`` (None when absent); ``ManifestError`` when over ``limit``."""
    try:
        with target.open_read(name) as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        return None
    if len(data) > limit:
        raise ManifestError(f"{target.describe(name)}: bigger than {limit} bytes; not a file ckptwatch wrote")
    return data


def put(target: Target, name: str, data: bytes) -> None:
    """Write ``data`` as ``name``, whole or not at all (temp file, O_EXCL|O_NOFOLLOW, rename)."""
    upload = target.open_write(name)
    try:
        upload.write(data)
    except BaseException:
        upload.abort()
        raise
    upload.commit()


@dataclass(frozen=True)
class CopyState:
    """What a copy's own names say: ``absent``, ``partial`` (no marker), ``committed`` or ``broken``.

    ``broken``: a marker that does not commit the manifest there (or no manifest): never a backup, and
    never overwritten either; a person must look at it. ``manifest``/``manifest_data`` are set when
    committed.
    """

    state: str
    reason: str = ""
    manifest: Manifest | None = None
    manifest_data: bytes = b""


def copy_state(target: Target, prefix: str) -> CopyState:
    """The state of the copy at ``prefix``, with its committed manifest when there is one."""
    marker_name, manifest_name = join(prefix, MARKER_NAME), join(prefix, MANIFEST_NAME)
    marker = read_small(target, marker_name, MAX_MARKER_BYTES)
    if marker is None:
        return CopyState("partial" if target.list(prefix) else "absent",
                         f"{target.describe(prefix)} has no commit marker ({MARKER_NAME}): "
                         "the copy was never finished")
    data = read_small(target, manifest_name, MAX_MANIFEST_BYTES)
    if data is None:
        return CopyState("broken", f"{target.describe(manifest_name)} is missing, but the copy has a "
                         "commit marker")
    if not marker_matches(marker, data):
        return CopyState("broken", f"{target.describe(marker_name)} does not commit the manifest there "
                         f"({MANIFEST_NAME} was changed or replaced after the commit)")
    try:
        manifest = parse(data, target.describe(manifest_name))
    except ManifestError as exc:
        return CopyState("broken", str(exc))
    return CopyState("committed", "", manifest, data)


def commit(target: Target, prefix: str, manifest: Manifest) -> bytes:
    """Write the manifest, then the marker (last); the manifest's bytes."""
    data = manifest.to_bytes()
    put(target, join(prefix, MANIFEST_NAME), data)
    put(target, join(prefix, MARKER_NAME), marker_bytes(data, manifest.algorithm))
    return data


@dataclass(frozen=True)
class JournalEntry:
    hash: str
    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int

    def stamp(self) -> tuple[int, int, int, int]:
        return (self.size, self.mtime_ns, self.ctime_ns, self.ino)


def journal_bytes(algorithm: str, source_path: str, entries: dict[str, JournalEntry]) -> bytes:
    doc = {"version": VERSION, "algorithm": algorithm, "source_path": source_path,
           "files": {p: [e.hash, e.size, e.mtime_ns, e.ino, e.ctime_ns] for p, e in sorted(entries.items())}}
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def read_journal(target: Target, prefix: str, algorithm: str, source_path: str) -> dict[str, JournalEntry]:
    """The journal's entries when it is ours for this source and algorithm; ``{}`` otherwise."""
    try:
        data = read_small(target, join(prefix, JOURNAL_NAME), MAX_MANIFEST_BYTES)
        doc = json.loads(data) if data else None
        if not isinstance(doc, dict) or doc.get("version") != VERSION or doc.get("algorithm") != algorithm \
                or doc.get("source_path") != source_path:
            return {}
        out = {}
        for path, (digest, size, mtime, ino, ctime) in doc["files"].items():
            member_path(path, "journal")
            if isinstance(digest, str) and all(isinstance(x, int) for x in (size, mtime, ino, ctime)):
                out[path] = JournalEntry(digest, size, mtime, ino, ctime)
        return out
    except (ManifestError, ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        return {}  # a damaged journal costs a full copy, nothing more
