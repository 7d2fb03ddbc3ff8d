"""A polling observer made for checkpoints: directory stamps, looked at often where things can change.

Why not watchdog's ``PollingObserver``: it re-walks and re-stats every file of the root each interval
(23 % of a core and 233 MiB for a 90,000-file tree, every stat a metadata-server round trip on Lustre).
ckptwatch knows more than a generic poller does:

- a checkpoint appears, is rewritten or is deleted as entries of a directory: a new entry changes its
  directory's mtime, so one ``stat`` of a directory says whether anything was created, renamed or
  removed in it, and only then is it listed (``scandir``; its entry types come with the listing);
- a settled, complete checkpoint does not change: once the service judged it complete, its directory
  and everything below it leave the poll set. They wait for the service's whole-root rescan
  (``rescan_seconds``), which judges every file again;
- files being written into an unsettled checkpoint need no polling here: the first new entry makes the
  run due, and the engine's settle rule (mtimes, a second look, open files) keeps it ``in_progress`` and
  schedules the run for the moment it would settle.

What is polled, per watched root: the root, the dirs on the way to each run and each run dir
(``structural``), and every other directory below a run that is not inside a complete checkpoint (an
unsettled checkpoint, a per-rank dir such as MindSpore's ``rank_0``, a TensorBoard dir). The cadence,
from how long a directory's entries have been quiet (``poll_every``):

- a structural dir whose entries changed within ``RUN_QUIET_AFTER`` (6 hours): every ``interval``,
  never backed off, so a new checkpoint in a run that saves every two hours is seen within one
  interval; quiet for longer (a finished run, a root no run was added to): every ``MAX_BACKOFF`` (12)
  intervals;
- any other dir: every ``interval`` while it changed within ``QUIET_AFTER`` (5 minutes), then twice the
  interval per further 5 minutes of quiet, up to 12 times;
- "changed" is the last change the poller saw, and before its first look the directory's mtime (a new,
  removed or renamed entry sets it): after a restart a run that finished last month is polled every 12
  intervals at once, not every interval for 6 hours. The first look at a directory is one interval
  after it was found, whatever its age; any change of its stamp puts it back to every interval. An
  mtime in the future counts as "just now"; a metadata server whose clock is hours behind makes an
  active run look quiet until its next new entry (seen then within 12 intervals).

What polling costs: one ``lstat`` per polled directory per look, and a ``scandir`` only of a directory
whose stamp changed. 10,000 runs all written within 6 hours: 2,000 looks a second at a 5 s interval;
the same runs finished days ago: 167 a second.

Every ``stat`` and ``scandir`` is counted (``MetaOps``) for the metrics, and goes through a token bucket
when the watch sets ``max_stats_per_second``: the poller then takes longer over a round instead of
exceeding the budget. Symlinks are never followed (a link out of the root is not ours to poll), and the
walk is iterative (a 10,000-deep tree is no recursion limit). The poller only makes scopes dirty
(``DirtyScopes.touch``); it never judges, and nothing it sees is trusted beyond "look again".
"""

from __future__ import annotations

import heapq
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ckptwatch.watch import DirtyScopes, scope_of

QUIET_AFTER = 300.0  # seconds without a change before a non-structural dir is polled less often
RUN_QUIET_AFTER = 6 * 3600.0  # a run dir (or the root) this long without a new entry: a finished run
MAX_BACKOFF = 12  # a quiet dir is polled at most this many intervals apart
MAX_AGE = 30 * 86400.0  # a dir's age from its mtime is counted up to this (quiet is quiet past it)
MIN_WAIT = 0.05  # the loop never spins faster than this
BATCH = 0.05  # a round also looks at what is due within this fraction of the interval (see round)


def poll_every(interval: float, quiet_for: float, structural: bool) -> float:
    """How long until a directory is looked at again. Pure.

    Structural dirs (the root, the way to the runs, the run dirs) every ``interval``: a new checkpoint
    shows there, and a run that saves every two hours is quiet between saves, yet its next checkpoint
    must be judged within settle + interval. Only after ``RUN_QUIET_AFTER`` without a new entry (a run
    that finished, or a root no run was added to) are they looked at ``MAX_BACKOFF`` intervals apart.
    Others every ``interval`` while they changed within ``QUIET_AFTER``, then twice as long per further
    ``QUIET_AFTER`` of quiet, capped at ``MAX_BACKOFF`` intervals.
    """
    if structural:
        return interval if quiet_for < RUN_QUIET_AFTER else interval * MAX_BACKOFF
    if quiet_for < QUIET_AFTER:
        return interval
    return interval * min(MAX_BACKOFF, 2 ** int(quiet_for // QUIET_AFTER))


class TokenBucket:
    """At most ``rate`` operations per second on average, bursts of up to one second's worth.

    ``take`` waits through ``wait`` (the poller's stop event's ``wait``, so a stop interrupts it) and
    returns False when stopped. ``rate`` None or 0: no limit. The clock and wait are injected (tests).
    """

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[float], bool] | None = None) -> None:
        self.rate = rate or None
        self.clock = clock
        self.wait = wait or (lambda s: time.sleep(s) or False)
        self.tokens = float(self.rate or 0)
        self.at = clock()

    def take(self) -> bool:
        if self.rate is None:
            return True
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            need = (1.0 - self.tokens) / self.rate
            if self.wait(need):
                return False
            self.at, self.tokens = now + need, 1.0  # the token exists from then on (no float re-check)
        self.tokens -= 1.0
        return True


