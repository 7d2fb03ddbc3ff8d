"""A mirror target that fills up: a real full filesystem (a small tmpfs mounted for the test) under a
real Trainer run's copies.

The newest checkpoint fits and is committed; the next one runs out of space mid-copy: it fails naming
the target file and the reason, nothing of it is committed (restore refuses it), no temp file is left
behind, and the exit code says so. Once space is freed (the tmpfs grown, as an admin would clean the
disk), the same command commits the rest and every copy verifies.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror.restore import verify_copy
from ckptwatch.mirror.target import LocalTarget
from tests.helpers import run_cli

pytestmark = pytest.mark.slow  # a real Trainer run is built


def _size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def _mount_tmpfs(where: Path, size: int, *, remount: bool = False) -> subprocess.CompletedProcess:
    opts = f"{'remount,' if remount else ''}size={size}"
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True,
                          text=True, timeout=30)


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    r = _mount_tmpfs(mnt, 1 << 20)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (the tests run as root elsewhere): {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_target_disk_full_fails_naming_the_file_commits_nothing_and_catches_up(artefact, small_disk):
    run = artefact("hf_full")
    checkpoints = sorted((p for p in run.iterdir() if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    newest, second = checkpoints[-1], checkpoints[-2]
    room = _size(newest) + _size(second) // 2 + (64 << 10)  # the newest fits, the next one does not
    assert _mount_tmpfs(small_disk, room, remount=True).returncode == 0
    to = small_disk / "backup"

    r = run_cli("mirror", str(run), "--to", str(to), "--settle", "0", "--json", timeout=180)
    assert r.returncode == 1, r.stderr
    [mirrored] = json.loads(r.stdout)["runs"]
    results = {Path(c["checkpoint"]).name: c for c in mirrored["mirror"]["checkpoints"]}
    assert results[newest.name]["result"] == "committed"
    failed = results[second.name]
    assert failed["result"] == "failed", failed
    assert "No space left on device" in failed["reason"], failed
    assert str(to / run.name / second.name) in failed["reason"], failed
    assert mf.copy_state(LocalTarget(str(to / run.name / second.name)), "").state != "committed"
    assert not [p for p in to.rglob("*") if ".ckptwatch-tmp-" in p.name]
    text = run_cli("mirror", str(run), "--to", str(to), "--settle", "0", timeout=180)
    assert text.returncode == 1 and "checkpoints not mirrored: fix the cause" in text.stderr, text.stderr
    refused = run_cli("restore", str(to / run.name / second.name), str(small_disk.parent / "r"))
    assert refused.returncode == 1 and "not a backup" in refused.stderr, refused.stderr

    assert _mount_tmpfs(small_disk, 4 * _size(run) + (1 << 20), remount=True).returncode == 0
    again = run_cli("mirror", str(run), "--to", str(to), "--settle", "0", timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    for ckpt in checkpoints:
        manifest, findings = verify_copy(LocalTarget(str(to / run.name / ckpt.name)))
        assert manifest is not None and findings == [], (ckpt.name, findings)
