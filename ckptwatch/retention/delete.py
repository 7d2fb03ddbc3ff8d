"""The one guarded deletion path: re-check, rename into the trash, record, remove.

Why so many steps for an ``rm -r``: a checkpoint is deleted on the strength of a plan made from a pass
that may be seconds old, in a directory others write to. So, in order:

1. ``carry_out`` asks for a fresh plan (a new listing and judgement of the run, made by the caller), checks
   it against every invariant (``guards.violations``) and deletes only what the fresh plan still deletes.
   A run whose fresh plan breaks an invariant, or that is gone, gets no deletion at all.
2. ``move_to_trash`` renames the checkpoint (every member of it: all ranks' files of a step go together)
   into a new entry of ``.ckptwatch-trash`` beside it, on the same filesystem, after writing the entry's
   journal (what was moved from where). The trash is hidden from every listing (``scan.TRASH_NAME``), so
   no framework resume scan and no ckptwatch pass mistakes it for a checkpoint. A ``moved`` marker is
   created last: with it, the deletion is decided; without it, ``recover`` moves everything back.
3. ``remove_entry`` removes the entry (``shutil.rmtree``, which does not follow links on Linux). It takes
   time for a big checkpoint, so the service runs it off its loop.

A crash at any point leaves the whole checkpoint where it was or nothing visible: ``recover`` (run
before any new deletion in a directory, so at the next start) finishes what the markers say.

Everything created inside a watched root is created exclusively and without following links (DESIGN.md
invariant 7): the trash dir is opened ``O_NOFOLLOW``, entries and journals are created with ``mkdir`` and
``O_EXCL | O_NOFOLLOW`` relative to directory fds, and a checkpoint reached through a symlink (itself or
a parent) is refused.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ckptwatch.config.retention import RetentionConfig
from ckptwatch.formats._io import display
from ckptwatch.retention import guards
from ckptwatch.retention.model import Candidate, Decision, Plan
from ckptwatch.scan import TRASH_NAME

JOURNAL = "journal.json"
MOVED = "moved"  # created when every member is in the entry: from then on the deletion is decided


class DeletionRefused(Exception):
    """This checkpoint must not be deleted (a link, outside the root, another filesystem, a bad trash)."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one planned deletion. ``result``: deleted | vanished | kept | refused | skipped."""

    path: str
    result: str
    bytes: int
    reason: str


@dataclass(frozen=True)
class TrashEntry:
    path: str
    original: str
    bytes: int


def carry_out(planned: Sequence[Decision], rejudge: Callable[[], tuple[Plan, list[Candidate]] | None],
              policy: RetentionConfig, watch_root: str, *, now: float,
              remove: Callable[[TrashEntry], None] | None = None) -> list[Outcome]:
    """Delete the planned checkpoints that a fresh plan still deletes; return one outcome per planned one.

    ``rejudge`` lists and judges the run again and plans on that (None: the run is gone). ``remove``
    removes a trash entry (the service passes one that runs off its loop; default: here and now). A
    permission error stops the run's deletions at once: it is reported once, nothing else is touched.
    """
    todo = [d for d in planned if not d.keep]
    if not todo:
        return []
    fresh = rejudge()
    if fresh is None:
        return [Outcome(d.path, "skipped", 0, "the run is no longer there") for d in todo]
    plan, candidates = fresh
    broken = guards.violations(plan, candidates, policy)
    if broken:
        why = "the fresh plan breaks a safety rule, so nothing is deleted: " + "; ".join(broken[:3])
        return [Outcome(d.path, "refused", 0, why) for d in todo]
    still = {d.path: d for d in plan.deletions}
    outcomes: list[Outcome] = []
    stop: str | None = None
    for d in todo:
        if stop is not None:
            outcomes.append(Outcome(d.path, "skipped", 0, stop))
            continue
        fresh_d = still.get(d.path)
        if fresh_d is None:
            again = next((x for x in plan.decisions if x.path == d.path), None)
            outcomes.append(Outcome(d.path, "kept" if again else "vanished", 0,
                                    "; ".join(again.reasons) if again else "it is gone already"))
            continue
        reason = "; ".join(fresh_d.reasons)
        try:
            entry = move_to_trash(d.path, watch_root, reason=reason, size=fresh_d.bytes, now=now)
        except DeletionRefused as exc:
            outcomes.append(Outcome(d.path, "refused", 0, str(exc)))
            continue
        except PermissionError as exc:
            stop = f"not attempted after the permission error on {display(d.path)}"
            outcomes.append(Outcome(d.path, "refused", 0, f"permission denied: {exc.strerror or exc} "
                                    f"(uid {os.geteuid()}); nothing else in this run is touched"))
            continue
        if entry is None:
            outcomes.append(Outcome(d.path, "vanished", 0, "it vanished before it was deleted "
                                    "(the trainer's own rotation?)"))
            continue
        (remove or remove_entry)(entry)
        outcomes.append(Outcome(d.path, "deleted", fresh_d.bytes, reason))
    return outcomes


def members_of(path: str) -> list[str]:
    """The paths a checkpoint is made of: itself, or for a per-rank pattern (``rank_*/x_5.ckpt``) every
    match, listed now (a fresh listing, never the plan's memory)."""
    if glob.has_magic(path):
        return sorted(glob.glob(path))
    return [path] if os.path.lexists(path) else []


def _check_member(member: str, watch_root: str) -> os.stat_result:
    st = os.lstat(member)
    if stat.S_ISLNK(st.st_mode):
        raise DeletionRefused(f"{display(member)} is a symlink; only the checkpoint it points to could be "
                              "deleted, and that is not done through a link")
    absolute = os.path.abspath(member)
    real = os.path.realpath(member)
    real_root = os.path.realpath(watch_root)
    if real != absolute:
        raise DeletionRefused(f"{display(member)} is reached through a symlinked directory (it really is "
                              f"{display(real)}); not deleted")
    if not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise DeletionRefused(f"{display(member)} is outside the watched root {display(watch_root)}; "
                              "not deleted")
    return st


