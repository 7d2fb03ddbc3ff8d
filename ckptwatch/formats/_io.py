"""Small, safe file access for the format readers.

Why a module of its own: every reader must turn the same OS errors into the same findings. A file that
vanishes mid-read was rotated away (``deleted``, transient), a permission error is ``unreadable`` (not
corruption: safetensors 0.8 writes 0600 files), and EIO is a real ``read_error``. Readers call
``problem_from_oserror`` instead of each inventing its own wording.

It is also the one way a reader opens a file (``open_regular``; DESIGN.md invariant 7): only a regular
file is ever read, because opening a FIFO for reading blocks until a writer appears (for ever, in the
service's loop) and a directory or device where a file belongs is a finding, not an I/O error. And
while a watched root is set (``confined_to``), nothing outside it is opened through a symlink: roots are
writable by others, and a link planted in a checkpoint must not make ckptwatch read (or, for a
device, even open) what it points to.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from ckptwatch.model import Problem


def display(path: str) -> str:
    """A path safe to print and to put in JSON (non-UTF-8 bytes shown as \\xNN escapes)."""
    if type(path) is str and path.isascii():  # nearly every path (undecodable bytes are not ASCII)
        return path
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class FormatError(Exception):
    """Raised inside a reader to stop at the first structural fault; ``check_*`` turns it into a Problem."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class NotRegularFile(OSError):
    """``open_regular`` found a FIFO, directory, device, socket or symlink loop where a file belongs."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(errno.EINVAL, f"{what}, not a regular file", path)
        self.what = what


class OutsideRoot(OSError):
    """``open_regular`` refused a path whose real location is outside the watched root."""

    def __init__(self, path: str, target: str, root: str) -> None:
        super().__init__(errno.EACCES, f"leads outside {root}", path)
        self.target = target
        self.root = root


def not_regular_problem(path: str, what: str) -> Problem:
    """The one wording of ``not_regular_file`` (the listing and the readers report the same finding)."""
    return Problem("not_regular_file", display(path),
                   f"{display(path)} is {what} where a regular file belongs; it was not read")


def unsafe_link_problem(path: str, target: str, root: str) -> Problem:
    """The one wording of a symlink leaving the watched root (the listing and the readers agree)."""
    return Problem("unsafe_path", display(path), f"{display(path)} is a symlink to {display(target)}, "
                   f"outside {display(root)}; it was not read")


def kind_of_mode(mode: int) -> str:
    """What a non-regular file is, for messages."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


_ROOT: contextvars.ContextVar[str | None] = contextvars.ContextVar("ckptwatch_root", default=None)


@contextlib.contextmanager
def confined_to(root: str) -> Iterator[None]:
    """While active, ``open_regular`` opens nothing whose real location is outside ``root``."""
    token = _ROOT.set(os.path.realpath(root))
    try:
        yield
    finally:
        _ROOT.reset(token)


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _check_confined(path: str, fd: int | None, root: str) -> None:
    """Raise ``OutsideRoot`` when ``path`` (or what the open ``fd`` really is) lies outside ``root``."""
    real = None
    if fd is not None:
        with contextlib.suppress(OSError):
            real = os.readlink(f"/proc/self/fd/{fd}")  # what the kernel opened: no race with a swap
    if real is None or not real.startswith(os.sep):
        real = os.path.realpath(path)
    if not _inside(real, root):
        raise OutsideRoot(path, real, root)


