"""The service's rescan over a cached root (issue 13): reused verdicts are exactly the ones a fresh pass
builds, and a verdict that depends on the clock is never reused.

The rescan reuses a settled checkpoint's last verdict when its files' fingerprint, its judgement and
the run-level inputs are unchanged; these tests pin down what must still be decided afresh.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ckptwatch.engine import check_root
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.model import Status
from tests.helpers import verdicts_by_name

pytestmark = pytest.mark.slow


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    for dirpath, dirnames, filenames in os.walk(path):
        for n in filenames + dirnames:
            os.utime(os.path.join(dirpath, n), (old, old), follow_symlinks=False)
    os.utime(path, (old, old))


def test_cached_rescan_gives_the_verdicts_of_a_fresh_pass(artefact) -> None:
    run = artefact("hf_full")
    _age(run, 3600)
    opts = CheckOptions(settle_seconds=60, second_look=True)
    cache: dict = {}
    now = time.time()
    first = check_root(str(run), opts, now, cache=cache)
    again = check_root(str(run), opts, now + 5, cache=cache)
    fresh = check_root(str(run), opts, now + 5)
    assert again.runs == fresh.runs == first.runs
    reused = [a is b for a, b in zip(first.runs[0].checkpoints, again.runs[0].checkpoints)]
    assert reused and all(reused), "a settled, unchanged checkpoint's verdict is reused as it is"


def test_a_reused_verdict_is_still_checked_against_the_clock(artefact) -> None:
    """A pass whose ``now`` is within settle_seconds of the newest write (a clock stepped back) says
    in_progress, even though the checkpoint's judgement and verdict are cached."""
    run = artefact("hf_full")
    _age(run, 3600)
    opts = CheckOptions(settle_seconds=60)
    cache: dict = {}
    now = time.time()
    check_root(str(run), opts, now, cache=cache)
    newest = max(v.newest_mtime for v in check_root(str(run), opts, now, cache=cache).runs[0].checkpoints)
    early = check_root(str(run), opts, newest + 1, cache=cache)
    assert {v.status for v in early.runs[0].checkpoints} == {Status.IN_PROGRESS}
    assert check_root(str(run), opts, now, cache=cache).runs == check_root(str(run), opts, now).runs


def test_a_temp_file_verdict_is_rejudged_as_time_passes(artefact) -> None:
    """A writer's temp file makes the checkpoint in_progress; once it is older than stale_after the same,
    unchanged files give abandoned_temp: such a verdict is never reused from the cache."""
    run = artefact("hf_full")
    (run / "checkpoint-6" / "model.safetensors.tmpabc123").write_bytes(b"partial")
    _age(run, 600)
    opts = CheckOptions(settle_seconds=60, stale_after=1800)
    cache: dict = {}
    now = time.time()
    before = verdicts_by_name(check_root(str(run), opts, now, cache=cache).runs[0])["checkpoint-6"]
    assert before.status is Status.IN_PROGRESS
    assert "abandoned_temp" not in {p.kind for p in before.problems}
    later = verdicts_by_name(check_root(str(run), opts, now + 3600, cache=cache).runs[0])["checkpoint-6"]
    assert "abandoned_temp" in {p.kind for p in later.problems}
    fresh = verdicts_by_name(check_root(str(run), opts, now + 3600).runs[0])["checkpoint-6"]
    assert later == fresh
