"""The service's filesystem observers: one per watched root, started, restarted and downgraded here.

Why apart from the daemon: keeping observers alive is its own job with its own faults (an inotify
limit, a root the service's user cannot read, a root deleted under a live observer, a queue that keeps
overflowing), and none of it concerns what happens to a verdict. Observers only make scopes dirty
(``DirtyScopes``); every fault goes to the one fault reporter.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ckptwatch.model import RunReport, Status
from ckptwatch.poller import CheckpointPoller
from ckptwatch.watch import OVERFLOW_LIMIT, OVERFLOW_WINDOW_S, DirtyScopes, Watcher, choose_observer

if TYPE_CHECKING:
    from ckptwatch.config import WatchConfig
    from ckptwatch.sinks.base import FaultReporter


class Observers:
    def __init__(self, dirty: DirtyScopes, clock: Callable[[], float], log: Any,
                 faults: FaultReporter) -> None:
        self.dirty = dirty
        self.clock = clock
        self.log = log
        self.faults = faults
        self.watches: tuple[WatchConfig, ...] = ()
        self.watchers: dict[str, Watcher | CheckpointPoller] = {}  # watched root -> its running observer
        self.overflows: list[tuple[float, str]] = []  # appended by watchdog's thread
        self.overflow_history: list[tuple[float, str]] = []

    def start(self, watches: tuple[WatchConfig, ...], run_index: Mapping[str, frozenset[str]]) -> None:
        self.watches = watches
        for w in watches:
            self._start(w, run_index)

    def stop(self) -> None:
        for watcher in self.watchers.values():
            watcher.stop()
        self.watchers.clear()

    def set_runs(self, root: str, runs: frozenset[str]) -> None:
        """The runs a whole-root pass found: events inside one of them make only that run due."""
        watcher = self.watchers.get(root)
        if watcher is not None:
            watcher.runs = runs

    def judged(self, root: str, run: RunReport) -> None:
        """A run's verdicts: a poller stops polling the directories of its complete checkpoints."""
        watcher = self.watchers.get(root)
        if isinstance(watcher, CheckpointPoller):
            complete = frozenset(v.path for v in run.checkpoints if v.status is Status.COMPLETE)
            watcher.settled(run.root, complete)

    def poll_counts(self) -> dict[str, tuple[int, int]]:
        """Watched root -> (stat calls, listdir calls) its poller made since it started. Called from the
        metrics endpoint's thread: ``list(...)`` copies the dict in one step under the GIL."""
        return {root: (w.ops.stats, w.ops.listdirs) for root, w in list(self.watchers.items())
                if isinstance(w, CheckpointPoller)}

    def _make(self, w: WatchConfig, kind: str) -> Watcher | CheckpointPoller:
        if kind == "polling":
            return CheckpointPoller(w.path, self.dirty, self.clock, interval=w.poll_interval,
                                    max_stats_per_second=w.max_stats_per_second)
        return Watcher(w.path, kind, self.dirty, self.clock)

    def _start(self, w: WatchConfig, run_index: Mapping[str, frozenset[str]]) -> None:
        if not os.path.isdir(w.path):
            if w.path not in self.watchers:
                self.log.warning("root_missing", root=w.path, action="waiting for it to appear")
            return
        component = f"watcher of {w.path}"
        watcher = self._make(w, choose_observer(w.path, w.observer))
        try:
            watcher.start()
        except OSError as exc:  # inotify watch or instance limit: fall back to polling
            self.log.warning("observer_fallback", root=w.path, error=str(exc), observer="polling")
            watcher = self._make(w, "polling")
            try:
                watcher.start()
            except OSError as exc2:  # e.g. the root is not readable by the service's user
                error = f"{exc2.strerror or exc2}: {getattr(exc2, 'filename', None) or w.path}"
                self.faults.report(component, error, f"give the ckptwatch user read and execute access to "
                                   f"{w.path}; retrying every loop; the rescan still judges what it can read",
                                   root=w.path)
                return
        self.watchers[w.path] = watcher
        self.faults.ok(component)
        watcher.runs = run_index.get(w.path, frozenset())

    def check(self, run_index: Mapping[str, frozenset[str]]) -> None:
        """Start observers for roots that appeared; restart dead ones (a deleted root kills its emitter)."""
        for w in self.watches:
            watcher = self.watchers.get(w.path)
            if watcher is None:
                if os.path.isdir(w.path):
                    self._start(w, run_index)
                    self.dirty.touch(w.path, self.clock())
                continue
            if not watcher.alive():
                self.log.error("observer_died", root=w.path, action="restarted; rescanning the root")
                del self.watchers[w.path]
                self._start(w, run_index)
                self.dirty.touch(w.path, self.clock())

    def on_overflow(self, path: str | None) -> None:
        """Called in watchdog's thread: events were lost, so the root (or every root) is judged whole."""
        now = self.clock()
        if path is None:  # watchdog logs each overflow twice, once without a path: judge all, count none
            for w in self.watches:
                self.dirty.touch(w.path, now)
            return
        for w in self.watches:
            if path == w.path or path.startswith(w.path.rstrip(os.sep) + os.sep):
                self.overflows.append((now, w.path))
                self.dirty.touch(w.path, now)

    def handle_overflows(self) -> None:
        """Log each overflow once; a root that keeps overflowing is moved to polling."""
        if not self.overflows:
            return
        now = self.clock()
        taken, self.overflows = self.overflows, []
        self.overflow_history = [(t, r) for t, r in [*self.overflow_history, *taken]
                                 if now - t <= OVERFLOW_WINDOW_S]
        for root in sorted({r for _, r in taken}):
            recent = sum(1 for _, r in self.overflow_history if r == root)
            self.log.warning("inotify_overflow", root=root, recent=recent,
                             action="events were lost; judging the whole root again")
            watcher = self.watchers.get(root)
            if recent >= OVERFLOW_LIMIT and watcher is not None and watcher.kind == "inotify":
                self.log.warning("observer_fallback", root=root, observer="polling",
                                 error=f"inotify queue overflowed {recent} times in "
                                       f"{OVERFLOW_WINDOW_S:.0f} s",
                                 action="raise fs.inotify.max_queued_events (sysctl) above the number of "
                                        "directories below the root, or set observer = \"polling\" for it")
                watcher.stop()
                w = next(w for w in self.watches if w.path == root)
                self.watchers[root] = self._make(w, "polling")
                self.watchers[root].runs = watcher.runs
                self.watchers[root].start()
                self.overflow_history = [(t, r) for t, r in self.overflow_history if r != root]