def open_regular(path: str, *, follow: bool = True) -> int:
    """A read-only fd of ``path``, only when it is a regular file (inside the watched root, if one is set).

    The open never blocks (``O_NONBLOCK``; a FIFO opens at once and is then refused), the type is checked
    with ``fstat`` on the open fd (no race with a rename between a stat and the open), and O_NONBLOCK is
    cleared before the caller reads. The first open does not follow a link (``O_NOFOLLOW``), so the
    common case (a plain file) costs open, fstat, one readlink and one fcntl. Only a path that is a
    symlink takes the slow road: a link leaving the root is refused before it is opened (a device out
    there is never even opened), then it is opened following the link. Either way, what was opened is
    checked again through ``/proc/self/fd`` (a parent directory or the link swapped in between). Raises
    ``NotRegularFile``, ``OutsideRoot`` or the ``OSError`` of the open; ``problem_from_oserror`` turns
    each into its finding. ``follow=False``: a symlink at ``path`` itself is refused (a file of ours
    that someone may have replaced with a link).
    """
    root = _ROOT.get()
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno != errno.ELOOP:  # Linux: O_NOFOLLOW on a symlink fails with ELOOP
            raise
        if not follow:
            raise NotRegularFile(path, "a symlink") from None
        fd = _open_link(path, flags, root)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(path, kind_of_mode(st.st_mode))
        if root is not None:
            _check_confined(path, fd, root)
        fcntl.fcntl(fd, fcntl.F_SETFL, 0)  # clears O_NONBLOCK: the only status flag this open set
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_link(path: str, flags: int, root: str | None) -> int:
    """Open a ``path`` that is a symlink (or a loop), following it only when it stays inside ``root``."""
    if root is not None:
        _check_confined(path, None, root)
    try:
        return os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFile(path, "a symlink loop") from None
        raise


def open_regular_file(path: str, *, follow: bool = True) -> BinaryIO:
    """``open_regular`` as a buffered binary file object (``with open_regular_file(p) as f``)."""
    return os.fdopen(open_regular(path, follow=follow), "rb")


def problem_from_oserror(path: str, exc: OSError) -> Problem:
    """The finding an OS error on ``path`` means (never a traceback)."""
    if isinstance(exc, NotRegularFile):
        return not_regular_problem(path, exc.what)
    if isinstance(exc, OutsideRoot):
        return unsafe_link_problem(path, exc.target, exc.root)
    code = exc.errno
    if code == errno.ENOENT and os.path.islink(path):
        return Problem("dangling_symlink", path, f"{path} points to {_readlink(path)}, which does not exist")
    if code in (errno.ENOENT, errno.ESTALE):
        return Problem("deleted", path, f"{path} vanished while it was being read")
    if code in (errno.EACCES, errno.EPERM):
        try:
            st = os.stat(path)
            mode = f"mode {st.st_mode & 0o777:04o}, owner uid {st.st_uid}"
        except OSError:
            mode = "mode unknown"
        return Problem("unreadable", path, f"{path} cannot be read by uid {os.geteuid()} ({mode})")
    if code == errno.ELOOP:
        return Problem("symlink_loop", path, f"{path} is a symlink loop")
    if code == errno.EISDIR:
        return not_regular_problem(path, "a directory")
    if code == errno.ENAMETOOLONG:
        return Problem("too_deep", path, f"{path[:200]}...: the path is longer than the system allows "
                       "(a directory nested too deep); not examined")
    return Problem("read_error", path, f"{path}: {exc.strerror or exc} (errno {code})")


def _readlink(path: str) -> str:
    try:
        return display(os.readlink(path))
    except OSError:
        return "?"


def read_exact_at(fd: int, offset: int, length: int, path: str) -> bytes:
    """Read exactly ``length`` bytes at ``offset`` or raise ``FormatError('truncated')``."""
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise FormatError("truncated", f"{path} ends at byte {offset + len(data)}, "
                          f"but {length} bytes are needed at offset {offset}")
    return data


def read_to_end(fd: int, size_hint: int, limit: int | None = None) -> bytes:
    """The bytes of ``fd`` from offset 0 to its end (a file still growing is read as far as it has got).

    ``size_hint`` (the fstat size) sizes the first read; ``limit`` caps the total, so a file appended to
    while it is read cannot make the read unbounded.
    """
    chunks: list[bytes] = []
    offset = 0
    want = max(size_hint, 1 << 12)
    while limit is None or offset < limit:
        if limit is not None:
            want = min(want, limit - offset)
        data = os.pread(fd, want, offset)
        if not data:
            break
        chunks.append(data)
        offset += len(data)
    return b"".join(chunks)
