"""Byte counters around a target, and percent steps: what the progress bars and ``mirror_progress`` read.

Why around the target: the copy, the restore and the in-place check only ever talk to a ``Target``, so
counting the bytes of its uploads (``write``) or of its readers (``readinto``/``read``) measures them all
without a hook in their loops. Nothing here draws or logs: the CLI feeds a bar (``ckptwatch.progressbar``)
and the service's mirror job a log event from the same counts. Without a bar or an event wanted, the
target is not wrapped at all.

Counts arrive from several threads (``parallel`` copies), so each meter takes a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, BinaryIO

from ckptwatch.mirror.target import Target, Upload
from ckptwatch.mirror.wrap import TargetWrapper, UploadWrapper


class CountingUpload(UploadWrapper):
    """An upload that reports each write's size once it is written."""

    def __init__(self, inner: Upload, on_bytes: Callable[[int], None]) -> None:
        super().__init__(inner)
        self.on_bytes = on_bytes

    def write(self, data: bytes | memoryview) -> None:
        self.inner.write(data)
        self.on_bytes(data.nbytes if isinstance(data, memoryview) else len(data))


class CountingReader:
    """A binary reader that reports the size of every ``readinto``/``read``; the rest is ``inner``'s."""

    def __init__(self, inner: BinaryIO, on_bytes: Callable[[int], None]) -> None:
        self.inner = inner
        self.on_bytes = on_bytes

    def readinto(self, b: Any) -> int:
        n = self.inner.readinto(b)
        if n:
            self.on_bytes(n)
        return n

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        if data:
            self.on_bytes(len(data))
        return data

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # readable(), fileno(), ...: not counted, passed on
        return getattr(self.inner, name)


class CountingTarget(TargetWrapper):
    """``inner``, reporting the bytes written through its uploads (``writes``) and read through its readers
    (``reads``) for the names ``counted`` accepts (all by default)."""

    def __init__(self, inner: Target, on_bytes: Callable[[int], None], *, writes: bool = True,
                 reads: bool = False, counted: Callable[[str], bool] | None = None) -> None:
        super().__init__(inner)
        self.on_bytes = on_bytes
        self.writes, self.reads = writes, reads
        self.counted = counted or (lambda name: True)

    def open_write(self, name: str) -> Upload:
        upload = self.inner.open_write(name)
        return CountingUpload(upload, self.on_bytes) if self.writes and self.counted(name) else upload

    def open_read(self, name: str) -> BinaryIO:
        reader = self.inner.open_read(name)
        if self.reads and self.counted(name):
            return CountingReader(reader, self.on_bytes)  # type: ignore[return-value]
        return reader


class PercentSteps:
    """Bytes done of ``total``, reported as ``emit(percent, done)`` each time a multiple of ``step``
    percent is crossed (one call for a jump over several: at most 100 / ``step`` calls in all).

    ``percent`` never passes 100 (a copy also writes its journal and manifest, counted beyond ``total``).
    Thread-safe; ``emit`` runs under the lock, so calls arrive in order.
    """

    def __init__(self, total: int, emit: Callable[[int, int], None], *, step: int = 10) -> None:
        self.total, self.emit, self.step = total, emit, step
        self.done = 0
        self._shown = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            percent = min(100, self.done * 100 // self.total) if self.total > 0 else 100
            reached = percent - percent % self.step
            if reached > self._shown:
                self._shown = reached
                self.emit(reached, min(self.done, self.total))
