"""One writer per copy: two mirrors of one checkpoint to one target at once must not interleave.

Both would remove each other's "leftovers" (temp files, the journal, a marker being replaced) and could
commit a manifest listing files the other was rewriting. So ``copy.mirror_checkpoint`` holds this lock
from the moment it decides to write a copy until the copy is committed or given up; the second writer
fails at once with ``CopyBusy`` ("another mirror is writing this copy (pid, host, since)") and writes
nothing. It is not a queue: the service retries on its backoff, the CLI exits 1 and can be run again.

The lock is ``.ckptwatch-mirror-lock`` inside the copy's dir (one of the copy's own names,
``manifest.OURS``: never listed as a file of the checkpoint, never "unexpected" in a copy).

- **Local (or mounted) target**: ``flock(LOCK_EX | LOCK_NB)`` on that file, opened ``O_CREAT |
  O_NOFOLLOW`` (a planted symlink is refused, never followed). The kernel drops the lock when its holder
  dies, kill -9 included, so there is no staleness to judge: a lock file left by a killed writer is simply
  taken by the next one. The holder writes its pid, host and start time into the file for the second
  writer's message, and unlinks the file before closing it; a writer that got the lock on a file that was
  unlinked meanwhile (its inode is no longer the name's) tries again, so two writers can never each hold
  a lock on a different file. On NFS, Linux maps ``flock`` to POSIX byte-range locks (NFSv4: leases
  held by the server), which work across clients.
- **Object storage (S3)**: there is no lock and, through s3fs, no compare-and-swap, so the lock is a
  *lease*: the object holds owner (pid, host), start time and the time it was last renewed, and a random
  token. Writers on one host are kept apart exactly: the holder also binds an abstract unix socket named
  after the copy (Linux; the kernel releases it when the process dies; it is seen across the service's
  ``PrivateTmp`` and ``ProtectProc``, which would hide a lock file in /tmp or the holder's pid), so a
  lease whose host is this one is stale as soon as nobody here holds that socket (a writer that failed
  while the endpoint was down could not remove its lease; the next one takes it over at once). A lease
  of another host renewed less than ``LEASE_STALE`` seconds ago belongs to that host: refuse. Otherwise
  (none, or stale: its writer died) write ours, read it back and proceed only if the token is still ours
  (two hosts racing in the same instant: the later write wins and the earlier one sees it). The holder
  renews the lease whenever it writes its journal (``Lease.renew``), and removes it when done, only if
  it is still its own. Between hosts this detects the other writer in every case but a race inside one
  round trip; the commit marker's bytes follow from the manifest alone, so even then both writers
  commit the same manifest for the same source files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror.target import LocalTarget, Target, join
from ckptwatch.mirror.wrap import innermost

LEASE_STALE = 3600.0  # seconds without renewal after which an S3 lease is taken over (its writer died)
MAX_LOCK_BYTES = 4096


@dataclass(frozen=True)
class Holder:
    """Who holds a copy's lock: what the second writer's message names."""

    pid: int
    host: str
    since: float  # unix time the holder took the lock

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since)) if self.since else "unknown"
        return f"pid {self.pid}, host {self.host}, since {when}"


class CopyBusy(Exception):
    """Another mirror holds this copy's lock; nothing was written."""

    def __init__(self, where: str, holder: Holder | None) -> None:
        who = holder.describe() if holder else "its owner could not be read"
        super().__init__(f"another mirror is writing this copy ({who}); {where} is left to it and retried "
                         "by the next pass")
        self.holder = holder


def _doc(holder: Holder, token: str = "", renewed: float | None = None) -> bytes:
    return json.dumps({"pid": holder.pid, "host": holder.host, "since": holder.since, "token": token,
                       "renewed": holder.since if renewed is None else renewed}).encode("ascii")


def _parse(data: bytes | None) -> tuple[Holder | None, str, float]:
    """(holder, token, renewed) of a lock file's bytes; (None, "", 0) for anything unreadable."""
    try:
        doc = json.loads(data or b"")
        holder = Holder(int(doc["pid"]), str(doc["host"]), float(doc["since"]))
        return holder, str(doc.get("token", "")), float(doc.get("renewed", holder.since))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None, "", 0.0


