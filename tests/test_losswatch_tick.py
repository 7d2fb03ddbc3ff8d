"""The loss watch's tick in the service (ckptwatch/losswatch/service.py): which runs it reads, when.

At 10,000 runs a tick that asked each run "are you active?" every 5 s cost 0.8 % of a core while
nothing happened, and the slow round read every run's logs in one burst every 5 minutes. Now a tick
reads the runs events touched or whose logs grew, and a slice of the slow round. Real runs with real
logs; the ticks are driven by hand with the times given, and the reads are counted at ``poll``.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from ckptwatch.losswatch.service import ACTIVE_SECONDS, IDLE_SECONDS, POLL_SECONDS, LossRun
from ckptwatch.losswatch.settings import LossSettings
from ckptwatch.watch import DirtyScopes
from tests.helpers import make_daemon

RUNS = 120


def _runs(tmp_path: Path):
    """A service whose loss watch knows ``RUNS`` runs, each a dir with a checkpoint and a loss log."""
    root = tmp_path / "root"
    runs = []
    for i in range(RUNS):
        run = root / f"run-{i:03d}"
        (run / "checkpoint-10").mkdir(parents=True)
        (run / "train.log").write_text("".join(f"{{'loss': 1.0, 'step': {s}}}\n" for s in range(1, 11)))
        runs.append(str(run))
    d = make_daemon(tmp_path / "state", root)
    loss = d.sink("loss watch")
    for run in runs:
        loss.runs[run] = LossRun(str(root), run, LossSettings(), ((10, run + "/checkpoint-10"),))
    read: Counter[str] = Counter()
    poll = loss.poll

    def counted(run_root: str, now: float) -> None:
        read[run_root] += 1
        poll(run_root, now)

    loss.poll = counted
    return d, loss, root, runs, read


def test_the_slow_round_reads_every_run_once_spread_over_its_ticks(tmp_path):
    d, loss, _, runs, read = _runs(tmp_path)
    try:
        now = time.time()
        ticks = int(IDLE_SECONDS / POLL_SECONDS)
        per_tick = []
        for k in range(ticks):
            before = sum(read.values())
            assert loss.tick(now + k * POLL_SECONDS) == now + k * POLL_SECONDS + POLL_SECONDS
            per_tick.append(sum(read.values()) - before)
        assert set(read) == set(runs) and set(read.values()) == {1}  # each once in the round
        assert max(per_tick) <= -(-RUNS // ticks), per_tick  # a slice a tick, never the whole burst
        loss.tick(now + IDLE_SECONDS)  # the next round begins
        assert sum(read.values()) == RUNS + -(-RUNS // ticks)
    finally:
        d.close()


def test_a_run_touched_by_an_event_is_read_every_tick_until_it_is_quiet(tmp_path):
    d, loss, root, runs, read = _runs(tmp_path)
    try:
        now = time.time()
        loss.next_idle_round = float("inf")  # no slow round here: only what is active is read
        loss.tick(now)
        assert not read
        d.dirty.touch(str(root), now + 1, runs[7])
        for k in range(1, 4):
            loss.tick(now + k * POLL_SECONDS)
        assert read == Counter({runs[7]: 3})
        loss.tick(now + ACTIVE_SECONDS)  # still within ACTIVE_SECONDS of the event
        loss.tick(now + 1 + ACTIVE_SECONDS)  # no longer
        assert read == Counter({runs[7]: 4})
        shared = root / "lightning_logs"  # a run whose logs are outside its run dir
        (shared / "version_0").mkdir(parents=True)
        (shared / "metrics.csv").write_text("step,train_loss\n1,1.0\n")
        loss.runs[str(shared / "version_0")] = LossRun(str(root), str(shared), LossSettings(), ())
        d.dirty.touch(str(root), now + 3 + ACTIVE_SECONDS)  # in no known run (a new run dir, say)
        loss.tick(now + 4 + ACTIVE_SECONDS)
        assert read == Counter({runs[7]: 4, str(shared / "version_0"): 1})  # the logs in run dirs: not theirs
    finally:
        d.close()


def test_a_forgotten_run_is_not_read_by_the_round_that_took_it(tmp_path):
    d, loss, _, runs, read = _runs(tmp_path)
    try:
        now = time.time()
        loss.tick(now)  # the round took every run
        loss.forget(runs[-1])
        loss.tick(now + IDLE_SECONDS)  # late: the rest of the round is read at once
        assert runs[-1] not in read and len(read) == RUNS - 1
    finally:
        d.close()


def test_touched_since_reads_only_the_recent_scopes_newest_first():
    dirty = DirtyScopes()
    for i in range(5):
        dirty.touch("/r", 100.0 + i, f"/r/run-{i}")
    dirty.touch("/r", 110.0, "/r/run-1")  # touched again: moves to the end
    assert dirty.touched_since(102.5) == [("/r", "/r/run-1"), ("/r", "/r/run-4"), ("/r", "/r/run-3")]
    assert dirty.touched_since(110.0) == []
    dirty.forget("/r", "/r/run-1")
    assert dirty.touched_since(102.5) == [("/r", "/r/run-4"), ("/r", "/r/run-3")]

