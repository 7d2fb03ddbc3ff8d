"""watchdog adapter: filesystem events become "this run (or this root) is dirty", nothing more.

Events are hints, the scan is the truth (STYLE.md 7): the handler only notes the time of the last
event per run, in O(1) inside try/except (an exception in a watchdog handler silently kills the
observer thread). inotify on local filesystems; polling where inotify does not see other nodes'
writes (network and fuse filesystems: ``poller.CheckpointPoller``), chosen from the mount table and
overridable per watch.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
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
class DirtyScopes:
    """What events touched, and when to judge it: a run root, or a whole watched root.

    Per run: an event inside a known run makes only that run due, so a checkpoint
    written into one run of a 100,000-file root is judged by listing that run, not the root. An event
    the index cannot place (a new run dir, a file beside the runs) makes the whole watched root due.

    A scope is due ``quiet`` (settle_seconds) after the *first* event that dirtied it, not after the
    last: a run whose trainer appends to a log or a TensorBoard file every few seconds is never quiet,
    and a last-event debounce would never judge its checkpoints while it trains. Judging early is safe:
    the engine's settle rule (mtimes, a second look, open files) keeps a checkpoint still being written
    ``in_progress``, and the daemon then schedules that run for the moment the checkpoint would settle.
    Thread-safe; the watchdog handler only calls :meth:`touch`.
    """

    quiet: float = 0.0  # settle_seconds
    _due: dict[tuple[str, str], float] = field(default_factory=dict)  # (watch root, scope) -> due time
    _last_event: dict[tuple[str, str], float] = field(default_factory=dict)  # for "is this run active?";
    # in the order of the last touch, newest last (``touched_since`` reads from the end)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    wake: threading.Event = field(default_factory=threading.Event)

    def touch(self, root: str, when: float, scope: str | None = None) -> None:
        """An event at ``when``: the scope is due ``quiet`` later, unless it is due sooner already."""
        key = (root, scope or root)
        with self._lock:
            self._last_event.pop(key, None)  # re-inserted: the dict stays in the order of the last touch
            self._last_event[key] = when
        self._set(root, scope or root, when + self.quiet)

    def schedule(self, root: str, scope: str, at: float) -> None:
        """Judge ``scope`` at ``at`` even if no event comes (a checkpoint settles, an alert turns due)."""
        self._set(root, scope or root, at)

    def _set(self, root: str, scope: str, due: float) -> None:
        with self._lock:
            key = (root, scope)
            if key not in self._due or self._due[key] > due:
                self._due[key] = due
        self.wake.set()

    def take_due(self, now: float) -> list[tuple[str, str]]:
        """(watch root, scope) pairs due at ``now``, removed from the set.

        A due whole-root scope also takes that root's due run scopes: the root pass judges them.
        """
        with self._lock:
            ready = [k for k, t in self._due.items() if t <= now]
            for k in ready:
                del self._due[k]
        whole = {r for r, scope in ready if scope == r}
        return [(r, scope) for r, scope in ready if scope == r or r not in whole]

    def touched_since(self, since: float) -> list[tuple[str, str]]:
        """(watch root, scope) pairs an event touched after ``since``, newest first.

        Read from the end of the touch order and stopped at the first older one, so the cost is the
        number of recently touched scopes, not every scope an event ever touched: the loss watch asks
        every 5 s which of 10,000 runs are active. After the wall clock stepped back, a scope touched
        after the step (an older stamp, later in the order) hides the ones touched before it: they count
        as quiet (the loss watch's slow round reads them)."""
        with self._lock:
            out = []
            for key in reversed(self._last_event):
                if self._last_event[key] <= since:
                    break
                out.append(key)
            return out

    def forget(self, root: str, scope: str) -> None:
        """A run that is gone: drop its event time and any look scheduled for it."""
        with self._lock:
            self._last_event.pop((root, scope), None)
            self._due.pop((root, scope), None)

    def next_due(self) -> float | None:
        with self._lock:
            return min(self._due.values()) if self._due else None


def scope_of(path: str, root: str, runs: frozenset[str]) -> str:
    """The known run whose tree holds ``path``, else ``root`` (judge the whole watched root).

    Walks up from the event path: O(depth) set lookups, cheap enough for the watchdog thread.
    """
    d = path
    while True:
        if d in runs:
            return d
        if d == root or len(d) <= len(root):
            return root
        parent = os.path.dirname(d)
        if parent == d:
            return root
        d = parent


OVERFLOW_WINDOW_S = 300.0
OVERFLOW_LIMIT = 3  # overflows of one root within the window before it is moved to polling


class OverflowLog(logging.Handler):
    """watchdog reports an inotify queue overflow only through its logger; turn that into a signal.

    After an overflow events were lost, so the root is judged whole (``on_overflow``). watchdog then
    rebuilds every watch, which on a tree of more directories than ``fs.inotify.max_queued_events``
    (16,384 by default) can overflow again, for ever; the daemon moves such a root to polling.
    """

    def __init__(self, on_overflow: Callable[[str | None], None]) -> None:
        super().__init__(level=logging.WARNING)
        self.on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if "overflow" in str(record.msg).lower():
                path = record.args[0] if isinstance(record.args, tuple) and record.args else None
                self.on_overflow(path if isinstance(path, str) else None)
        except Exception:  # noqa: BLE001, S110 - never raise inside watchdog's thread
            pass


def install_overflow_log(on_overflow: Callable[[str | None], None]) -> OverflowLog:
    handler = OverflowLog(on_overflow)
    for name in ("watchdog.observers.inotify", "watchdog.observers.inotify_c"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False  # the service logs the overflow itself, as structured JSON
    return handler


class Watcher:
    """One inotify observer (watchdog) per watched root; restartable when its thread dies. Polling is
    ``poller.CheckpointPoller``'s: watchdog's PollingObserver re-stats every file each interval."""

    def __init__(self, root: str, kind: str, dirty: DirtyScopes, clock: Callable[[], float]) -> None:
        self.root, self.kind, self.dirty, self.clock = root, kind, dirty, clock
        self.observer = None
        self.runs: frozenset[str] = frozenset()  # run roots known below root; replaced whole after each pass

    def start(self) -> None:
        from watchdog.events import (
            DirCreatedEvent,
            DirDeletedEvent,
            DirMovedEvent,
            FileClosedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileMovedEvent,
            FileSystemEvent,
            FileSystemEventHandler,
        )
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                try:
                    if event.event_type in ("opened", "closed_no_write"):
                        return
                    now, runs = watcher.clock(), watcher.runs
                    for path in (event.src_path, getattr(event, "dest_path", "")):
                        if path:
                            path = os.fsdecode(path)
                            watcher.dirty.touch(watcher.root, now, scope_of(path, watcher.root, runs))
                except Exception:  # noqa: BLE001, S110 - never let the observer thread die
                    pass

        observer = Observer()
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
        """The observer thread and its emitter (the thread that reads inotify or polls) both run.

        When the watched root is deleted, watchdog's emitter exits but the observer thread lives on: a
        root deleted and recreated would otherwise stay deaf with a "live" observer.
        """
        if self.observer is None or not self.observer.is_alive():
            return False
        emitters = list(self.observer.emitters)
        return bool(emitters) and all(e.is_alive() for e in emitters)

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
