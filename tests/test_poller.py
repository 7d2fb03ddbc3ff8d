"""The checkpoint-aware polling observer (ckptwatch/poller.py) on real Trainer runs.

Rounds are driven by hand with a fake monotonic clock (``prime`` then ``round``), so every assertion
is about what the poller looked at and what it made due, never about wall-clock time. The service
level (the poller inside ``ckptwatch run``) is in the last tests.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from ckptwatch.engine import check_root
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.model import Status
from ckptwatch.poller import (
    BATCH,
    MAX_BACKOFF,
    QUIET_AFTER,
    RUN_QUIET_AFTER,
    CheckpointPoller,
    TokenBucket,
    poll_every,
)
from ckptwatch.watch import DirtyScopes
from tests.helpers import make_daemon, trainer_runs
from tests.servers import free_port

pytestmark = pytest.mark.slow  # real Trainer runs are built


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def wait(self, seconds: float) -> bool:
        self.t += seconds
        return False


def test_poll_every_backs_off_only_what_is_quiet_and_not_structural():
    assert poll_every(5.0, 10_000.0, True) == 5.0  # a run between two saves two hours apart
    assert poll_every(5.0, RUN_QUIET_AFTER, True) == 5.0 * MAX_BACKOFF  # a finished run
    assert poll_every(5.0, QUIET_AFTER - 1, False) == 5.0
    assert poll_every(5.0, QUIET_AFTER, False) == 10.0
    assert poll_every(5.0, 2 * QUIET_AFTER, False) == 20.0
    assert poll_every(5.0, 1e9, False) == 5.0 * MAX_BACKOFF


def test_token_bucket_spreads_calls_to_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(50, clock, clock.wait)
    start = clock.t
    for _ in range(550):
        assert bucket.take()
    assert 549 / 50 - 1.0 <= clock.t - start <= 550 / 50  # a one-second burst, then 50 per second
    assert TokenBucket(None, clock, clock.wait).take()
    stopped = TokenBucket(1, clock, lambda s: True)
    stopped.take()
    assert stopped.take() is False  # a stop while waiting for a token ends the wait


def _root_with_runs(artefact, tmp_path: Path, runs: int = 2) -> Path:
    return trainer_runs(artefact, tmp_path, [f"run-{i}" for i in range(runs)])


def _told(poller: CheckpointPoller, root: Path) -> None:
    """What the daemon tells a poller after a whole-root pass: the runs and their complete checkpoints."""
    report = check_root(str(root), CheckOptions(settle_seconds=0), time.time())
    poller.runs = frozenset(r.root for r in report.runs)
    for r in report.runs:
        poller.settled(r.root, frozenset(v.path for v in r.checkpoints if v.status is Status.COMPLETE))


def _poller(root: Path, dirty: DirtyScopes, clock: FakeClock, **kw) -> CheckpointPoller:
    p = CheckpointPoller(str(root), dirty, time.time, interval=5.0, monotonic=clock, **kw)
    p.ops.budget.wait = clock.wait
    return p


def _primed(root: Path) -> tuple[FakeClock, DirtyScopes, CheckpointPoller]:
    """A poller of ``root`` told what a whole-root pass found, after its first walk."""
    clock, dirty = FakeClock(), DirtyScopes()
    p = _poller(root, dirty, clock)
    _told(p, root)
    p.prime()
    return clock, dirty, p


def test_complete_checkpoints_leave_the_poll_set_and_a_round_stats_only_the_rest(artefact, tmp_path):
    root = _root_with_runs(artefact, tmp_path, runs=3)
    clock, dirty, p = _primed(root)
    polled = set(p.dirs)
    assert str(root) in polled and all(str(root / f"run-{i}") in polled for i in range(3))
    assert not [d for d in polled if "checkpoint-" in d], sorted(polled)
    before = p.ops.stats
    clock.t += 5.0
    p.round()
    assert p.ops.stats - before == len(polled)  # one stat per polled dir, no file stat'ed
    assert p.ops.listdirs == len(polled)  # listed once at prime; nothing changed since
    assert dirty.next_due() is None


def test_new_checkpoint_in_a_quiet_run_is_due_after_one_round(artefact, tmp_path):
    root = _root_with_runs(artefact, tmp_path)
    clock, dirty, p = _primed(root)
    for _ in range(200):  # 1000 s of quiet: the run dirs are still looked at every interval
        clock.t += 5.0
        p.round()
    run = root / "run-1"
    shutil.copytree(run / "checkpoint-6", run / "checkpoint-8")
    clock.t += 5.0
    wait = p.round()
    assert dirty.take_due(time.time() + 1) == [(str(root), str(run))]
    assert wait is not None and wait <= 5.0
    assert str(run / "checkpoint-8") in p.dirs  # not complete yet (as far as the poller was told)


def test_rewritten_settled_checkpoint_is_polled_again_once_no_longer_complete(artefact, tmp_path):
    """A file rewritten in place in a complete checkpoint is not polled for (the rescan's job); once a
    pass judges it otherwise, its directory is polled again."""
    root = _root_with_runs(artefact, tmp_path, runs=1)
    clock, dirty, p = _primed(root)
    ckpt = root / "run-0" / "checkpoint-4"
    assert str(ckpt) not in p.dirs
    (ckpt / "model.safetensors").write_bytes(b"\0" * 16)  # the rewrite: no dir entry changes
    clock.t += 5.0
    p.round()
    assert dirty.next_due() is None  # not seen by polling: the whole-root rescan judges it
    _told(p, root)  # ... which now finds it corrupt
    clock.t += 5.0
    p.round()
    assert str(ckpt) in p.dirs


def test_deleted_run_and_removed_checkpoint_make_the_scope_due(artefact, tmp_path):
    root = _root_with_runs(artefact, tmp_path)
    clock, dirty, p = _primed(root)
    shutil.rmtree(root / "run-0" / "checkpoint-2")
    clock.t += 5.0
    p.round()
    assert dirty.take_due(time.time() + 1) == [(str(root), str(root / "run-0"))]
    shutil.rmtree(root / "run-1")
    clock.t += 5.0
    p.round()
    assert dirty.take_due(time.time() + 1) == [(str(root), str(root))]  # a run gone: the whole root
    assert not [d for d in p.dirs if d.startswith(str(root / "run-1"))]


def test_quiet_dirs_inside_runs_back_off_and_the_budget_is_kept(artefact, tmp_path):
    root = _root_with_runs(artefact, tmp_path)
    (root / "run-0" / "runs" / "events").mkdir(parents=True)  # a TensorBoard dir: polled, not structural
    clock, dirty = FakeClock(), DirtyScopes()
    p = _poller(root, dirty, clock, max_stats_per_second=2)
    _told(p, root)
    start, ops0 = clock.t, p.ops.stats + p.ops.listdirs
    p.prime()
    looks: dict[str, int] = {}
    for _ in range(400):
        wait = p.round()
        clock.t += wait
        for path, d in p.dirs.items():
            looks[path] = looks.get(path, 0) + (d.changed <= clock.t)
    elapsed = clock.t - start
    assert (p.ops.stats + p.ops.listdirs - ops0) <= 2 * elapsed + 2  # the budget, one burst allowed
    tb = str(root / "run-0" / "runs" / "events")
    assert p.dirs[tb].due - p.dirs[tb].changed > QUIET_AFTER  # backed off
    assert poll_every(5.0, clock.t - p.dirs[str(root / "run-0")].changed, True) == 5.0


def test_run_dirs_on_spread_schedules_cost_few_wakeups_and_one_look_each_per_interval(tmp_path):
    """Under a stat budget (or on a slow metadata server) the dirs of a big tree are looked at one after
    another, so each is due at its own time. The old poller woke for each (and scanned every record each
    time: 12 % of a core at 10,000 runs); now a wake-up takes every dir due within BATCH of the interval,
    and each dir is still looked at once per interval. Empty run dirs: only their stamps matter here."""
    root = tmp_path / "root"
    runs = [root / f"run-{i:03d}" for i in range(300)]
    for run in runs:
        run.mkdir(parents=True)
    clock, dirty = FakeClock(), DirtyScopes()
    p = _poller(root, dirty, clock, max_stats_per_second=120)  # 301 stats take 2.5 s of the 5 s interval
    p.runs = frozenset(str(r) for r in runs)
    p.prime()
    start, stats0, rounds0 = clock.t, p.ops.stats, p.rounds
    while clock.t - start < 50.0:  # ten intervals
        wait = p.round()
        assert wait is not None
        clock.t += wait
    rounds = p.rounds - rounds0
    assert rounds <= 10 * (1 / BATCH + 2), rounds  # here 56; the old poller 290
    looks = p.ops.stats - stats0
    assert 9 * 301 <= looks <= 12 * 301, looks  # root + 300 runs, once per interval each (a batch is early)
    assert dirty.next_due() is None


def test_unreadable_dir_and_odd_entries_never_stop_the_poller(artefact, tmp_path):
    root = _root_with_runs(artefact, tmp_path, runs=1)
    os.mkfifo(root / "run-0" / "fifo")
    (root / "run-0" / "loop").symlink_to(root / "run-0")
    (root / "run-0" / "out").symlink_to("/")
    weird = root / "run-0" / "new\nline"
    weird.mkdir()
    clock, dirty, p = _primed(root)
    assert str(weird) in p.dirs and str(root / "run-0" / "loop") not in p.dirs  # links are not followed
    shutil.rmtree(weird)
    os.mkdir(weird)  # replaced: a new inode
    clock.t += 5.0
    assert p.round() is not None


def test_service_in_polling_mode_judges_a_new_checkpoint_and_counts_its_calls(artefact, tmp_path):
    """The poller inside the in-process service: a checkpoint written after catch-up into a quiet run is
    judged complete without any event source but the poller; its calls are in the metrics' counts."""
    root = _root_with_runs(artefact, tmp_path)
    run = root / "run-0"
    os.rename(run / "checkpoint-6", tmp_path / "tmp-checkpoint-6")  # saved after catch-up, below
    port = free_port()
    d = make_daemon(tmp_path / "state", root, observer="polling", watch={"poll_interval": 0.2},
                    metrics_port=port)
    try:
        d.observers.start(d.config.watches, d.judge.run_index)
        d._start_sinks()
        for w in d.config.watches:
            d.judge_watch(w)
        poller = d.observers.watchers[str(root)]
        assert isinstance(poller, CheckpointPoller)
        os.rename(tmp_path / "tmp-checkpoint-6", run / "checkpoint-6")  # the Trainer's rename into place

        def newest() -> str | None:
            [r] = [r for r in d.state.runs() if r["run"] == str(run)]
            return r["newest_complete"] and os.path.basename(r["newest_complete"]["path"])

        assert newest() == "checkpoint-4"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (newest() != "checkpoint-6" or str(run / "checkpoint-6")
                                               in poller.dirs):
            d.step()
            time.sleep(0.05)
        assert newest() == "checkpoint-6"
        assert str(run / "checkpoint-6") not in poller.dirs  # complete: no longer polled
        stats, listdirs = d.observers.poll_counts()[str(root)]
        assert stats > 0 and listdirs > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            scraped = resp.read().decode()
        counted = re.search(r'^ckptwatch_poll_stats_total\{root="([^"]*)"\} (\S+)$', scraped, re.M)
        assert counted and counted.group(1) == str(root) and float(counted.group(2)) >= stats, scraped
        assert re.search(r'^ckptwatch_poll_listdirs_total\{root=', scraped, re.M), scraped
    finally:
        d.observers.stop()
        d.close()


def test_slow_metadata_server_budget_kept_and_service_responsive(artefact, tmp_path, monkeypatch):
    """Every stat and listdir of the poller takes 20 ms (an overloaded metadata server) and the watch
    allows 10 calls a second: the poller never exceeds the budget, the service's loop keeps turning
    (the poller has its own thread), a new checkpoint is still judged, and stop() ends a poller that
    is waiting for its budget."""
    from ckptwatch import poller as poller_mod

    slow_stat, slow_list = poller_mod.MetaOps.stat, poller_mod.MetaOps.subdirs

    def stat(self, path):
        time.sleep(0.02)
        return slow_stat(self, path)

    def subdirs(self, path):
        time.sleep(0.02)
        return slow_list(self, path)

    monkeypatch.setattr(poller_mod.MetaOps, "stat", stat)
    monkeypatch.setattr(poller_mod.MetaOps, "subdirs", subdirs)
    root = _root_with_runs(artefact, tmp_path)
    run = root / "run-1"
    os.rename(run / "checkpoint-6", tmp_path / "later")
    d = make_daemon(tmp_path / "state", root, observer="polling",
                    watch={"poll_interval": 0.1, "max_stats_per_second": 10})
    try:
        started = time.monotonic()
        d.observers.start(d.config.watches, d.judge.run_index)
        for w in d.config.watches:
            d.judge_watch(w)
        poller = d.observers.watchers[str(root)]
        os.rename(tmp_path / "later", run / "checkpoint-6")
        longest_step = 0.0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # at least 4 s, so the budget is kept over many seconds
            t = time.monotonic()
            d.step()
            longest_step = max(longest_step, time.monotonic() - t)
            [r] = [r for r in d.state.runs() if r["run"] == str(run)]
            done = r["newest_complete"] and r["newest_complete"]["path"].endswith("checkpoint-6")
            if done and time.monotonic() - started > 4:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        assert r["newest_complete"]["path"].endswith("checkpoint-6")
        calls = poller.ops.stats + poller.ops.listdirs
        assert calls <= 10 * elapsed + 10 + 1, (calls, elapsed)  # the budget, one second's burst, start()
        assert calls >= 10  # it did poll all along, slowly
        assert longest_step < 2.0  # the loop never waited on the slow poller
    finally:
        d.observers.stop()
        d.close()
    assert not poller.alive()


def test_file_rewritten_inside_a_complete_checkpoint_is_judged_at_the_rescan_or_a_run_dir_change(
        artefact, tmp_path):
    """The poller does not look inside complete checkpoints; a weights file truncated in place there is
    judged when the run dir's entries change (run-0: a new log dir) or at the whole-root rescan (run-1)."""
    root = _root_with_runs(artefact, tmp_path)
    d = make_daemon(tmp_path / "state", root, observer="polling", watch={"poll_interval": 0.1})

    def status(run: str, ckpt: str) -> str:
        [r] = [r for r in d.state.runs() if r["run"] == str(root / run)]
        bad = {os.path.basename(c["checkpoint"]): c["status"] for c in r["open"]}
        return bad.get(ckpt, "complete")

    def step_until(done, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not done():
            d.step()
            time.sleep(0.05)

    try:
        d.observers.start(d.config.watches, d.judge.run_index)
        for w in d.config.watches:
            d.judge_watch(w)
        poller = d.observers.watchers[str(root)]
        step_until(lambda: str(root / "run-0" / "checkpoint-4") not in poller.dirs)
        for run in ("run-0", "run-1"):
            weights = root / run / "checkpoint-4" / "model.safetensors"
            with open(weights, "r+b") as f:
                f.truncate(weights.stat().st_size // 2)
        (root / "run-0" / "runs").mkdir()  # a new entry in run-0's dir: the run is judged again
        step_until(lambda: status("run-0", "checkpoint-4") != "complete")
        assert status("run-0", "checkpoint-4") == "corrupt"
        assert status("run-1", "checkpoint-4") == "complete"  # nothing told the poller; the rescan will
        d.next_rescan = 0.0
        step_until(lambda: status("run-1", "checkpoint-4") != "complete")
        assert status("run-1", "checkpoint-4") == "corrupt"
    finally:
        d.observers.stop()
        d.close()


def _looks(p: CheckpointPoller, clock: FakeClock, paths: list[str], seconds: float) -> dict[str, int]:
    """Drive the poller for ``seconds`` of its clock; how many times each of ``paths`` was looked at."""
    looks = dict.fromkeys(paths, 0)
    start = clock.t
    while clock.t - start < seconds:
        before = {k: p.dirs[k].due for k in paths}
        wait = p.round()
        assert wait is not None
        for k in paths:
            looks[k] += p.dirs[k].due != before[k]
        clock.t += wait
    return looks


def test_a_run_finished_days_ago_is_quiet_from_the_first_look_and_polled_again_at_its_next_entry(
        artefact, tmp_path):
    """After a (re)start the poller takes a run dir's quiet time from its mtime: a run whose last new
    entry is days old is looked at every MAX_BACKOFF intervals from the start (not every interval for
    RUN_QUIET_AFTER first), the active run beside it every interval; a new checkpoint in the old run is
    seen at its next look, and the run is back to every interval."""
    root = _root_with_runs(artefact, tmp_path)
    old, active = str(root / "run-0"), str(root / "run-1")
    days_ago = time.time() - 3 * 86400
    os.utime(old, (days_ago, days_ago))
    clock, dirty, p = _primed(root)
    looks = _looks(p, clock, [old, active], 5.0 * MAX_BACKOFF)
    assert looks[active] >= MAX_BACKOFF - 1 and looks[old] <= 2, looks  # the first look, then 12 intervals
    shutil.copytree(root / "run-0" / "checkpoint-6", root / "run-0" / "checkpoint-8")
    written = clock.t
    while not dirty.take_due(time.time() + 1):
        clock.t += p.round()
    assert clock.t - written <= 5.0 * MAX_BACKOFF  # at its next look
    d = p.dirs[old]
    assert d.due - d.changed == 5.0  # changed just now: every interval again
    assert _looks(p, clock, [old], 5.0 * MAX_BACKOFF)[old] >= MAX_BACKOFF - 1


def test_a_dir_dated_in_the_future_counts_as_changed_just_now(artefact, tmp_path):
    """A clock skewed ahead (a file server's) gives mtimes in the future: such a dir counts as changed
    at its first look, and backs off like any other once quiet for RUN_QUIET_AFTER, not a year later."""
    root = _root_with_runs(artefact, tmp_path, runs=1)
    run = str(root / "run-0")
    ahead = time.time() + 365 * 86400
    os.utime(run, (ahead, ahead))
    clock, dirty, p = _primed(root)
    assert p.dirs[run].changed <= clock.t
    clock.t += RUN_QUIET_AFTER
    p.round()
    assert p.dirs[run].due - clock.t == 5.0 * MAX_BACKOFF


def test_the_inlined_look_decides_as_the_full_look_does(artefact, tmp_path):
    """Without a budget a round looks at an unchanged dir inline; with one every look goes through
    ``_look``. On the same tree and clock both keep the same schedule, make the same scopes due and
    count the same calls, through a quiet spell, a new checkpoint, a removed one and a run gone."""
    root = _root_with_runs(artefact, tmp_path, runs=3)
    os.utime(root / "run-2", (time.time() - 86400, time.time() - 86400))
    (root / "run-0" / "runs" / "events").mkdir(parents=True)  # not structural: backs off
    clock, wall = FakeClock(), time.time()  # one wall time: a dir's age is the same to both
    pollers = []
    for budget in (None, 1e9):
        dirty = DirtyScopes()
        p = CheckpointPoller(str(root), dirty, lambda: wall, interval=5.0, monotonic=clock,
                             max_stats_per_second=budget)
        p.ops.budget.wait = clock.wait
        _told(p, root)
        pollers.append((p, dirty))
    start = clock.t
    for p, _ in pollers:
        p.prime()
    changes = {200: lambda: shutil.copytree(root / "run-1" / "checkpoint-6", root / "run-1" / "checkpoint-8"),
               400: lambda: shutil.rmtree(root / "run-2" / "checkpoint-2"),
               600: lambda: shutil.rmtree(root / "run-0")}
    for k in range(800):
        if k in changes:
            changes[k]()
        clock.t = start + k * 2.5
        waits = [p.round() for p, _ in pollers]
        assert waits[0] == waits[1]
        (fast, fast_dirty), (full, full_dirty) = pollers
        assert {k: (d.due, d.changed, d.stamp) for k, d in fast.dirs.items()} == \
            {k: (d.due, d.changed, d.stamp) for k, d in full.dirs.items()}
        assert fast_dirty.take_due(time.time() + 1) == full_dirty.take_due(time.time() + 1)
        assert (fast.ops.stats, fast.ops.listdirs) == (full.ops.stats, full.ops.listdirs)
    assert str(root / "run-0") not in fast.dirs and str(root / "run-1" / "checkpoint-8") in fast.dirs
