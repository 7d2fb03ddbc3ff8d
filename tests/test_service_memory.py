"""Bounded memory: 1,000 runs appear and vanish under one watched root while the service watches it.

The service is driven in-process, one loop turn at a time (``Daemon.step``, what ``run()`` repeats), with
an inotify observer on the root, the loss watch on and alerts to a webhook on 127.0.0.1, so every sink
keeps per-run memory while the runs live. Each run is a copy of a real Trainer output dir (three
checkpoints and a trainer_state.json with a loss history). After every run has vanished and a
whole-root pass has seen it, nothing of any run may be left, and RSS must not grow with the number of
runs that came and went.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import make_daemon
from tests.servers import WebhookServer

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")]  # apprise's

RUNS = 1000
BATCH = 50
RSS_GROWTH_LIMIT = 24 * 2**20  # after warm-up, 950 more runs may not cost this much


def _leftovers(d, root: Path) -> dict[str, object]:
    """Every per-run structure of the service that is not empty."""
    left: dict[str, object] = {}
    if d.runs:
        left["daemon.runs"] = sorted(d.runs)
    for sink in d.row.sinks:
        if sink.remembered():
            left[f"sink {sink.name}"] = sorted(sink.remembered())
    loss = d.sink("loss watch")
    if loss.watches:
        left["loss watchers"] = sorted(loss.watches)
    if d.judge.caches.get(str(root)):
        left["judgement cache"] = len(d.judge.caches[str(root)])
    if d.judge.run_index.get(str(root)):
        left["run index"] = sorted(d.judge.run_index[str(root)])
    scopes = {scope for _, scope in d.dirty._last_event} | {scope for _, scope in d.dirty._due}
    if scopes - {str(root)}:
        left["debounce scopes"] = sorted(scopes - {str(root)})
    watcher = d.observers.watchers.get(str(root))
    if watcher is not None and watcher.runs:
        left["watcher run index"] = sorted(watcher.runs)
    return {k: (f"{len(v)} left, e.g. {v[:2]}" if isinstance(v, list) else v) for k, v in left.items()}


def _turn_until_quiet(d, seconds: float) -> None:
    """Loop turns until no pass is due (events settle; the service's own loop does the same)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        d.step()
        due = d.dirty.next_due()
        if due is None or due > time.time() + 60:
            return
        time.sleep(0.05)


def test_thousand_runs_come_and_go_and_leave_nothing(artefact, tmp_path: Path) -> None:
    template = artefact("hf_full")
    root = tmp_path / "root"
    root.mkdir()
    process = psutil.Process()
    with WebhookServer() as hook:
        d = make_daemon(tmp_path / "state", root, observer="inotify", alerts={"urls": [hook.url()]},
                        rescan_seconds=3600)
        try:
            d.observers.start(d.config.watches, d.judge.run_index)
            d._start_sinks()
            d.judge_watch(d.config.watches[0])
            d.next_rescan = time.time() + 3600
            rss_warm = None
            for batch in range(RUNS // BATCH):
                names = [root / f"run-{batch:02d}-{i:02d}" for i in range(BATCH)]
                for run in names:
                    shutil.copytree(template, run, symlinks=True)
                _turn_until_quiet(d, 60)
                d.judge_watch(d.config.watches[0])  # what the rescan does; events alone may be coalesced
                assert len(d.runs) == BATCH, f"batch {batch}: {len(d.runs)} runs known"
                assert len(d.sink("loss watch").watches) == BATCH
                assert len(d.sink("metrics endpoint").remembered()) == BATCH
                for run in names:
                    shutil.rmtree(run)
                _turn_until_quiet(d, 60)
                d.judge_watch(d.config.watches[0])
                left = _leftovers(d, root)
                assert not left, f"batch {batch}: left after every run vanished: {left}"
                if batch == 1:
                    rss_warm = process.memory_info().rss
            rss_end = process.memory_info().rss
            assert rss_warm is not None
            assert rss_end - rss_warm < RSS_GROWTH_LIMIT, \
                f"RSS grew {(rss_end - rss_warm) / 2**20:.1f} MiB over {RUNS - 2 * BATCH} runs"
            assert not [p for p in hook.posts if "service error" in p["title"]], \
                [p["title"] for p in hook.posts]
        finally:
            for w in d.observers.watchers.values():
                w.stop()
            d.close(timeout=5.0)
    assert os.listdir(root) == []
