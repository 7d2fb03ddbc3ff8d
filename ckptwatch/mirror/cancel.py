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
from typing import Any, BinaryIO

from ckptwatch.mirror.target import Target, Upload


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


class _CancellableUpload:
    def __init__(self, inner: Upload, cancel: Cancel) -> None:
        self._inner, self._cancel = inner, cancel

    def write(self, data: bytes | memoryview) -> None:
        self._cancel.check()  # the caller aborts the upload when this raises (copy_file's finally)
        self._inner.write(data)

    def commit(self, mtime_ns: int | None = None) -> None:
        if self._cancel.is_set():  # a commit that fails leaves nothing behind (as the backends' own do)
            self._inner.abort()
            self._cancel.check()
        self._inner.commit(mtime_ns)

    def abort(self) -> None:
        self._inner.abort()


class CancellableTarget:
    """``target`` with every write checked against ``cancel``; reads, lists and removals pass through
    (the cleanup of an aborted upload must still work)."""

    def __init__(self, target: Target, cancel: Cancel) -> None:
        self.inner = target
        self.cancel = cancel
        self.url = target.url

    def describe(self, name: str) -> str:
        return self.inner.describe(name)

    def list(self, prefix: str) -> dict[str, int]:
        return self.inner.list(prefix)

    def stat(self, name: str) -> int | None:
        return self.inner.stat(name)

    def open_write(self, name: str) -> Upload:
        self.cancel.check()
        return _CancellableUpload(self.inner.open_write(name), self.cancel)

    def open_read(self, name: str) -> BinaryIO:
        return self.inner.open_read(name)

    def remove(self, name: str) -> None:
        self.inner.remove(name)

    def __getattr__(self, name: str) -> Any:  # anything else a backend offers (endpoint_url, ...)
        if name == "inner":  # not set yet (a copy or unpickling): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.inner, name)
