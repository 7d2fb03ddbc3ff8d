"""May this process delete checkpoints under a watched root? What ``config check`` says per retention watch.

Deleting a checkpoint renames it into retention's trash and then removes its files. The kernel allows
that when the process may list, write and search (``rwx``) the directory that holds the checkpoint
(rename and unlink change that directory) and, for a checkpoint that is a directory, that directory
itself (its entries are removed, and moving it to another parent rewrites its ``..``). In a sticky
directory (mode 1777, like /tmp) only the owner of an entry, or of the directory, may remove the entry,
whatever the mode says. The bits are asked of the kernel (``os.access`` with the effective ids, so ACLs
and read-only mounts count); owner, mode and the sticky bit come from ``lstat``.

Not looked at: directories inside a checkpoint (a trainer writes them with the checkpoint's owner and
mode; walking them all would cost a listing per directory of every checkpoint), and the systemd sandbox:
a root missing from ``ReadWritePaths=`` is read-only only inside the unit, so this check run outside it
cannot see that (run inside it, ``os.access`` reports the read-only mount). Run as root, every bit
passes: the service does not run as root, so the check means something only when run as the unit's
``User=``.

``refusal`` is the pure rule over what ``check_delete_access`` reads; ``describe`` is the one line.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ckptwatch.discover import discover
from ckptwatch.scan import display

DROP_IN = "systemd/retention.conf.example"


@dataclass(frozen=True)
class DirFacts:
    """What the kernel says of one directory deletion has to change."""

    path: str
    uid: int  # owner
    gid: int
    mode: int  # st_mode
    rwx: bool  # os.access(R_OK | W_OK | X_OK) with the effective ids
    read_only: bool  # on a read-only mount (statvfs ST_RDONLY)


@dataclass(frozen=True)
class Refusal:
    """Where deletion would be refused, and why."""

    directory: DirFacts
    reason: str  # "permission" | "sticky" | "read-only"
    entry: str | None = None  # the entry a sticky directory protects
    entry_uid: int | None = None


@dataclass(frozen=True)
class DeleteAccess:
    """One watched root's answer: ``refused`` is the first directory (in path order) that says no."""

    root: str
    uid: int  # the effective uid that was checked
    exists: bool
    checkpoints: int  # checkpoints found (0: only the root itself was checked)
    refused: Refusal | None = None


def refusal(d: DirFacts, uid: int, entry: str | None = None, entry_uid: int | None = None) -> Refusal | None:
    """Would ``uid`` be refused removing ``entry`` (owned by ``entry_uid``; None: gone, or not asked) from
    ``d``, or, without ``entry``, emptying ``d``?"""
    if d.read_only:
        return Refusal(d, "read-only")
    if not d.rwx:
        return Refusal(d, "permission")
    sticky = bool(d.mode & stat.S_ISVTX)
    if sticky and entry_uid is not None and uid != 0 and uid not in (d.uid, entry_uid):
        return Refusal(d, "sticky", entry, entry_uid)
    return None


def _facts(path: str) -> DirFacts:
    st = os.lstat(path)
    rwx = os.access(path, os.R_OK | os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids)
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return DirFacts(path, st.st_uid, st.st_gid, st.st_mode, rwx, read_only)


def _owner(path: str) -> int | None:
    try:
        return os.lstat(path).st_uid
    except OSError:
        return None  # vanished: nothing to delete


def check_delete_access(root: str, layout: str = "auto") -> DeleteAccess:
    """Find the checkpoints under ``root`` (as the service would) and check every directory their
    deletion changes, for this process's effective uid."""
    uid = os.geteuid()
    if not os.path.isdir(root):
        return DeleteAccess(root, uid, exists=False, checkpoints=0)
    found = discover(root, layout=layout)
    # (directory, entry removed from it or None for the directory itself being emptied)
    changes: set[tuple[str, str | None]] = set()
    count = 0
    for run in found.runs:
        for cand in run.candidates:
            count += 1
            for path in cand.members or (cand.path,):
                changes.add((os.path.dirname(path), path))
                if os.path.isdir(path) and not os.path.islink(path):
                    changes.add((path, None))
    # A directory discovery could not list hides checkpoints the service could not delete either.
    for p in [*found.problems, *(p for run in found.runs for p in run.problems)]:
        if p.kind == "unreadable" and os.path.isdir(p.file):
            changes.add((p.file, None))
    if not changes:
        changes.add((root, None))
    facts: dict[str, DirFacts] = {}
    for directory, entry in sorted(changes, key=lambda c: (c[0], c[1] or "")):
        if directory not in facts:
            try:
                facts[directory] = _facts(directory)
            except OSError:
                continue  # vanished under us (the trainer's own rotation): nothing to delete there
        d = facts[directory]
        why = refusal(d, uid, entry, _owner(entry) if entry and d.mode & stat.S_ISVTX else None)
        if why is not None:
            return DeleteAccess(root, uid, exists=True, checkpoints=count, refused=why)
    return DeleteAccess(root, uid, exists=True, checkpoints=count)


def describe(access: DeleteAccess) -> str:
    """The one line ``config check`` prints for a watch with retention: who may delete, or what to do."""
    head = f"retention on {display(access.root)}: this user (uid {access.uid})"
    if not access.exists:
        return f"retention on {display(access.root)}: not checked: the path does not exist yet"
    r = access.refused
    if r is None:
        tail = "" if access.checkpoints else " (no checkpoints yet: checked the root itself)"
        if access.uid == 0:
            tail += (" (checked as root, whom every mode allows: run this check as the service's User=, "
                     "e.g. sudo -u USER ckptwatch config check FILE)")
        return f"{head} can delete checkpoints here{tail}"
    d = r.directory
    where = f"{head} cannot delete in {display(d.path)} (owner uid {d.uid}, mode {stat.S_IMODE(d.mode):04o})"
    if r.reason == "read-only":
        return (f"{where}: it is on a read-only mount; under systemd, add the root to ReadWritePaths= "
                f"(see {DROP_IN})")
    if r.reason == "sticky":
        return (f"{where}: in a sticky directory only an entry's owner may delete it, and "
                f"{display(r.entry or '')} belongs to uid {r.entry_uid}: run the service as that user "
                f"(see {DROP_IN})")
    if d.uid == access.uid:
        return f"{where}: its mode denies its owner; chmod u+rwx {display(d.path)}"
    if d.mode & 0o070 == 0o070:
        return f"{where}: its group may write there: run the service with Group={d.gid} (see {DROP_IN})"
    if d.uid == 0:
        return (f"{where}: it belongs to root, and the service must not run as root: give it to the user "
                f"that trains (chown) and run the service as that user (see {DROP_IN})")
    return f"{where}: run the service as that user (see {DROP_IN})"
