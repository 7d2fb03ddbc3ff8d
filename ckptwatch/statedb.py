"""Opening the service's sqlite file, and turning sqlite and OS failures on it into operator errors.

Why one module: the state store and the alert ledger open the same file, at start and, through every
write, for the service's whole life. Both must say the same thing when the file cannot be used: what
is wrong, the path, and what to do (``errors.StateError``, with its exit code). A failure not
recognised here is raised unchanged: a bug (exit 3), or a ``service_error`` when the service is running.

sqlite reports a full disk as ``SQLITE_FULL`` when a write comes up short, but as a plain I/O error
(``SQLITE_IOERR_SHMSIZE``) when it cannot grow the WAL index on open; an I/O error on a filesystem
with less than ``LOW_SPACE_BYTES`` available is therefore reported as a full disk.
"""

from __future__ import annotations

import errno
import os
import pwd
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

from ckptwatch.errors import DiskFullError, StateAccessError, StateCorruptError, StateError, StateLockedError

STATE_FILE = "state.sqlite"
LOW_SPACE_BYTES = 1 << 20


def connect(path: str, *, read_only: bool = False, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    """A connection to the state file in autocommit mode (callers open their own transactions).

    Writable: creates the directory and the file, WAL journal (``ckptwatch status`` reads while the
    service writes), and ``busy_timeout`` so the service's two connections wait for each other.
    Read-only: never creates or writes anything; the file's header is read at once, so a file that
    is not a database fails here rather than at the first query.
    """
    with state_errors(path, reading=read_only):
        if read_only:
            db = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, isolation_level=None)
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return db
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                             timeout=busy_timeout_ms / 1000)
        db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db


@contextmanager
def state_errors(path: str, *, reading: bool = False) -> Iterator[None]:
    """Re-raise an sqlite or OS failure on the state file at ``path`` as the matching ``StateError``."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        mapped = translate(exc, path, reading=reading)
        if mapped is None:
            raise
        raise mapped from exc


def translate(exc: BaseException, path: str, *, reading: bool = False) -> StateError | None:
    """The operator error ``exc`` means for the state file at ``path``, or None if it is not one."""
    if isinstance(exc, sqlite3.Error):
        return _from_sqlite(exc, path, reading)
    if isinstance(exc, OSError):
        return _from_os(exc, path, reading)
    return None


def _from_sqlite(exc: sqlite3.Error, path: str, reading: bool) -> StateError | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return None
    primary = code & 0xFF
    said = f"sqlite: {exc}, {getattr(exc, 'sqlite_errorname', code)}"
    if primary == sqlite3.SQLITE_FULL:
        return disk_full(path, said)
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return corrupt(path, f"not a usable sqlite database ({said})")
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StateLockedError(path, f"the database stayed locked by another connection ({said})",
                                "Close what else has it open (an sqlite3 shell, a backup tool, a ckptwatch "
                                "too old to take the state dir's lock), or give this service its own "
                                "service.state_dir")
    if primary == sqlite3.SQLITE_IOERR:
        if _low_space(path):
            return disk_full(path, said)
        return StateAccessError(path, f"an I/O error ({said})", "Check the disk and the filesystem holding "
                                f"{_dir(path)} (dmesg), or set service.state_dir to another filesystem")
    if primary in (sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN,
                   sqlite3.SQLITE_AUTH):
        return StateAccessError(path, f"{_why_unusable(path, reading)} ({said})",
                                _access_action(path, reading))
    return None


def _from_os(exc: OSError, path: str, reading: bool) -> StateError | None:
    where = os.fsdecode(exc.filename) if exc.filename else path
    said = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full(where, said)
    if exc.errno == errno.EROFS:
        return StateAccessError(where, f"on a read-only filesystem ({said})", _read_only_fs_action())
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StateAccessError(where, f"permission denied for {_user()}", _access_action(path, reading))
    if exc.errno == errno.ELOOP:
        return StateAccessError(where, "a symlink; ckptwatch does not follow links in its state dir",
                                "Move the link away; ckptwatch creates the file itself")
    if exc.errno in (errno.EISDIR, errno.ENOTDIR):
        return StateAccessError(where, f"not a regular file ({said})",
                                "Move it away; ckptwatch creates the file itself")
    if exc.errno == errno.EIO:
        if _low_space(where):
            return disk_full(where, said)
        return StateAccessError(where, f"an I/O error ({said})", f"Check the disk and the filesystem holding "
                                f"{_dir(where)} (dmesg), or set service.state_dir to another filesystem")
    return None


def disk_full(path: str, said: str) -> DiskFullError:
    d = _dir(path)
    return DiskFullError(path, f"no space left on the filesystem holding it ({said})",
                         f"Free space there (`df -h {d}`), or set service.state_dir to a filesystem with "
                         "room; the state needs a few MB")


def corrupt(path: str, problem: str) -> StateCorruptError:
    return StateCorruptError(path, problem, f"Stop the service, move the file aside, do not delete it "
                             f"(`mv {path} {path}.bad`, and its -wal and -shm files with it if present), "
                             "then start the service: it builds a new state by judging every root again "
                             "(alerts still open may be sent once more)")


def _why_unusable(path: str, reading: bool) -> str:
    """What stops this user from opening (or writing beside) ``path``, measured, in words."""
    d = _dir(path)
    if os.path.isdir(path):
        return "a directory where the state file belongs"
    if _read_only_fs(d):
        return "on a read-only filesystem"
    if not os.path.isdir(d):
        return f"its directory {d} does not exist"
    if os.path.exists(path) and not os.access(path, os.R_OK if reading else os.R_OK | os.W_OK):
        return f"permission denied: {_user()} cannot {'read' if reading else 'write'} it"
    if not os.access(d, os.W_OK | os.X_OK):
        name = os.path.basename(path)
        return (f"permission denied: {_user()} cannot create files in {d} (sqlite keeps {name}-wal and "
                f"{name}-shm beside it{', even to read' if reading else ''})")
    return "cannot be opened"


def _access_action(path: str, reading: bool) -> str:
    if _read_only_fs(_dir(path)):
        return _read_only_fs_action()
    if reading:
        return "Run `ckptwatch status` as root or as the user the service runs as"
    return (f"Give the service's user write access to {_dir(path)}, or set service.state_dir to a "
            "directory it can write (under systemd, StateDirectory=ckptwatch provides /var/lib/ckptwatch)")


def _read_only_fs_action() -> str:
    return ("Set service.state_dir to a directory on a writable filesystem (under systemd, "
            "ProtectSystem=strict leaves StateDirectory=ckptwatch, /var/lib/ckptwatch, writable)")


def _dir(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:  # a DynamicUser= or container uid without a passwd entry
        return f"uid {uid}"


def _read_only_fs(directory: str) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _low_space(path: str) -> bool:
    """Less than LOW_SPACE_BYTES available (to this user) on the filesystem holding ``path``."""
    probe = path if os.path.isdir(path) else _dir(path)
    try:
        st = os.statvfs(probe)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < LOW_SPACE_BYTES
