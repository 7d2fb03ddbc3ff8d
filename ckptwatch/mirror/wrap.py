"""A ``Target`` that passes every call to another one: the base of the bandwidth cap and the byte counters.

Why wrappers and not parameters of the copy: the copy (``copy.copy_file``) only ever sees the ``Target``
Protocol, so a cap or a progress meter put around the target applies to every file of a mirror (data,
markers, the journal and the manifest) without the copy knowing. Every method is spelled out instead of
forwarded by ``__getattr__``: a method added to the Protocol later must be added here too, rather than
silently bypass the cap.
"""

from __future__ import annotations

from typing import BinaryIO

from ckptwatch.mirror.target import Target, Upload


class UploadWrapper:
    """An ``Upload`` that passes ``write``, ``commit`` and ``abort`` to ``inner``."""

    def __init__(self, inner: Upload) -> None:
        self.inner = inner

    def write(self, data: bytes | memoryview) -> None:
        self.inner.write(data)

    def commit(self, mtime_ns: int | None = None) -> None:
        self.inner.commit(mtime_ns)

    def abort(self) -> None:
        self.inner.abort()


class TargetWrapper:
    """A ``Target`` that passes every call to ``inner``; subclasses override what they measure."""

    def __init__(self, inner: Target) -> None:
        self.inner = inner
        self.url = inner.url

    def describe(self, name: str) -> str:
        return self.inner.describe(name)

    def list(self, prefix: str) -> dict[str, int]:
        return self.inner.list(prefix)

    def stat(self, name: str) -> int | None:
        return self.inner.stat(name)

    def open_write(self, name: str) -> Upload:
        return self.inner.open_write(name)

    def open_read(self, name: str) -> BinaryIO:
        return self.inner.open_read(name)

    def remove(self, name: str) -> None:
        self.inner.remove(name)


def innermost(target: Target) -> Target:
    """The backend under every wrapper (what a lock asks: is this a local directory or object storage?)."""
    while isinstance(target, TargetWrapper):
        target = target.inner
    return target
