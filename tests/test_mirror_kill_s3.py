"""kill -9 of ``ckptwatch mirror --to s3://...`` at 20 random points of a real 4-rank DCP run's copy to a
real S3 endpoint (moto's server on 127.0.0.1), restarting each time.

The kill points are HTTP requests to the endpoint, chosen at random (seeded): ``tests/mirror_kill_child.py``
with ``CKPTWATCH_KILL_ON=s3`` sends SIGKILL to itself before its Nth request, so kills land between the
parts of a multipart upload, between objects, between the manifest and the commit marker. After every
kill the bucket must hold no committed-but-wrong copy: each committed copy verifies against its manifest
and its manifest's hashes are the source's. A restarted run that finishes before its kill point moves on
to a fresh prefix, so the next kills land in a copy again. At the end a plain run commits every
checkpoint, leaves no journal, and the newest copy restores to a checkpoint judged complete.
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
from ckptwatch.mirror.fsspec_target import FsspecTarget
from ckptwatch.mirror.hashing import ALGORITHM, digest_of
from ckptwatch.mirror.restore import verify_copy
from tests.helpers import REPO, run_cli

pytestmark = pytest.mark.slow  # a real DCP run is built, and 22 CLI processes talk to the endpoint

KILLS = 20


def _mirror(run: Path, to: str, kill_at: int, count_file: Path | None = None) -> int:
    env = {**os.environ, "CKPTWATCH_KILL_AT": str(kill_at), "CKPTWATCH_KILL_ON": "s3"}
    if count_file is not None:
        env["CKPTWATCH_COUNT_FILE"] = str(count_file)
    argv = [sys.executable, "-m", "tests.mirror_kill_child", "mirror", str(run), "--to", to, "--settle", "0"]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode in (0, -9), proc.stderr
    return proc.returncode


def _check_no_committed_wrong_copy(run: Path, s3, prefix: str) -> tuple[int, int]:
    """Every committed copy under ``prefix`` verifies and matches the source; (committed, partial)."""
    committed = partial = 0
    for source in sorted(p for p in run.iterdir() if p.is_dir()):
        target = FsspecTarget(s3.url(prefix, run.name, source.name))
        state = mf.copy_state(target, "")
        assert state.state != "broken", (source.name, state.reason)
        if state.state != "committed":
            partial += state.state == "partial"
            continue
        committed += 1
        manifest, findings = verify_copy(target)
        assert findings == [], findings
        assert manifest is not None and manifest.algorithm == ALGORITHM
        assert {e.path for e in manifest.files} == {str(p.relative_to(source)) for p in source.rglob("*")
                                                     if p.is_file()}
        for e in manifest.files:
            want = digest_of((source / e.path).read_bytes(), ALGORITHM)
            assert e.hash == want, f"committed copy {prefix}/{source.name}/{e.path} differs from its source"
    return committed, partial


def test_kill9_at_random_requests_never_commits_a_wrong_copy_to_s3(artefact, s3, tmp_path):
    run = artefact("dcp")
    checkpoints = sum(1 for p in run.iterdir() if p.is_dir())
    counted = tmp_path / "requests"
    assert _mirror(run, s3.url("count"), 0, counted) == 0
    total = int(counted.read_text())
    assert total > 3 * checkpoints  # at least list, put data, manifest, marker per checkpoint
    rng = random.Random(20261205)
    attempt = 0
    killed_mid_copy = 0
    for _ in range(KILLS):
        prefix = f"backup-{attempt}"
        code = _mirror(run, s3.url(prefix), rng.randint(1, total))
        committed, partial = _check_no_committed_wrong_copy(run, s3, prefix)
        killed_mid_copy += code == -9 and (partial > 0 or committed < checkpoints)
        if code == 0:  # finished before its kill point: the next kills start on a fresh prefix
            assert committed == checkpoints
            attempt += 1
    assert killed_mid_copy >= KILLS // 2
    prefix = f"backup-{attempt}"
    assert _mirror(run, s3.url(prefix), 0) == 0
    assert _check_no_committed_wrong_copy(run, s3, prefix) == (checkpoints, 0)
    assert not [k for k in s3.keys(prefix) if k.endswith("/" + mf.JOURNAL_NAME)]
    newest = sorted(p.name for p in run.iterdir() if p.is_dir())[-1]
    dest = tmp_path / "restored" / run.name / newest
    restored = run_cli("restore", s3.url(prefix, run.name, newest), str(dest), timeout=120)
    assert restored.returncode == 0, restored.stderr
    once = json.loads(run_cli("once", str(dest.parent), "--json", "--settle", "0", "--no-loss").stdout)
    assert [c["status"] for c in once["runs"][0]["checkpoints"]] == ["complete"]
