"""The one guarded deletion path (retention/delete.py) and ``ckptwatch prune`` on real Trainer output.

Real checkpoints (the HF Trainer's ``checkpoint-{2,4,6}`` of a tiny GPT-2), real renames, real kill -9
of a real child process at the two points a crash matters (after the renames, before the ``moved``
marker; after the marker, before the removal), a real permission error as uid nobody, real symlinks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ckptwatch.retention import delete
from ckptwatch.scan import TRASH_NAME
from tests.helpers import REPO, cli_as_nobody, cli_in_process, nobody_dir, run_cli


def _prune(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_cli("prune", "--settle", "0", *args, timeout=timeout)


def _names(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint-"))


def test_dry_run_lists_every_checkpoint_with_reasons_and_deletes_nothing(artefact):
    run = artefact("hf_full")
    p = _prune(str(run), "--keep-last", "1", "--dry-run", "--json")
    assert p.returncode == 0, p.stderr
    (item,) = json.loads(p.stdout)["runs"]
    plan = item["retention"]
    assert sorted(Path(x).name for x in plan["delete"]) == ["checkpoint-2", "checkpoint-4"]
    assert [Path(x).name for x in plan["keep"]] == ["checkpoint-6"]
    assert all(plan["reasons"][x] for x in plan["keep"] + plan["delete"])
    assert plan["bytes_freed"] > 0 and item["outcomes"] == []
    assert _names(run) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    text = _prune(str(run), "--keep-last", "1", "--dry-run")
    assert "would free" in text.stdout and "checkpoint-2" in text.stdout


def test_prune_deletes_through_the_trash_and_leaves_no_trash(artefact):
    run = artefact("hf_full")
    p = _prune(str(run), "--keep-last", "1", "--json")
    assert p.returncode == 0, p.stderr
    (item,) = json.loads(p.stdout)["runs"]
    assert sorted((Path(o["path"]).name, o["result"]) for o in item["outcomes"]) == [
        ("checkpoint-2", "deleted"), ("checkpoint-4", "deleted")]
    assert _names(run) == ["checkpoint-6"]
    assert not (run / TRASH_NAME).exists()
    after = json.loads(run_cli("once", "--json", "--settle", "0", "--no-loss", str(run)).stdout)
    assert [Path(c["path"]).name for c in after["runs"][0]["checkpoints"]] == ["checkpoint-6"]
    assert after["runs"][0]["checkpoints"][0]["status"] == "complete"


def test_the_trash_is_never_a_checkpoint_or_a_run(artefact):
    """A checkpoint moved into the trash and not yet removed is invisible to once and latest."""
    run = artefact("hf_full")
    entry = delete.move_to_trash(str(run / "checkpoint-6"), str(run), reason="test", size=0, now=0.0)
    assert entry is not None and Path(entry.path).is_dir()
    doc = json.loads(run_cli("once", "--json", "--settle", "0", "--no-loss", str(run)).stdout)
    names = [Path(c["path"]).name for r in doc["runs"] for c in r["checkpoints"]]
    assert names == ["checkpoint-2", "checkpoint-4"] and len(doc["runs"]) == 1
    latest = run_cli("latest", "--settle", "0", str(run))
    assert latest.stdout.strip().endswith("checkpoint-4")
    delete.remove_entry(entry)
    assert not (run / TRASH_NAME).exists()


_CRASHING_CHILD = textwrap.dedent("""
    import os, signal, sys
    from ckptwatch.retention import delete
    point = sys.argv[1]
    real_write, real_remove = delete._write_new, delete.remove_entry
    def write(dir_fd, name, text):
        if point == "before_marker" and name == delete.MOVED:
            os.kill(os.getpid(), signal.SIGKILL)
        real_write(dir_fd, name, text)
    def remove(entry):
        if point == "before_remove":
            os.kill(os.getpid(), signal.SIGKILL)
        real_remove(entry)
    delete._write_new, delete.remove_entry = write, remove
    from ckptwatch.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize(("point", "survivors"), [
    ("before_marker", ["checkpoint-2", "checkpoint-4", "checkpoint-6"]),  # rolled back: whole again
    ("before_remove", ["checkpoint-4", "checkpoint-6"]),  # decided: gone, the trash emptied
])
def test_kill_9_mid_deletion_then_restart_leaves_the_whole_checkpoint_or_nothing(artefact, point, survivors):
    run = artefact("hf_full")
    child = subprocess.run([sys.executable, "-c", _CRASHING_CHILD, point, "prune", "--settle", "0",
                            "--keep-last", "1", str(run)],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert (run / TRASH_NAME).is_dir()  # the crash left an entry behind
    assert "checkpoint-2" not in _names(run)
    # the restart: recovery runs before any new deletion (here with a policy that deletes nothing new)
    p = _prune(str(run), "--keep-last", "3")
    assert p.returncode == 0, p.stderr
    assert _names(run) == survivors
    assert not (run / TRASH_NAME).exists()
    doc = json.loads(run_cli("once", "--json", "--settle", "0", "--no-loss", str(run)).stdout)
    assert {c["status"] for r in doc["runs"] for c in r["checkpoints"]} == {"complete"}


def test_a_checkpoint_that_vanishes_before_its_deletion_is_not_an_error(artefact):
    run = artefact("hf_full")
    assert delete.move_to_trash(str(run / "checkpoint-9"), str(run), reason="x", size=0, now=0.0) is None


@pytest.mark.parametrize("shape", ["link", "parent_link", "outside"])
def test_links_and_paths_outside_the_root_are_refused(artefact, tmp_path, shape):
    run = artefact("hf_full")
    if shape == "link":
        (run / "checkpoint-8").symlink_to(run / "checkpoint-2", target_is_directory=True)
        target = run / "checkpoint-8"
    elif shape == "parent_link":
        (run / "alias").symlink_to(run, target_is_directory=True)
        target = run / "alias" / "checkpoint-2"
    else:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "checkpoint-2").mkdir()
        target = elsewhere / "checkpoint-2"
    with pytest.raises(delete.DeletionRefused):
        delete.move_to_trash(str(target), str(run), reason="x", size=0, now=0.0)
    assert (run / "checkpoint-2" / "model.safetensors").exists()


