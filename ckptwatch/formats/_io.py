"""Small, safe file access for the format readers.

Why a module of its own: every reader must turn the same OS errors into the same findings. A file that
vanishes mid-read was rotated away (``deleted``, transient), a permission error is ``unreadable`` (not
corruption: safetensors 0.8 writes 0600 files), and EIO is a real ``read_error``. Readers call
``problem_from_oserror`` instead of each inventing its own wording.
"""

from __future__ import annotations

import errno
import os

from ckptwatch.model import Problem


def display(path: str) -> str:
    """A path safe to print and to put in JSON (non-UTF-8 bytes shown as \\xNN escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class FormatError(Exception):
    """Raised inside a reader to stop at the first structural fault; ``check_*`` turns it into a Problem."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def problem_from_oserror(path: str, exc: OSError) -> Problem:
    """The finding an OS error on ``path`` means (never a traceback)."""
    code = exc.errno
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
        return Problem("bad_header", path, f"{path} is a directory where a file was expected")
    return Problem("read_error", path, f"{path}: {exc.strerror or exc} (errno {code})")


def read_exact_at(fd: int, offset: int, length: int, path: str) -> bytes:
    """Read exactly ``length`` bytes at ``offset`` or raise ``FormatError('truncated')``."""
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise FormatError("truncated", f"{path} ends at byte {offset + len(data)}, "
                          f"but {length} bytes are needed at offset {offset}")
    return data
