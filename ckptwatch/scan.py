"""Directory listing that never raises: the first rung of the validation ladder (names and stat).

Why not ``os.walk``: a watched tree changes under us (rotation deletes checkpoints mid-scan), holds
symlinks that may loop or leave the watched root, and may hold names that are not UTF-8. Each of
those is a finding here, not an exception, and the scan always finishes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter, itemgetter
from stat import S_IFDIR, S_IFMT, S_IFREG, S_ISDIR, S_ISREG
from typing import NamedTuple

from ckptwatch.formats._io import (
    display,
    kind_of_mode,
    not_regular_problem,
    problem_from_oserror,
    unsafe_link_problem,
)
from ckptwatch.model import Problem


class Entry(NamedTuple):
    """One directory entry, stat'ed once. For a symlink, size/mtime/kind are the target's.

    A named tuple rather than a dataclass: a whole-root pass builds one per file (100,000 and more on a
    cluster's shared filesystem), and a tuple is built several times faster; it also hashes as the
    fingerprint of its file (``TreeStat.digest``).
    """

    name: str
    path: str
    is_dir: bool
    is_file: bool
    is_symlink: bool
    size: int
    mtime: float
    mode: int
    # with ctime: a file replaced by one of the same size and mtime (rsync -t, cp -p) still differs
    ino: int = 0
    ctime: float = 0.0


_entry = partial(tuple.__new__, Entry)  # an Entry from a full tuple, without NamedTuple's argument parsing


# Retention's trash (retention/delete.py): ckptwatch's own, never a checkpoint or a run, so no listing
# shows it to the layouts, to discovery or to the settle rule.
TRASH_NAME = ".ckptwatch-trash"
# A user's pin (retention/facts.py): ``.ckptwatch-keep`` in a checkpoint dir, ``<file>.ckptwatch-keep``
# beside a checkpoint file. Not part of any checkpoint: a checkpoint's file set (``tree``) leaves it out,
# so pinning never changes a verdict (a pin newer than trainer_state.json is no "later save").
PIN_NAME = ".ckptwatch-keep"
# A mirrored copy's own names (mirror/manifest.py: manifest, commit marker, journal): no part of the
# checkpoint, so judging a copy (or a checkpoint restored from one) sees the checkpoint's files only.
MIRROR_PREFIX = ".ckptwatch-mirror"
OWN_MARK = "ckptwatch"  # in each of the three names above


def list_dir(path: str) -> tuple[list[Entry], list[Problem]]:
    """Entries of ``path`` sorted by name (never retention's trash); problems for entries that cannot be
    stat'ed.

    One ``stat`` per entry, through the link for a symlink (the entry type of a plain entry comes from the
    listing itself, so ``is_symlink`` costs no call). This is the inner loop of every pass over a root: it
    builds plain tuples and nothing else per entry.
    """
    try:
        with os.scandir(path) as it:
            raw = list(it)
    except OSError as exc:
        return [], [problem_from_oserror(path, exc)]
    entries: list[Entry] = []
    problems: list[Problem] = []
    add = entries.append
    for de in raw:
        name = de.name
        if name == TRASH_NAME:
            continue
        if not name.isascii() and not _utf8(name):  # an ASCII name is valid UTF-8; others need the encode
            problems.append(_bad_name(de.path))
        is_link = False
        try:
            is_link = de.is_symlink()
            st = de.stat()
        except OSError as exc:
            problems.append(_unstatable(de.path, is_link, exc))
            continue
        mode = st.st_mode
        add(_entry((name, de.path, S_ISDIR(mode), S_ISREG(mode), is_link, st.st_size, st.st_mtime, mode,
                    st.st_ino, st.st_ctime)))
    entries.sort()  # by name: names are unique within a directory, so no later field is ever compared
    return entries, problems


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bad_name(path: str) -> Problem:
    return Problem("bad_name", display(path), f"{display(path)}: name is not valid UTF-8")


def _unstatable(path: str, is_link: bool, exc: OSError) -> Problem:
    if is_link and exc.errno == 2:  # ENOENT through a link: dangling
        return Problem("dangling_symlink", display(path),
                       f"{display(path)} points to {_readlink(path)}, which does not exist")
    return problem_from_oserror(display(path), exc)


def _readlink(path: str) -> str:
    try:
        return display(os.readlink(path))
    except OSError:
        return "?"


def inside(path: str, root: str) -> bool:
    """Is the real location of ``path`` inside the real location of ``root``?"""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class TreeStat:
    """Every regular file below a checkpoint path, for the settle rule and the file-set checks."""

    files: tuple[Entry, ...]
    problems: tuple[Problem, ...]
    newest_dir_mtime: float = 0.0  # a rename or delete inside changes only the directory's mtime
    # ``quick_digest`` of the same look (same stat results), or None where the quick walk gives up (a link,
    # a finding, a file checkpoint): the judgement cache re-checks a settled checkpoint with it.
    quick: int | None = field(default=None, compare=False)

    @property
    def newest_mtime(self) -> float:
        return max(max((e.mtime for e in self.files), default=0.0), self.newest_dir_mtime)

    @property
    def digest(self) -> int:
        """What must be unchanged for an earlier judgement to still hold (and for two looks to agree): every
        file's path, kind, size, mtime, mode, inode and ctime, the newest directory mtime and the problems,
        as one 64-bit hash. The judgement cache keeps this, not the listing: over 100,000 files the tuples
        would cost ~30 MiB of the service's memory; a collision between two states of one checkpoint is no
        practical risk."""
        return hash((self.files, self.newest_dir_mtime, self.problems))


_path_of = attrgetter("path")
_first = itemgetter(0)
MAX_TREE_DEPTH = 32  # levels below a checkpoint; the deepest real layout (Orbax) uses about 6


def tree(path: str, root: str) -> TreeStat:
    """Regular files below ``path`` (or ``path`` itself when it is a file), not following links out of root.

    A symlinked directory inside the root is not descended into (its target is judged where it lives);
    a symlinked file is stat'ed through (Lightning's ``last.ckpt``). A link that leaves ``root`` is
    ``unsafe_path`` and a FIFO, socket or device is ``not_regular_file``: neither is listed, so no
    reader opens it. Directories deeper than ``MAX_TREE_DEPTH`` are a ``too_deep`` warning, not walked:
    a tree nested past the system's path length limit is no reason to call a checkpoint corrupt.
    """
    files: list[Entry] = []
    problems: list[Problem] = []
    try:
        st = os.stat(path)
    except OSError as exc:
        return TreeStat((), (problem_from_oserror(display(path), exc),))
    if not S_ISDIR(st.st_mode):
        return TreeStat((Entry(os.path.basename(path), path, False, S_ISREG(st.st_mode),
                               os.path.islink(path), st.st_size, st.st_mtime, st.st_mode, st.st_ino,
                               st.st_ctime),), ())
    stack = [(path, 0, "")]
    newest_dir = top_mtime = st.st_mtime
    walked = 0
    acc = 0  # quick_digest's XOR over the same stat results (TreeStat.quick)
    linked = False  # a symlink anywhere: quick_digest gives up on it, so no quick digest
    # One loop per entry (this is the service's rescan over every file of a root): what ``list_dir`` would
    # report comes first, in listing order, then this walk's own findings and sub-directories in name order,
    # exactly as a walk over ``list_dir``'s sorted entries would give them.
    while stack:
        d, depth, prefix = stack.pop()
        try:
            with os.scandir(d) as it:
                raw = list(it)
        except OSError as exc:
            problems.append(problem_from_oserror(d, exc))
            continue
        later: list[tuple[str, Problem | None, str]] = []  # (name, finding or None for a dir to walk, path)
        walked += 1
        here = 0  # this directory's part of the quick digest (see _quick_dir)
        for de in raw:
            name = de.name
            ours = OWN_MARK in name  # one test per entry for the three names that are ckptwatch's own
            if ours and name == TRASH_NAME:
                continue
            if not name.isascii() and not _utf8(name):
                problems.append(_bad_name(de.path))
            is_link = False
            try:
                is_link = de.is_symlink()
                st = de.stat()
            except OSError as exc:
                problems.append(_unstatable(de.path, is_link, exc))
                continue
            if is_link:
                linked = True
            if ours and (name.endswith(PIN_NAME) or name.startswith(MIRROR_PREFIX)):
                continue
            mode = st.st_mode
            if is_link and not inside(de.path, root):
                later.append((name, unsafe_link_problem(de.path, os.path.realpath(de.path),
                                                        os.path.realpath(root)), de.path))
            elif S_ISREG(mode):
                size, mtime, ino, ctime = st.st_size, st.st_mtime, st.st_ino, st.st_ctime
                files.append(_entry((name, de.path, False, True, is_link, size, mtime, mode, ino, ctime)))
                here ^= hash((name, mode, size, mtime, ino, ctime))
            elif S_ISDIR(mode):
                if is_link:
                    continue
                here ^= hash((name, mode, st.st_size, st.st_mtime, st.st_ino, st.st_ctime))
                if st.st_mtime > newest_dir:
                    newest_dir = st.st_mtime
                if depth + 1 < MAX_TREE_DEPTH:
                    later.append((name, None, de.path))
                else:
                    p = de.path
                    later.append((name, Problem("too_deep", display(p), f"{display(p)} is nested "
                                                f"{MAX_TREE_DEPTH} directories below {display(path)}; what "
                                                "lies below it was not examined"), p))
            else:
                later.append((name, not_regular_problem(de.path, kind_of_mode(mode)), de.path))
        acc ^= hash((prefix, here)) if prefix else here
        if later:
            later.sort(key=_first)
            for name, finding, p in later:
                if finding is None:
                    stack.append((p, depth + 1, f"{prefix}{name}/"))
                else:
                    problems.append(finding)
    if walked == 1:
        files.sort()  # one directory: by name (unique), which is path order, compared in C
    else:
        files.sort(key=_path_of)
    quick = None if problems or linked else hash((acc, top_mtime))
    return TreeStat(tuple(files), tuple(problems), newest_dir, quick)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_S_IFMT, _S_IFREG, _S_IFDIR = S_IFMT(0o177777), S_IFREG, S_IFDIR


def quick_digest(path: str) -> int | None:
    """``tree(path, ...).quick`` without building the listing, or None: the judgement cache's re-check.

    A settled checkpoint is looked at again every rescan only to learn that nothing changed. This walk
    computes just the 64-bit digest ``tree`` computes alongside its listing (every file's and
    sub-directory's relative path, mode, size, mtime, inode and ctime, XOR-combined so listing order does
    not matter, and the directory's own mtime), with no entry tuples, paths or findings. Anything a
    plain walk of regular files and directories would not meet gives None, and the caller walks with
    ``tree``: a symlink, a FIFO or other special file, an error, a name that is not UTF-8, too deep a tree.
    Directories are opened with ``O_NOFOLLOW`` relative to their parent's descriptor and the entries are
    stat'ed relative to it (``fstatat``, no path resolution per file; what ``find`` does): a directory
    swapped for a link mid-walk fails the open (None) and is never followed. Every descriptor opened here
    is closed before it returns.

    The digest is stricter than ``TreeStat.digest`` (it also covers sub-directories' inodes and ctimes), so
    a match means the files a judgement was made on are unchanged; a mismatch only costs the full walk.
    """
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError:
        return None
    try:
        acc = _quick_dir(fd, "", 0)
        if acc is None:
            return None
        return hash((acc, os.fstat(fd).st_mtime))
    except OSError:
        return None
    finally:
        os.close(fd)


def _quick_dir(fd: int, prefix: str, depth: int) -> int | None:
    """The quick digest's part for the open directory ``fd`` and all below it; OSError passes.

    Per directory, the XOR of one hash per entry (name, mode, size, mtime, inode, ctime); below the top,
    hashed with the directory's relative path; the parts XOR-ed together. ``tree`` computes the same from
    its own stat results. The inner loop is the rescan's per-file cost: a name from ``listdir`` and one
    ``fstatat`` (``os.stat`` with ``dir_fd``, not following a link), nothing else that allocates.
    """
    here = 0
    subdirs = None
    stat = os.stat
    for name in os.listdir(fd):
        ours = OWN_MARK in name
        if ours and name == TRASH_NAME:
            continue
        if not name.isascii() and not _utf8(name):
            return None
        st = stat(name, dir_fd=fd, follow_symlinks=False)
        mode = st.st_mode
        kind = mode & _S_IFMT  # S_ISREG / S_ISDIR without a call each: this loop runs once per file
        if kind != _S_IFREG and kind != _S_IFDIR:
            return None  # a link (not followed here), a FIFO, a socket, a device
        if ours and (name.endswith(PIN_NAME) or name.startswith(MIRROR_PREFIX)):
            continue
        if kind == _S_IFDIR:
            if depth + 1 >= MAX_TREE_DEPTH:
                return None
            if subdirs is None:
                subdirs = []
            subdirs.append(name)
        here ^= hash((name, mode, st.st_size, st.st_mtime, st.st_ino, st.st_ctime))
    acc = hash((prefix, here)) if prefix else here
    for name in subdirs or ():
        sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
        try:
            below = _quick_dir(sub, f"{prefix}{name}/", depth + 1)
        finally:
            os.close(sub)
        if below is None:
            return None
        acc ^= below
    return acc
