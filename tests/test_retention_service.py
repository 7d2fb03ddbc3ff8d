"""Retention in the service and the refusals on an anomalous scan, on real Trainer output.

The service is driven in-process (``Daemon.judge_watch``, then its background worker); filesystems are
real tmpfs mounts (tests run as root), permission cases run as uid nobody.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.helpers import REPO, cli_as_nobody, cli_in_process, make_daemon, nobody_dir, two_trainer_runs


def _names(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint-"))


def _settle(d) -> None:
    """Let the background worker finish and hand its results to the loop thread."""
    assert d.background.wait_idle(60)
    d.background.drain()


def test_service_prunes_every_run_off_its_loop_and_logs_each_deletion(artefact, tmp_path):
    root = two_trainer_runs(artefact, tmp_path)
    d = make_daemon(tmp_path / "state", root, watch={"retention": {"keep_last": 1}})
    try:
        with capture_logs() as logs:
            d.judge_watch(d.config.watches[0])
            _settle(d)
        for run in ("run-a", "run-b"):
            assert _names(root / run) == ["checkpoint-6"]
        planned = [e for e in logs if e["event"] == "retention_planned"]
        assert {Path(e["run"]).name for e in planned} == {"run-a", "run-b"}
        assert all(len(e["delete"]) == 2 and e["bytes_freed"] > 0 for e in planned)
        deleted = [e for e in logs if e["event"] == "checkpoint_deleted"]
        assert len(deleted) == 4 and all(e["bytes"] > 0 and "keep_last" in e["reason"] for e in deleted)
        # the next pass: nothing more to delete, and our own deletions are no "drop by more than half"
        with capture_logs() as again:
            d.judge_watch(d.config.watches[0])
            _settle(d)
        assert not [e for e in again if e["event"] in ("retention_blocked", "checkpoint_deleted")]
    finally:
        d.close()


def test_dry_run_in_the_service_plans_and_deletes_nothing(artefact, tmp_path):
    root = two_trainer_runs(artefact, tmp_path)
    d = make_daemon(tmp_path / "state", root, watch={"retention": {"keep_last": 1, "dry_run": True}})
    try:
        with capture_logs() as logs:
            d.judge_watch(d.config.watches[0])
            _settle(d)
        assert [e["dry_run"] for e in logs if e["event"] == "retention_planned"] == [True, True]
        assert _names(root / "run-a") == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    finally:
        d.close()


def test_a_drop_of_complete_checkpoints_by_more_than_half_blocks_the_pass(artefact, tmp_path):
    """restic#4619: a listing that comes back short must not be acted on. Two of three checkpoints vanish
    (moved away, as a flaky mount would hide them) between passes: that pass deletes nothing and says so."""
    root = two_trainer_runs(artefact, tmp_path)
    d = make_daemon(tmp_path / "state", root, watch={"retention": {"keep_last": 3}})
    aside = tmp_path / "aside"
    aside.mkdir()
    try:
        d.judge_watch(d.config.watches[0])
        _settle(d)
        for name in ("checkpoint-4", "checkpoint-6"):
            shutil.move(root / "run-a" / name, aside / name)
        with capture_logs() as logs:
            d.judge_watch(d.config.watches[0])
            _settle(d)
        blocked = [e for e in logs if e["event"] == "retention_blocked"]
        assert [Path(e["run"]).name for e in blocked] == ["run-a"]
        assert "dropped from 3 to 1" in blocked[0]["why"]
        assert _names(root / "run-a") == ["checkpoint-2"]
    finally:
        d.close()


def test_an_unreadable_checkpoint_dir_blocks_prune_as_nobody(artefact, tmp_path):
    """A listing that fails (a checkpoint dir nobody may read) is an anomalous scan: nothing deleted."""
    base = nobody_dir(tmp_path)
    try:
        run = base / "hf_full"
        shutil.copytree(artefact("hf_full"), run, symlinks=True)
        for p in [run, *run.rglob("*")]:
            os.chown(p, 65534, 65534)
        argv = ["prune", "--settle", "0", "--keep-last", "1", "--json", str(run)]
        assert cli_in_process([*argv, "--dry-run"])[0] == 0  # imports what the child will need
        (run / "checkpoint-4").chmod(0o000)
        code, out, err = cli_as_nobody(argv)
        (run / "checkpoint-4").chmod(0o755)
        assert code == 1, err
        (item,) = json.loads(out)["runs"]
        assert item["retention"]["blocked"] and "listing failed" in item["retention"]["blocked"][0]
        assert item["outcomes"] == []
        assert _names(run) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def tmpfs(tmp_path):
    """A real tmpfs mounted at a fresh dir (tests run as root); unmounted afterwards."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        where = tmp_path / name
        where.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_root_that_is_no_longer_its_filesystem_deletes_nothing(artefact, tmp_path, tmpfs):
    """The watched root is a mount; it is unmounted and a run appears on the bare mount point (a job
    writing to the wrong disk): retention refuses, the data it sees is not the data it was watching."""
    root = tmpfs("root", "64m")
    built = artefact("hf_full")
    shutil.copytree(built, root / "run-a", symlinks=True)
    for name in ("checkpoint-2", "checkpoint-4"):
        shutil.rmtree(root / "run-a" / name)
    d = make_daemon(tmp_path / "state", root, watch={"retention": {"keep_last": 1}})
    try:
        d.judge_watch(d.config.watches[0])  # the first pass sees the mount (nothing to delete yet)
        _settle(d)
        subprocess.run(["umount", str(root)], check=True)
        shutil.copytree(built, root / "run-a", symlinks=True)
        with capture_logs() as logs:
            d.judge_watch(d.config.watches[0])
            _settle(d)
        blocked = [e for e in logs if e["event"] == "retention_blocked"]
        assert blocked and "no longer a mount point" in blocked[0]["why"]
        assert _names(root / "run-a") == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    finally:
        d.close()


def test_min_free_on_a_small_tmpfs_deletes_oldest_first_and_never_the_newest(artefact, tmp_path, tmpfs):
    fs = tmpfs("small", "8m")
    shutil.copytree(artefact("hf_full"), fs / "run", symlinks=True)
    one = sum(f.stat().st_size for f in (fs / "run" / "checkpoint-2").rglob("*") if f.is_file())
    usage = shutil.disk_usage(fs)
    # leave less free space than asked for; two old checkpoints' worth of deletions would meet it
    want = usage.free + one + one // 2
    p = subprocess.run([sys.executable, "-m", "ckptwatch", "prune", "--settle", "0", "--min-free", str(want),
                        "--json", str(fs / "run")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert _names(fs / "run") == ["checkpoint-6"]
    assert shutil.disk_usage(fs).free >= want - (64 << 10)  # tmpfs accounting is per page
    # asking for more than can ever be freed: the newest stays, and the plan says what is missing
    p = subprocess.run([sys.executable, "-m", "ckptwatch", "prune", "--settle", "0", "--min-free", "99%",
                        "--json", str(fs / "run")], cwd=REPO, capture_output=True, text=True, timeout=120)
    (item,) = json.loads(p.stdout)["runs"]
    assert item["retention"]["shortfall"] > 0 and _names(fs / "run") == ["checkpoint-6"]