def holder_of(data: bytes | None) -> Holder | None:
    """The holder a lock file's (or lease object's) bytes name; None when they name none."""
    return _parse(data)[0]


class Lease:
    """What the holder of a copy's lock may do with it: renew it (a no-op for a local flock)."""

    def renew(self) -> None:
        """Tell the other writers this one is still alive (an S3 lease's ``renewed`` time)."""


@contextlib.contextmanager
def copy_lock(target: Target, prefix: str, *, host: str) -> Iterator[Lease]:
    """Hold the lock of the copy at ``prefix`` on ``target``; ``CopyBusy`` when another writer has it."""
    me = Holder(os.getpid(), host, time.time())
    backend = innermost(target)  # under the cancel, cap and progress wrappers
    if isinstance(backend, LocalTarget):
        with _flock(backend, prefix, me) as lease:
            yield lease
    else:
        with _lease(target, prefix, me) as lease:
            yield lease


@contextlib.contextmanager
def _flock(target: LocalTarget, prefix: str, me: Holder) -> Iterator[Lease]:
    name = join(prefix, mf.LOCK_NAME)
    path = target.describe(name)
    target._ensure_dirs(name)  # the copy's dirs, created one level at a time, refusing symlinks
    for _ in range(5):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file where the copy's lock belongs; move it aside",
                              path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder, _, _ = _parse(os.pread(fd, MAX_LOCK_BYTES, 0))
                raise CopyBusy(target.describe(prefix), holder) from None
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)  # the holder before us unlinked it while we waited to lock: take the new one
                fd = -1
                continue
            data = _doc(me)
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        try:
            yield Lease()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)  # while still locked: a waiter on this inode sees it gone and retries
            os.close(fd)
        return
    raise OSError(errno.EAGAIN, "the copy's lock file keeps being replaced; is another program removing it?",
                  path)


class _S3Lease(Lease):
    def __init__(self, target: Target, name: str, me: Holder, token: str) -> None:
        self.target, self.name, self.me, self.token = target, name, me, token

    def renew(self) -> None:
        mf.put(self.target, self.name, _doc(self.me, self.token, time.time()))

    def ours(self) -> bool:
        _, token, _ = _parse(mf.read_small(self.target, self.name, MAX_LOCK_BYTES))
        return token == self.token


@contextlib.contextmanager
def _host_lock(key: str) -> Iterator[bool]:
    """Hold this host's lock named ``key`` (an abstract unix socket): True when held, False when another
    process here holds it. Where abstract sockets cannot be made, True (the lease alone decides)."""
    name = b"\0ckptwatch-mirror-lock-" + hashlib.sha256(key.encode()).hexdigest()[:40].encode()
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        yield True
        return
    try:
        try:
            sock.bind(name)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                yield True
                return
            yield False
            return
        yield True
    finally:
        sock.close()


@contextlib.contextmanager
def _lease(target: Target, prefix: str, me: Holder) -> Iterator[Lease]:
    name = join(prefix, mf.LOCK_NAME)
    with _host_lock(target.describe(name)) as here_free:
        try:
            current = mf.read_small(target, name, MAX_LOCK_BYTES)
        except mf.ManifestError:
            current = None  # not a lease of ours: taken over like a stale one
        holder, _, renewed = _parse(current)
        if not here_free:
            raise CopyBusy(target.describe(prefix), holder)
        if holder is not None and holder.host != me.host and time.time() - renewed < LEASE_STALE:
            raise CopyBusy(target.describe(prefix), holder)
        lease = _S3Lease(target, name, me, secrets.token_hex(16))
        mf.put(target, name, _doc(me, lease.token))
        if not lease.ours():
            holder, _, _ = _parse(mf.read_small(target, name, MAX_LOCK_BYTES))
            raise CopyBusy(target.describe(prefix), holder)
        try:
            yield lease
        finally:
            with contextlib.suppress(OSError, mf.ManifestError):
                if lease.ours():
                    target.remove(name)
