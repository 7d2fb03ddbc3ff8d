"""watchdog adapter: filesystem events become "this root is dirty", nothing more.

Events are hints, the scan is the truth (STYLE.md 7): the handler only notes the time of the last
event per root, in O(1) inside try/except (an exception in a watchdog handler silently kills the
observer thread). inotify on local filesystems; polling where inotify does not see other nodes'
writes (network and fuse filesystems), chosen from the mount table and overridable per watch.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

NETWORK_FS = {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph", "glusterfs"}


def filesystem_type(path: str) -> str:
    """The type of the filesystem holding ``path`` (the longest matching mount point), or "" if unknown."""
    import psutil

    real = os.path.realpath(path)
    best, kind = "", ""
    try:
        parts = psutil.disk_partitions(all=True)
    except OSError:
        return ""
    for p in parts:
        mp = p.mountpoint.rstrip("/") or "/"
        if (real == mp or real.startswith(mp + "/") or mp == "/") and len(mp) >= len(best):
            best, kind = mp, p.fstype
    return kind


def choose_observer(path: str, override: str) -> str:
    """``inotify`` or ``polling`` for a watch: the override, else polling on network/fuse filesystems."""
    if override in ("inotify", "polling"):
        return override
    kind = filesystem_type(path)
    return "polling" if kind in NETWORK_FS or kind.startswith("fuse") else "inotify"


@dataclass
class DirtyRoots:
    """Roots touched by events, with the time of their last event. Thread-safe; the handler only writes."""

    _last: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    wake: threading.Event = field(default_factory=threading.Event)

    def touch(self, root: str, when: float) -> None:
        with self._lock:
            self._last[root] = when
        self.wake.set()

    def take_settled(self, now: float, quiet: float) -> list[str]:
        """Roots with no event for ``quiet`` seconds, removed from the set."""
        with self._lock:
            ready = [r for r, t in self._last.items() if now - t >= quiet]
            for r in ready:
                del self._last[r]
        return ready

    def next_due(self, quiet: float) -> float | None:
        with self._lock:
            return min(self._last.values()) + quiet if self._last else None


class Watcher:
    """One watchdog observer per watched root; restartable when its thread dies."""

    def __init__(self, root: str, kind: str, dirty: DirtyRoots, clock, poll_interval: float = 5.0) -> None:
        self.root, self.kind, self.dirty, self.clock = root, kind, dirty, clock
        self.poll_interval = poll_interval
        self.observer = None

    def start(self) -> None:
        from watchdog.events import (DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileClosedEvent,
                                     FileCreatedEvent, FileDeletedEvent, FileMovedEvent, FileSystemEventHandler)
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:  # noqa: ANN001 - watchdog's type
                try:
                    if event.event_type not in ("opened", "closed_no_write"):
                        watcher.dirty.touch(watcher.root, watcher.clock())
                except Exception:  # noqa: BLE001 - never let the observer thread die
                    pass

        observer = PollingObserver(timeout=self.poll_interval) if self.kind == "polling" else Observer()
        # Only what a writer does: create, close after writing, rename, delete. Reads (IN_OPEN,
        # IN_ACCESS, IN_CLOSE_NOWRITE) and attribute changes (IN_ATTRIB: atime updates caused by our own
        # reads) would otherwise flood the queue on every pass over a large root; mtimes, the open-files
        # check and the periodic rescan cover what these events leave out.
        writer_events = [FileCreatedEvent, DirCreatedEvent, FileClosedEvent, FileMovedEvent, DirMovedEvent,
                         FileDeletedEvent, DirDeletedEvent]
        observer.schedule(Handler(), self.root, recursive=True, event_filter=writer_events)
        observer.daemon = True
        observer.start()
        self.observer = observer

    def alive(self) -> bool:
        return self.observer is not None and self.observer.is_alive()

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
