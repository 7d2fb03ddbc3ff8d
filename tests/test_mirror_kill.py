"""kill -9 of ``ckptwatch mirror`` at 20 random points of a real 4-rank DCP run's copy, restarting each time.

After every kill the target must hold no committed-but-wrong copy (a committed copy verifies against its
manifest, and its manifest's hashes are the source's); at the end a plain run commits every checkpoint
and each copy verifies and restores. The kill points are I/O calls chosen at random (seeded) by
``tests/mirror_kill_child.py``; when a restarted run finishes before its kill point, the target is moved
aside so the next kills land in a copy again.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror.hashing import ALGORITHM, digest_of
from ckptwatch.mirror.restore import verify_copy
from ckptwatch.mirror.target import LocalTarget
from tests.helpers import REPO, run_cli

pytestmark = pytest.mark.slow  # a real DCP run is built


def _mirror(run: Path, to: Path, kill_at: int, count_file: Path | None = None) -> int:
    env = {**os.environ, "CKPTWATCH_KILL_AT": str(kill_at)}
    if count_file is not None:
        env["CKPTWATCH_COUNT_FILE"] = str(count_file)
    argv = [sys.executable, "-m", "tests.mirror_kill_child", "mirror", str(run), "--to", str(to),
            "--settle", "0"]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode


def _digest(path: Path) -> str:
    return digest_of(path.read_bytes(), ALGORITHM)


def _check_no_committed_wrong_copy(run: Path, to: Path) -> tuple[int, int]:
    """Every committed copy verifies and matches the source; (committed, partial) counts."""
    committed = partial = 0
    for copy in sorted((to / run.name).glob("*")) if (to / run.name).is_dir() else []:
        state = mf.copy_state(LocalTarget(str(copy)), "")
        assert state.state != "broken", (copy, state.reason)
        if state.state != "committed":
            partial += 1
            continue
        committed += 1
        manifest, findings = verify_copy(LocalTarget(str(copy)))
        assert findings == [], findings
        assert manifest is not None and manifest.algorithm == ALGORITHM
        source = run / copy.name
        assert {e.path for e in manifest.files} == {str(p.relative_to(source)) for p in source.rglob("*")
                                                     if p.is_file()}
        for e in manifest.files:
            assert e.hash == _digest(source / e.path), f"committed copy {copy}/{e.path} differs from source"
    return committed, partial


def test_kill9_at_random_points_never_commits_a_wrong_copy(artefact, tmp_path):
    """20 kill -9s at random I/O points, restarting each time: never a committed-but-wrong copy; the
    last run commits every checkpoint, each verifies and restores complete."""
    run = artefact("dcp")
    counted = tmp_path / "calls"
    assert _mirror(run, tmp_path / "count-target", 0, counted) == 0
    total = int(counted.read_text())
    assert total > 40  # every file: write, utime, fsync, rename, dir fsync; journals, manifests, markers
    rng = random.Random(20261204)
    to = tmp_path / "backup"
    killed_mid_copy = 0
    for i in range(20):
        at = rng.randint(1, total)
        code = _mirror(run, to, at)
        assert code in (0, -9), code
        committed, partial = _check_no_committed_wrong_copy(run, to)
        killed_mid_copy += code == -9 and (partial > 0 or committed < 3)
        if code == 0:  # finished before its kill point: start the next kills on a fresh target
            assert committed == 3
            to.rename(tmp_path / f"backup-done-{i}")
    assert killed_mid_copy >= 10
    assert _mirror(run, to, 0) == 0
    assert _check_no_committed_wrong_copy(run, to) == (3, 0)
    assert not [p for p in to.rglob("*") if ".ckptwatch-tmp-" in p.name or p.name == mf.JOURNAL_NAME]
    dest = tmp_path / "restored" / "dcp" / "step_300"
    dest.parent.mkdir(parents=True)
    assert run_cli("restore", str(to / "dcp" / "step_300"), str(dest)).returncode == 0
    once = json.loads(run_cli("once", str(dest.parent), "--json", "--settle", "0", "--no-loss").stdout)
    assert once["runs"][0]["checkpoints"][0]["status"] == "complete"