def move_to_trash(path: str, watch_root: str, *, reason: str, size: int, now: float) -> TrashEntry | None:
    """Rename every member of the checkpoint at ``path`` into a new trash entry; None if it vanished.

    Raises ``DeletionRefused`` (links, outside the root, another filesystem, a trash that is not ours)
    or the ``OSError`` of the rename (a permission error, for one).
    """
    members = members_of(path)
    if not members:
        return None
    try:
        stats = [_check_member(m, watch_root) for m in members]
    except FileNotFoundError:
        return None
    parent = os.path.dirname(os.path.abspath(members[0]))
    if any(os.path.dirname(os.path.abspath(m)) != parent for m in members):
        parent = os.path.dirname(os.path.abspath(path.split("*", 1)[0].rstrip(os.sep)) or os.sep)
    trash_fd = _open_trash(parent)
    try:
        if any(os.fstat(trash_fd).st_dev != st.st_dev for st in stats):
            raise DeletionRefused(f"{display(path)} is on another filesystem than {display(parent)} (a "
                                  "mount point); it cannot be moved into the trash in one rename, so it is "
                                  "not deleted")
        name = f"{time.time_ns()}-{os.getpid()}"
        os.mkdir(name, 0o700, dir_fd=trash_fd)
        entry_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=trash_fd)
        try:
            moves = [(os.path.abspath(m), f"item-{n}") for n, m in enumerate(members)]
            _write_new(entry_fd, JOURNAL, json.dumps({"checkpoint": display(path), "reason": reason,
                                                      "bytes": size, "at": now,
                                                      "moves": [[orig, item] for orig, item in moves]}))
            for original, item in moves:
                try:
                    os.rename(original, item, dst_dir_fd=entry_fd)
                except FileNotFoundError:
                    continue  # one rank's file rotated away by someone else meanwhile: the rest still go
            _write_new(entry_fd, MOVED, "")
            os.fsync(entry_fd)
        finally:
            os.close(entry_fd)
        os.fsync(trash_fd)
    finally:
        os.close(trash_fd)
    return TrashEntry(os.path.join(parent, TRASH_NAME, name), display(path), size)


def _open_trash(parent: str, *, create: bool = True) -> int:
    """An fd of ``parent``'s trash dir, made here if absent; refused unless it is ours alone.

    Ours alone: a real directory owned by this user that nobody else may write to. A trash someone else
    made could hold entries whose journals name any path, and ``recover`` renames what journals say.
    """
    trash = os.path.join(parent, TRASH_NAME)
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(trash, 0o700)
    try:
        fd = os.open(trash, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise DeletionRefused(f"{display(trash)} is not a directory ckptwatch made (a symlink or a "
                                  "file); nothing is deleted in this directory until it is removed") from None
        raise
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        raise DeletionRefused(f"{display(trash)} belongs to uid {st.st_uid} with mode "
                              f"{st.st_mode & 0o777:04o}, not to this user (uid {os.geteuid()}) alone; "
                              "nothing is deleted in this directory until it is removed")
    return fd


def _write_new(dir_fd: int, name: str, text: str) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=dir_fd)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_entry(entry: TrashEntry) -> None:
    """Remove a trash entry and, when it was the last, the trash dir (never following a link)."""
    shutil.rmtree(entry.path, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(entry.path))


def recover(parent: str) -> list[str]:
    """Finish what a crash interrupted in ``parent``'s trash; return what was done, one line each.

    An entry with its ``moved`` marker was decided: it is removed. One without it is rolled back: each
    member goes back where the journal says it came from (unless something new is there), so the
    checkpoint is whole again and is judged afresh.
    """
    trash = os.path.join(parent, TRASH_NAME)
    try:
        fd = _open_trash(parent, create=False)
    except FileNotFoundError:
        return []
    except (OSError, DeletionRefused) as exc:
        return [f"left {display(trash)} alone: {exc}"]
    done: list[str] = []
    try:
        names = os.listdir(fd)
    finally:
        os.close(fd)
    for name in sorted(names):
        entry = os.path.join(trash, name)
        if os.path.islink(entry) or not os.path.isdir(entry):
            continue
        if os.path.lexists(os.path.join(entry, MOVED)) or not os.path.lexists(os.path.join(entry, JOURNAL)):
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {display(entry)} (a deletion interrupted after its move)")
            continue
        try:
            with open(os.path.join(entry, JOURNAL), "rb") as f:  # our own 0600 file in our own 0700 dir
                journal = json.loads(f.read(1 << 20))
            moves = [(str(o), str(i)) for o, i in journal["moves"]]
        except (OSError, ValueError, KeyError, TypeError):
            done.append(f"left {display(entry)}: its journal cannot be read; look inside and move the "
                        "checkpoint back by hand")
            continue
        home = os.path.abspath(parent).rstrip(os.sep) + os.sep
        for original, item in moves:
            src = os.path.join(entry, os.path.basename(item))
            if not os.path.abspath(original).startswith(home):
                continue  # a journal names only paths below the trash's directory; never move elsewhere
            if os.path.lexists(src) and not os.path.lexists(original):
                os.rename(src, original)
        shutil.rmtree(entry, ignore_errors=True)
        done.append(f"restored {journal.get('checkpoint', '?')} (a deletion interrupted before its move "
                    "finished)")
    with contextlib.suppress(OSError):
        os.rmdir(trash)
    return done