@dataclass
class MetaOps:
    """The metadata operations the poller makes, counted (the metrics report them), under a budget."""

    budget: TokenBucket = field(default_factory=lambda: TokenBucket(None))
    stats: int = 0
    listdirs: int = 0

    def stat(self, path: str) -> os.stat_result | None:
        """``lstat`` of ``path``; None when stopped before it could be made within the budget."""
        if not self.budget.take():
            return None
        self.stats += 1
        return os.lstat(path)

    def subdirs(self, path: str) -> list[str] | None:
        """The subdirectories of ``path`` (entry types from the listing, links not followed)."""
        if not self.budget.take():
            return None
        self.listdirs += 1
        with os.scandir(path) as it:
            return [e.path for e in it if e.is_dir(follow_symlinks=False)]


@dataclass(slots=True)  # 10,000s of them: no __dict__ each (memory, and a look reads two fields)
class _Dir:
    stamp: tuple[int, int]  # (mtime_ns, inode): a new, removed or renamed entry changes the mtime
    changed: float  # monotonic time its entries last changed (at the first look: from its mtime)
    due: float  # monotonic time of its next look
    children: set[str] = field(default_factory=set)  # polled subdirectories


class Stopped(Exception):
    """The poller was stopped in the middle of a round."""


class CheckpointPoller:
    """One watched root's poller thread; the same face as ``watch.Watcher`` (``start``, ``alive``,
    ``stop``, ``runs``, ``kind``) plus ``settled``, which the daemon calls with each run's verdicts."""

    kind = "polling"

    def __init__(self, root: str, dirty: DirtyScopes, clock: Callable[[], float], *, interval: float = 5.0,
                 max_stats_per_second: float | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.dirty = dirty
        self.clock = clock  # the daemon's clock, for the times handed to DirtyScopes
        self.monotonic = monotonic
        self.interval = interval
        self._stop = threading.Event()
        self.ops = MetaOps(TokenBucket(max_stats_per_second, monotonic, self._stop.wait))
        self.dirs: dict[str, _Dir] = {}
        # When each dir is due: (due, path) entries in three queues (see round). An entry whose due is no
        # longer its dir's (looked at since, or dropped) is skipped when it comes up.
        self._every: deque[tuple[float, str]] = deque()  # due one interval after a look: in due order
        self._slow: deque[tuple[float, str]] = deque()  # due MAX_BACKOFF intervals after: in due order
        self._due: list[tuple[float, str]] = []  # a heap: every other wait
        self._lock = threading.Lock()
        self._runs: frozenset[str] = frozenset()
        self._structural: frozenset[str] = frozenset({root})
        self._cold_by_run: dict[str, frozenset[str]] = {}  # what the daemon said (loop thread, locked)
        self._pending: dict[str, frozenset[str]] = {}  # run -> its complete checkpoints, not yet applied
        self._applied: dict[str, frozenset[str]] = {}  # the poller thread's copy
        self._cold: set[str] = set()  # complete checkpoint dirs: not polled, not descended into
        self._thread: threading.Thread | None = None
        self._started_wall: float | None = None  # wall time of start(): see prime
        self.rounds = 0

    # --- what the daemon tells it (loop thread) ---------------------------------------------------

    @property
    def runs(self) -> frozenset[str]:
        return self._runs

    @runs.setter
    def runs(self, runs: frozenset[str]) -> None:
        structural = {self.root}
        for run in runs:
            d = run
            while len(d) > len(self.root) and d not in structural:
                structural.add(d)
                d = os.path.dirname(d)
        with self._lock:
            self._runs = frozenset(runs)
            self._structural = frozenset(structural)
            for gone in set(self._cold_by_run) - set(runs):
                del self._cold_by_run[gone]
                self._pending[gone] = frozenset()

    def settled(self, run_root: str, complete: frozenset[str]) -> None:
        """The run's complete checkpoints (paths): their directories leave the poll set."""
        with self._lock:
            if self._cold_by_run.get(run_root) != complete:
                self._cold_by_run[run_root] = complete
                self._pending[run_root] = complete

    # --- thread ------------------------------------------------------------------------------------

    def start(self) -> None:
        if not os.path.isdir(self.root):
            raise FileNotFoundError(2, "No such file or directory", self.root)
        self.ops.subdirs(self.root)  # raises for a root the service's user cannot list, as watchdog does
        self._stop.clear()
        self._started_wall = time.time()
        self._thread = threading.Thread(target=self._main, name=f"ckptwatch-poll {self.root}", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _main(self) -> None:
        try:
            self.prime()
            while not self._stop.is_set():
                wait = self.round()
                if wait is None or self._stop.wait(wait):
                    return
        except Stopped:
            return
        except Exception:  # noqa: BLE001 - the thread ends; Observers.check restarts it and rescans
            return

    def prime(self) -> None:
        """The first look: every directory below the root that is not known complete. Each later change
        is measured against the stamps taken here; a change made after ``start`` but before its
        directory was stamped (the first walk takes a while on a big tree, or under a budget, while the
        service's catch-up pass runs) would be missed, so a directory whose mtime is not older than
        ``start`` makes its scope due right away (one extra look at worst)."""
        self._apply_cold()
        self._add(self.root, self.monotonic(), since=self._started_wall)

    def round(self) -> float | None:
        """Look at every due directory once; the seconds until the next is due, None when the root is
        gone (the thread ends, and ``Observers.check`` restarts it when the root is back).

        Why queues and a batch: with 10,000 run dirs each looked at on its own schedule, their due times
        spread over the interval. Scanning every record to find the due ones (and the next due) each time
        one came due cost 12 % of a core at 1,000,000 files, for 2,000 stats a second that cost 0.7 %.
        A round takes what falls due within ``BATCH`` of the interval (looked at up to 0.25 s early at
        5 s), so the thread wakes at most ~20 times an interval however many dirs there are. Most looks
        schedule the next one a fixed wait later (one interval, or ``MAX_BACKOFF`` of them), so those
        go to the end of a FIFO that stays in due order (the clock only moves forward): O(1) each. A
        heap of 10,000 entries due at the same moment (a first walk stamps them all at once) compared
        their paths at every step, and cost as much as the ``lstat``. Other waits, and an entry that
        would be out of order (a clock that stood still, a test's), go to the heap.

        Why the look is inlined here: at 10,000 run dirs polled every interval, 2,000 looks a second
        find their dir unchanged. Through ``_look`` (the budget, the counter, ``poll_every``,
        ``_schedule``: six calls) a look cost ~6.5 us, 1.3 % of a core; the loop below does the same for
        an unchanged dir without a budget in one ``lstat``, a compare and an append (``_seen`` takes
        a change, ``_gone`` an error; under a budget every look goes through ``_look``)."""
        self._apply_cold()
        now = self.monotonic()
        horizon = now + BATCH * self.interval
        dirs, heap, every, slow = self.dirs, self._due, self._every, self._slow
        fast = self.ops.budget.rate is None
        structural = self._structural
        interval, slow_wait = self.interval, self.interval * MAX_BACKOFF
        lstat, isdir = os.lstat, stat.S_ISDIR
        queues = ((heap, lambda: heapq.heappop(heap)), (every, every.popleft), (slow, slow.popleft))
        fast_looks = 0
        try:
            for queue, take in queues:
                while queue and queue[0][0] <= horizon:
                    due, path = take()
                    d = dirs.get(path)
                    if d is None or d.due != due:
                        continue
                    if not fast:
                        self._look(path, d)
                        continue
                    fast_looks += 1
                    try:
                        st = lstat(path)
                    except OSError:
                        self._gone(path)
                        continue
                    if st.st_mtime_ns != d.stamp[0] or st.st_ino != d.stamp[1] or not isdir(st.st_mode):
                        self._seen(path, d, st)  # changed, or no longer a directory
                        continue
                    quiet_for = now - d.changed
                    if path in structural:  # poll_every and _schedule, inlined
                        wait = interval if quiet_for < RUN_QUIET_AFTER else slow_wait
                    else:
                        wait = poll_every(interval, quiet_for, False)
                    d.due = due = now + wait
                    q = every if wait == interval else slow if wait == slow_wait else None
                    if q is not None and (not q or q[-1][0] <= due):
                        q.append((due, path))
                    else:
                        heapq.heappush(heap, (due, path))
        finally:
            self.ops.stats += fast_looks
        self.rounds += 1
        if self.root not in self.dirs:
            return None
        nxt = now + self.interval  # (every polled dir has an entry; the root at least)
        for queue, take in queues:
            while queue and (queue[0][1] not in dirs or dirs[queue[0][1]].due != queue[0][0]):
                take()  # stale: not worth a wake-up
            if queue and queue[0][0] < nxt:
                nxt = queue[0][0]
        return max(MIN_WAIT, nxt - self.monotonic())

    def _schedule(self, path: str, d: _Dir, due: float, wait: float) -> None:
        """``d`` is next looked at ``due`` (``wait`` after now): a FIFO when it keeps it in order."""
        d.due = due
        q = self._every if wait == self.interval else self._slow if wait == self.interval * MAX_BACKOFF \
            else None
        if q is not None and (not q or q[-1][0] <= due):
            q.append((due, path))
        else:
            heapq.heappush(self._due, (due, path))

    # --- directories -------------------------------------------------------------------------------

    def _look(self, path: str, d: _Dir) -> None:
        try:
            st = self.ops.stat(path)
        except OSError:
            self._gone(path)
            return
        if st is None:
            raise Stopped
        self._seen(path, d, st)

    def _gone(self, path: str) -> None:
        """``path`` could not be stat'ed (removed, or no longer reachable): its scope is due."""
        self._drop(path)
        self._touch(path)

    def _seen(self, path: str, d: _Dir, st: os.stat_result) -> None:
        now = self.monotonic()
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp != d.stamp or not stat.S_ISDIR(st.st_mode):
            if not stat.S_ISDIR(st.st_mode):  # replaced by a file or a link
                self._gone(path)
                return
            d.stamp, d.changed = stamp, now
            self._relist(path, d, now)
            self._touch(path)
        wait = poll_every(self.interval, now - d.changed, path in self._structural)
        self._schedule(path, d, now + wait, wait)

    def _relist(self, path: str, d: _Dir, now: float) -> None:
        try:
            subdirs = self.ops.subdirs(path)
        except OSError:
            return  # unreadable now: the stamp is kept, so the next change lists it again
        if subdirs is None:
            raise Stopped
        wanted = {s for s in subdirs if s not in self._cold}
        for gone in d.children - wanted:
            self._drop(gone)
        for new in sorted(wanted - d.children):
            self._add(new, now)
        d.children = {c for c in wanted if c in self.dirs}

    def _add(self, top: str, now: float, since: float | None = None) -> None:
        """Start polling ``top`` and every directory below it that is not a complete checkpoint; with
        ``since`` (wall seconds), a directory changed at or after it makes its scope due.

        A directory's ``changed`` starts at its real last change, its mtime (the age on the wall clock,
        never in the future, carried over to the monotonic clock): a run that finished last month is
        quiet from the first look, not only ``RUN_QUIET_AFTER`` after the service (re)started. Its first
        look is one ``interval`` away whatever its age (the runs may not be known yet, so whether it is
        structural is decided at that look), and the cadence follows ``poll_every`` from then on."""
        wall = self.clock()
        stack = [top]
        while stack:
            path = stack.pop()
            if path in self.dirs:
                continue
            try:
                st = self.ops.stat(path)
                if st is None:
                    raise Stopped
                if not stat.S_ISDIR(st.st_mode):
                    continue
                subdirs = self.ops.subdirs(path)
            except OSError:
                continue
            if subdirs is None:
                raise Stopped
            children = {s for s in subdirs if s not in self._cold}
            if since is not None and st.st_mtime >= since - 1.0:  # 1 s: coarse filesystem timestamps
                self._touch(path)
            age = min(max(0.0, wall - st.st_mtime), MAX_AGE)
            d = self.dirs[path] = _Dir((st.st_mtime_ns, st.st_ino), now - age, 0.0, children)
            self._schedule(path, d, now + self.interval, self.interval)
            stack.extend(sorted(children, reverse=True))

    def _drop(self, top: str) -> None:
        """Stop polling ``top`` and everything below it (it vanished, or became a complete checkpoint)."""
        stack = [top]
        while stack:
            d = self.dirs.pop(stack.pop(), None)
            if d is not None:
                stack.extend(d.children)

    def _apply_cold(self) -> None:
        """Apply what ``settled`` said since the last round, run by run (no union over every run)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        now = self.monotonic()
        for run, complete in pending.items():
            before = self._applied.pop(run, frozenset())
            if complete:
                self._applied[run] = complete
            for path in complete - before:
                self._cold.add(path)
                self._drop(path)
                parent = self.dirs.get(os.path.dirname(path))
                if parent is not None:
                    parent.children.discard(path)
            for path in before - complete:  # no longer complete (rewritten, deleted): poll it if it is there
                self._cold.discard(path)
                parent = self.dirs.get(os.path.dirname(path))
                if parent is not None and path not in self.dirs:
                    self._add(path, now)
                    if path in self.dirs:
                        parent.children.add(path)

    def _touch(self, path: str) -> None:
        self.dirty.touch(self.root, self.clock(), scope_of(path, self.root, self._runs))
