"""One service per state dir: an exclusive ``flock`` on ``STATE_DIR/lock``, held for the service's life.

Why ``flock`` and not a pid file alone: the kernel drops the lock when its holder dies, even by
``kill -9``, so a stale file never blocks a restart, and taking the lock is one atomic call. The
holder writes its pid into the file only so that a second service can name it in its message; the
pid is read only while the lock is held, so it is never a stale one. The write is also the first
write to the state dir, so a full or read-only filesystem is reported before sqlite is opened.
The file is opened with ``O_NOFOLLOW`` and must be a regular file: a link or FIFO planted in the
state dir is refused, never followed or blocked on. It is never deleted: unlinking a lock file
lets two processes lock two different files of the same name.
"""

from __future__ import annotations

import fcntl
import os
import stat
from typing import BinaryIO

from ckptwatch.errors import StateAccessError, StateLockedError
from ckptwatch.statedb import state_errors

LOCK_NAME = "lock"


class ServiceLock:
    """The held lock of one state dir; ``release`` (or process exit) frees it."""

    def __init__(self, path: str, file: BinaryIO) -> None:
        self.path = path
        self._file = file  # closing it (also when it is garbage-collected) releases the lock

    @classmethod
    def acquire(cls, state_dir: str) -> ServiceLock:
        """Take the lock or raise: ``StateLockedError`` naming the holder's pid, or a ``StateError``."""
        path = os.path.join(state_dir, LOCK_NAME)
        with state_errors(path):
            os.makedirs(state_dir, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        file = os.fdopen(fd, "r+b", buffering=0)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StateAccessError(path, "not a regular file", "Move it away; ckptwatch creates its lock "
                                       "file itself")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _locked(state_dir, path, _holder(fd)) from None
            with state_errors(path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                os.fsync(fd)
        except BaseException:
            file.close()
            raise
        return cls(path, file)

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()


def _holder(fd: int) -> int | None:
    """The pid the holder wrote, or None (it has not written it yet, or the file was edited)."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _locked(state_dir: str, path: str, pid: int | None) -> StateLockedError:
    who = f"another ckptwatch service (pid {pid})" if pid else "another ckptwatch service (pid not known yet)"
    stop = f"`systemctl stop ckptwatch` or `kill {pid}`" if pid else "`systemctl stop ckptwatch`"
    return StateLockedError(state_dir, f"{who} is using this state dir (it holds {path})",
                            f"Two services must not share a state dir: stop the other one ({stop}), or give "
                            "this one its own service.state_dir in its config")