@pytest.mark.parametrize("shape", ["symlink", "world_writable", "other_owner"])
def test_a_trash_dir_ckptwatch_did_not_make_stops_deletion(artefact, tmp_path, shape):
    run = artefact("hf_full")
    trash = run / TRASH_NAME
    if shape == "symlink":
        victim = tmp_path / "victim"
        victim.mkdir()
        trash.symlink_to(victim, target_is_directory=True)
    else:
        trash.mkdir()
        if shape == "world_writable":
            trash.chmod(0o777)
        else:
            os.chown(trash, 65534, 65534)
    with pytest.raises(delete.DeletionRefused, match="nothing is deleted in this directory"):
        delete.move_to_trash(str(run / "checkpoint-2"), str(run), reason="x", size=0, now=0.0)
    assert (run / "checkpoint-2").is_dir()
    assert delete.recover(str(run)) and (run / "checkpoint-2").is_dir()  # recover leaves it alone too


def test_permission_denied_is_reported_once_and_nothing_else_is_touched(artefact, tmp_path):
    """As uid nobody, on a run owned by root (dirs 0755, files 0644: readable, not deletable): the first
    deletion fails, the second is not tried."""
    base = nobody_dir(tmp_path)
    try:
        run = base / "hf_full"
        shutil.copytree(artefact("hf_full"), run, symlinks=True)
        for d in [run, *run.rglob("*")]:
            d.chmod(0o755 if d.is_dir() else 0o644)
        argv = ["prune", "--settle", "0", "--keep-last", "1", "--json", str(run)]
        assert cli_in_process([*argv, "--dry-run"])[0] == 0  # imports what the child will need
        code, out, err = cli_as_nobody(argv)
        assert code == 1, err
        (item,) = json.loads(out)["runs"]
        results = sorted((Path(o["path"]).name, o["result"]) for o in item["outcomes"])
        assert results == [("checkpoint-2", "refused"), ("checkpoint-4", "skipped")]
        refused = next(o for o in item["outcomes"] if o["result"] == "refused")
        assert "permission denied" in refused["reason"] and "uid 65534" in refused["reason"]
        assert _names(run) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_pin_never_changes_a_verdict(artefact):
    """``.ckptwatch-keep`` written long after the save is no "later save that did not finish"."""
    run = artefact("hf_full")
    pin = run / "checkpoint-2" / ".ckptwatch-keep"
    pin.write_text("release candidate\n")
    old = (run / "checkpoint-2" / "trainer_state.json").stat().st_mtime - 3600
    for f in (run / "checkpoint-2").iterdir():
        if f != pin:
            os.utime(f, (old, old))
    doc = json.loads(run_cli("once", "--json", "--settle", "0", "--no-loss", str(run)).stdout)
    v2 = next(c for c in doc["runs"][0]["checkpoints"] if c["path"].endswith("checkpoint-2"))
    assert v2["status"] == "complete" and not [p for p in v2["problems"] if p["severity"] == "error"]
    plan = json.loads(_prune(str(run), "--keep-last", "1", "--dry-run", "--json").stdout)["runs"][0]
    assert "pinned: release candidate" in plan["retention"]["reasons"][str(run / "checkpoint-2")]


def test_a_per_rank_checkpoint_goes_with_all_its_ranks(artefact):
    """MindSpore keeps one file per rank per step (synthetic builder: MindSpore cannot run here): a step
    is deleted with every rank's file, the newest step keeps all of its ranks."""
    run = artefact("mindspore")
    p = _prune(str(run), "--keep-last", "1", "--json")
    assert p.returncode == 0, p.stderr
    (item,) = json.loads(p.stdout)["runs"]
    assert {o["result"] for o in item["outcomes"]} == {"deleted"} and len(item["outcomes"]) == 2
    left = sorted(f.name for f in run.rglob("*.ckpt"))
    assert left and all(name.endswith("-1_15.ckpt") for name in left)
    assert len(left) == len(list(run.rglob("meta.json")))  # one file per rank, every rank
    assert not list(run.rglob(TRASH_NAME))


def test_a_checkpoint_deleted_by_someone_else_mid_prune_is_no_error(artefact):
    """The trainer's own rotation removes checkpoint-2 between the plan and the deletion."""
    import time

    from ckptwatch.config.retention import RetentionConfig
    from ckptwatch.engine import check_root, check_run_dir
    from ckptwatch.layouts.base import CheckOptions
    from ckptwatch.retention import execute

    run = artefact("hf_full")
    opts, policy = CheckOptions(settle_seconds=0), RetentionConfig(keep_last=1)
    (report,) = check_root(str(run), opts, time.time()).runs
    run_plan = execute.plan_for(report, policy, str(run), time.time())
    assert len(run_plan.plan.deletions) == 2

    def rejudge():
        shutil.rmtree(run / "checkpoint-2")  # someone else, right before our re-check
        return next(iter(check_run_dir(str(run), opts, time.time()) or []), None)

    outcomes = execute.prune(run_plan, policy, str(run), time.time(), rejudge)
    assert sorted((Path(o.path).name, o.result) for o in outcomes) == [
        ("checkpoint-2", "vanished"), ("checkpoint-4", "deleted")]
    assert _names(run) == ["checkpoint-6"]
