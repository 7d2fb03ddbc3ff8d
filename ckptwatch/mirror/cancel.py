"""Abort a mirror in flight (SIGTERM, Ctrl-C, the service stopping) without committing anything half-way.

Why a target wrapper: ``copy.copy_file`` writes every chunk through ``Upload.write`` and aborts its upload
(the local temp removed, the S3 multipart upload aborted) on any exception. ``CancellableTarget`` wraps a
``Target`` (``wrap target -> wrapped target``, so it composes with a throttle or progress wrapper) and
makes ``open_write``, every ``write`` and every ``commit`` raise ``Cancelled`` once its ``Cancel`` is set.
``Cancelled`` is no ``OSError`` and no ``MirrorFailed``: it passes through ``copy_file`` (which aborts the
upload on its way out) and through ``mirror_checkpoint`` to the caller, who reports an interrupted copy,
not a failed one. Nothing after the cancel is committed: the manifest and the commit marker are written
through the same ``open_write``. What was already in place stays, named by the copy's journal, so the next
run resumes it.

A write blocked in the kernel or on the network is not interrupted: the check runs between writes (one
``copy.CHUNK``, 4 MiB, or one S3 part going up), which bounds how late a cancel takes effect.
"""

from __future__ import annotations

import threading

from ckptwatch.mirror.target import Target, Upload
from ckptwatch.mirror.wrap import TargetWrapper, UploadWrapper


class Cancelled(Exception):
    """The mirror was asked to stop; the upload in flight was aborted and nothing more is written."""


class Cancel:
    """A thread-safe flag with the reason it was set (``"SIGTERM"``, ``"the service is stopping"``)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise ``Cancelled`` if the flag is set."""
        if self._event.is_set():
            raise Cancelled(f"interrupted ({self.reason})")


class _CancellableUpload(UploadWrapper):
    def __init__(self, inner: Upload, cancel: Cancel) -> None:
        super().__init__(inner)
        self._cancel = cancel

    def write(self, data: bytes | memoryview) -> None:
        self._cancel.check()  # the caller aborts the upload when this raises (copy_file's finally)
        self.inner.write(data)

    def commit(self, mtime_ns: int | None = None) -> None:
        if self._cancel.is_set():  # a commit that fails leaves nothing behind (as the backends' own do)
            self.inner.abort()
            self._cancel.check()
        self.inner.commit(mtime_ns)


class CancellableTarget(TargetWrapper):
    """``target`` with every write checked against ``cancel``; reads, lists and removals pass through
    (the cleanup of an aborted upload must still work)."""

    def __init__(self, target: Target, cancel: Cancel) -> None:
        super().__init__(target)
        self.cancel = cancel

    def open_write(self, name: str) -> Upload:
        self.cancel.check()
        return _CancellableUpload(self.inner.open_write(name), self.cancel)
