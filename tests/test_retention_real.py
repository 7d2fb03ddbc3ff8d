"""Retention end to end on real framework output: each invariant pinned through ``ckptwatch prune --json``.

Every checkpoint here was written by its framework at test time (``tests/builders``): the Trainer's
``checkpoint-{2,4,6}``, DeepSpeed ZeRO-2's ``global_step{2,4}`` and ``latest``, Lightning's step files and
``last.ckpt`` (a link, and a copy), a 4-rank ``torch.distributed.checkpoint`` run; the last test prunes in
the service while a real Trainer keeps saving. What a test changes on top (a removed weights file, an
mtime set in the past, a pin, a pointer moved to an older tag, a symlink) is said where it is done.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from structlog.testing import capture_logs

from ckptwatch.scan import TRASH_NAME
from tests.builders.hf import LIVE_STEPS, _child_env
from tests.helpers import REPO, make_daemon, run_cli

HOUR = 3600.0


def _prune(run: Path, *args: str, settle: str = "0") -> dict:
    """``ckptwatch prune --json RUN ARGS``; its one run's JSON (exit code 0 asserted)."""
    p = run_cli("prune", "--settle", settle, "--json", *args, str(run))
    assert p.returncode == 0, p.stderr
    (item,) = json.loads(p.stdout)["runs"]
    return item


def _by_name(item: dict) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(checkpoint name -> its reasons, checkpoint name -> outcome result) of one run's prune JSON."""
    reasons = {Path(k).name: v for k, v in item["retention"]["reasons"].items()}
    results = {Path(o["path"]).name: o["result"] for o in item["outcomes"]}
    return reasons, results


def _once(path: Path, settle: str = "0") -> dict[str, dict]:
    """``ckptwatch once --json``: checkpoint name -> its JSON, over every run found."""
    p = run_cli("once", "--json", "--settle", settle, "--no-loss", str(path))
    doc = json.loads(p.stdout)
    return {Path(c["path"]).name: c for r in doc["runs"] for c in r["checkpoints"]}


def _names(run: Path, prefix: str = "checkpoint-") -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith(prefix))


def _age(path: Path, seconds: float) -> None:
    """Set the mtime of ``path`` and of everything below it ``seconds`` in the past (links not followed)."""
    then = time.time() - seconds
    for p in [*path.rglob("*"), path]:
        os.utime(p, (then, then), follow_symlinks=False)


# ---------------------------------------------------------------------------------------------------
# 1. the newest complete checkpoint


def test_the_newest_complete_survives_when_no_rule_keeps_it(artefact):
    """Steps 2, 4, 6 are no milestones of 1000: every rule passes over all three, the newest stays."""
    run = artefact("hf_full")
    item = _prune(run, "--keep-every-steps", "1000")
    reasons, results = _by_name(item)
    assert results == {"checkpoint-2": "deleted", "checkpoint-4": "deleted"}
    assert reasons["checkpoint-6"] == ["newest complete"]
    assert all("no keep rule keeps it" in reasons[n][0] for n in ("checkpoint-2", "checkpoint-4"))
    assert _names(run) == ["checkpoint-6"] and not (run / TRASH_NAME).exists()
    assert _once(run)["checkpoint-6"]["status"] == "complete"


# ---------------------------------------------------------------------------------------------------
# 2. unsettled, and newer than the newest complete


def test_unsettled_and_newer_than_the_newest_complete_survive(artefact):
    """checkpoint-6 is a crashed save (its weights removed; settled for 2 h), checkpoint-8 a save being
    written now (the first files of a Trainer save: checkpoint-4's config.json and the first half of its
    model.safetensors, fresh mtimes), checkpoint-2 is being rewritten now (one file touched). With
    ``--keep-last 1 --delete-incomplete-after 1h`` only checkpoint-4 is complete, and nothing else may go;
    once checkpoint-2 has settled too, it is deleted."""
    run = artefact("hf_full")
    (run / "checkpoint-6" / "model.safetensors").unlink()
    saving = run / "checkpoint-8"
    saving.mkdir()
    shutil.copy(run / "checkpoint-4" / "config.json", saving / "config.json")
    weights = (run / "checkpoint-4" / "model.safetensors").read_bytes()
    (saving / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    _age(run, 2 * HOUR)
    _age(saving, 0)
    (run / "checkpoint-2" / "optimizer.pt").touch()
    statuses = {n: c["status"] for n, c in _once(run, settle="600").items()}
    assert statuses == {"checkpoint-2": "in_progress", "checkpoint-4": "complete",
                        "checkpoint-6": "incomplete", "checkpoint-8": "in_progress"}

    item = _prune(run, "--keep-last", "1", "--delete-incomplete-after", "1h", settle="600")
    reasons, results = _by_name(item)
    assert results == {} and item["retention"]["delete"] == []
    assert reasons["checkpoint-4"][0] == "newest complete"
    assert reasons["checkpoint-6"] == ["newer than the newest complete (step 4)"]
    assert reasons["checkpoint-8"] == ["newer than the newest complete (step 4)", "not settled (in_progress)"]
    assert reasons["checkpoint-2"] == ["not settled (in_progress)"]
    assert _names(run) == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8"]

    _age(run / "checkpoint-2", 2 * HOUR)  # its rewrite settled: now it is just an old complete one
    item = _prune(run, "--keep-last", "1", "--delete-incomplete-after", "1h", settle="600")
    assert _by_name(item)[1] == {"checkpoint-2": "deleted"}
    assert _names(run) == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]
    assert (saving / "model.safetensors").stat().st_size == len(weights) // 2  # untouched


# ---------------------------------------------------------------------------------------------------
# 3. the Trainer's recorded best


def _recorded_best(run: Path) -> str:
    state = json.loads((run / "checkpoint-6" / "trainer_state.json").read_text())
    return Path(state["best_model_checkpoint"]).name


def test_keep_best_by_the_trainers_own_ranking_keeps_the_oldest(artefact):
    """``hf_best_first``: the Trainer ranked eval_loss with greater_is_better, so its best is the oldest
    checkpoint; ``--keep-best 1 --mode max`` ranks the same way: checkpoint-2 is both the rule's best and
    the protected recorded best, checkpoint-6 the newest complete, checkpoint-4 goes."""
    run = artefact("hf_best_first")
    assert _recorded_best(run) == "checkpoint-2"
    item = _prune(run, "--keep-best", "1", "--metric", "eval_loss", "--mode", "max")
    reasons, results = _by_name(item)
    assert results == {"checkpoint-4": "deleted"}
    assert reasons["checkpoint-2"][0] == "the run's recorded best checkpoint"
    assert reasons["checkpoint-2"][1].startswith("best 1 of 1 by eval_loss (")
    assert reasons["checkpoint-6"][0] == "newest complete"
    assert _names(run) == ["checkpoint-2", "checkpoint-6"]


def test_the_recorded_best_is_protected_only_while_keep_best_is_on(artefact):
    """``--keep-best 1 --metric eval_loss`` (mode min) ranks checkpoint-6 best, yet the Trainer's own
    record (checkpoint-2) is still protected, whatever the mode: the invariant is about what a
    ``load_best_model_at_end`` resume would look for. With keep_best off, the record protects nothing:
    ``--keep-last 1`` deletes checkpoint-2, and the newest trainer_state.json then names a checkpoint
    that is gone (the Trainer tolerates it: it checks ``os.path.exists`` before loading the best)."""
    run = artefact("hf_best_first")
    item = _prune(run, "--keep-last", "1", "--keep-best", "1", "--metric", "eval_loss", "--dry-run")
    reasons, _ = _by_name(item)
    assert sorted(Path(p).name for p in item["retention"]["delete"]) == ["checkpoint-4"]
    assert reasons["checkpoint-2"] == ["the run's recorded best checkpoint"]
    assert reasons["checkpoint-6"][0] == "newest complete"
    assert any(r.startswith("best 1 of 1 by eval_loss (") for r in reasons["checkpoint-6"])

    item = _prune(run, "--keep-last", "1")
    assert _by_name(item)[1] == {"checkpoint-2": "deleted", "checkpoint-4": "deleted"}
    assert _names(run) == ["checkpoint-6"] and _recorded_best(run) == "checkpoint-2"


# ---------------------------------------------------------------------------------------------------
# 4. pins


def test_a_pin_keeps_its_checkpoint_and_its_text_is_the_reason(artefact):
    run = artefact("hf_full")
    (run / "checkpoint-2" / ".ckptwatch-keep").write_text("release candidate\n")
    item = _prune(run, "--keep-last", "1")
    reasons, results = _by_name(item)
    assert results == {"checkpoint-4": "deleted"}
    assert reasons["checkpoint-2"] == ["pinned: release candidate"]
    assert _names(run) == ["checkpoint-2", "checkpoint-6"]
    assert (run / "checkpoint-2" / ".ckptwatch-keep").read_text() == "release candidate\n"


# ---------------------------------------------------------------------------------------------------
# 5. framework pointers


def test_deepspeed_latest_naming_an_older_tag_keeps_that_tag(artefact):
    """ZeRO-2 wrote ``latest`` = ``global_step4``; pointed at ``global_step2`` (as DeepSpeed writes it: the
    tag, no newline), ``load_checkpoint`` resumes step 2, so step 2 survives ``--keep-last 1``. Pointed
    back at the newest, step 2 is an ordinary old checkpoint and goes."""
    run = artefact("deepspeed_zero2")
    assert (run / "latest").read_text() == "global_step4"
    (run / "latest").write_text("global_step2")
    item = _prune(run, "--keep-last", "1")
    reasons, results = _by_name(item)
    assert results == {} and reasons["global_step2"] == ["named by DeepSpeed latest"]
    assert _names(run, "global_step") == ["global_step2", "global_step4"]

    (run / "latest").write_text("global_step4")
    item = _prune(run, "--keep-last", "1")
    reasons, results = _by_name(item)
    assert results == {"global_step2": "deleted"}
    assert "named by DeepSpeed latest" in reasons["global_step4"]
    assert _names(run, "global_step") == ["global_step4"]
    assert (run / "zero_to_fp32.py").is_file()  # nothing but the checkpoint is touched
    assert _once(run)["global_step4"]["status"] == "complete"


def test_lightning_last_link_keeps_its_target_even_when_older(artefact):
    """``save_last="link"``: ``last.ckpt`` is a relative symlink to the newest step file. Its target is
    kept (newest complete and named by the link); the link itself is no checkpoint and stays. Relinked to
    the older step file (what a resume from "last" would then read), that one survives too."""
    run = artefact("lightning")
    ckpts = run / "checkpoints"
    assert os.readlink(ckpts / "last.ckpt") == "epoch=0-step=8.ckpt"
    (ckpts / "last.ckpt").unlink()
    (ckpts / "last.ckpt").symlink_to("epoch=0-step=4.ckpt")
    item = _prune(run, "--keep-last", "1")
    reasons, results = _by_name(item)
    assert results == {} and reasons["epoch=0-step=4.ckpt"] == ["named by Lightning last.ckpt"]

    (ckpts / "last.ckpt").unlink()
    (ckpts / "last.ckpt").symlink_to("epoch=0-step=8.ckpt")
    item = _prune(run, "--keep-last", "1")
    reasons, results = _by_name(item)
    assert results == {"epoch=0-step=4.ckpt": "deleted"}
    assert reasons["epoch=0-step=8.ckpt"][:2] == ["newest complete", "named by Lightning last.ckpt"]
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch=0-step=8.ckpt", "last.ckpt"]
    assert (ckpts / "last.ckpt").resolve() == ckpts / "epoch=0-step=8.ckpt"


def test_lightning_last_copy_is_the_newest_and_the_top_k_files_follow_the_rules(artefact):
    """``save_last=True`` writes ``last.ckpt`` as a copy saved after the step-8 top-k file: it is a
    checkpoint of its own, the newest complete (same step, newer mtime) and what ``ckpt_path="last"``
    reads. ``--keep-last 1`` keeps it alone: both top-k files go, including the callback's
    ``best_model_path`` (keep_best is off). With ``--keep-best 1 --metric val_loss`` that best survives."""
    run = artefact("lightning_top_k")
    ckpts = run / "checkpoints"
    best = json.loads((run / "callback_truth.json").read_text())["best_model_path"]
    item = _prune(run, "--keep-last", "1", "--keep-best", "1", "--metric", "val_loss")
    reasons, results = _by_name(item)
    (other,) = set(results)
    assert results[other] == "deleted" and other != best and other.startswith("epoch=0-step=8-")
    assert reasons[best][0] == "the run's recorded best checkpoint"
    assert reasons[best][1].startswith("best 1 of 1 by val_loss (")
    assert reasons["last.ckpt"][:2] == ["newest complete", "named by Lightning last.ckpt"]

    item = _prune(run, "--keep-last", "1")
    assert _by_name(item)[1] == {best: "deleted"}
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt"]
    assert _once(run)["last.ckpt"]["status"] == "complete"


# ---------------------------------------------------------------------------------------------------
# 6. a symlinked checkpoint


def test_a_symlinked_checkpoint_and_its_target_are_kept(artefact):
    """``checkpoint-8 -> checkpoint-2`` inside the run: discovery does not descend a symlinked dir, so the
    link is no checkpoint of its own and is never deleted. But it is a pointer: the Trainer's
    ``get_last_checkpoint`` follows it (it checks ``os.path.isdir``), and a resume would read
    checkpoint-2 through it. Its target survives ``--keep-last 1``, named by the link; deleting it would
    leave a dangling link (a ``dangling_symlink`` finding that ``once`` then reports)."""
    run = artefact("hf_full")
    (run / "checkpoint-8").symlink_to("checkpoint-2", target_is_directory=True)
    item = _prune(run, "--keep-last", "1")
    reasons, results = _by_name(item)
    assert results == {"checkpoint-4": "deleted"}
    assert "checkpoint-8" not in reasons
    assert reasons["checkpoint-2"] == ["named by symlink checkpoint-8"]
    assert (run / "checkpoint-8").is_symlink() and (run / "checkpoint-8" / "model.safetensors").is_file()
    p = run_cli("once", "--json", "--settle", "0", "--no-loss", str(run))
    assert p.returncode == 0, p.stdout
    assert "dangling_symlink" not in p.stdout


# ---------------------------------------------------------------------------------------------------
# 7. a 4-rank torch.distributed.checkpoint run


def test_dcp_steps_are_deleted_whole_and_the_newest_stays_complete(artefact):
    run = artefact("dcp")
    rank_files = ["__0_0.distcp", "__1_0.distcp", "__2_0.distcp", "__3_0.distcp"]
    for step in ("step_100", "step_200", "step_300"):
        assert sorted(p.name for p in (run / step).iterdir()) == [".metadata", *rank_files]
    before = {p.name: p.read_bytes() for p in (run / "step_300").iterdir()}
    item = _prune(run, "--keep-last", "1")
    reasons, results = _by_name(item)
    assert results == {"step_100": "deleted", "step_200": "deleted"}
    assert all(o["bytes"] > 0 for o in item["outcomes"])
    assert sorted(p.name for p in run.iterdir()) == ["step_300"]  # no partial step, no trash left
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()) == [
        f"step_300/{n}" for n in [".metadata", *rank_files]]
    assert {p.name: p.read_bytes() for p in (run / "step_300").iterdir()} == before
    checked = _once(run)
    assert list(checked) == ["step_300"]
    assert checked["step_300"]["status"] == "complete"
    assert checked["step_300"]["ranks"]["present"] == [0, 1, 2, 3]
    assert reasons["step_300"][0] == "newest complete"


# ---------------------------------------------------------------------------------------------------
# 8. crashed saves


def test_delete_incomplete_after_removes_only_old_crashed_saves_with_a_newer_complete_one(artefact):
    """checkpoint-2 and checkpoint-6 lose their weights (a save killed before the model was written),
    everything is set 3 h in the past. A threshold of 4 h deletes nothing; of 1 h it deletes the old
    crashed save checkpoint-2 (checkpoint-4 is complete and newer), never checkpoint-6 (newer than the
    newest complete, nothing newer vouches for the run)."""
    run = artefact("hf_full")
    for name in ("checkpoint-2", "checkpoint-6"):
        (run / name / "model.safetensors").unlink()
    _age(run, 3 * HOUR)
    statuses = {n: c["status"] for n, c in _once(run).items()}
    assert statuses == {"checkpoint-2": "incomplete", "checkpoint-4": "complete",
                        "checkpoint-6": "incomplete"}

    item = _prune(run, "--delete-incomplete-after", "4h")
    reasons, results = _by_name(item)
    assert results == {}
    assert reasons["checkpoint-2"] == ["crashed save, not older than delete_incomplete_after 4h"]
    assert reasons["checkpoint-4"] == ["newest complete", "no keep rule"]
    assert reasons["checkpoint-6"] == ["newer than the newest complete (step 4)"]

    item = _prune(run, "--delete-incomplete-after", "1h")
    reasons, results = _by_name(item)
    assert results == {"checkpoint-2": "deleted"}
    assert reasons["checkpoint-2"] == ["crashed save, older than 1h, step 4 is complete"]
    assert _names(run) == ["checkpoint-4", "checkpoint-6"]


def test_a_crashed_dcp_save_goes_with_every_rank_file_it_has(artefact):
    """Rank 2's file of step_100 and rank 1's of step_300 are removed (saves killed mid-write), all set
    3 h in the past: ``--delete-incomplete-after 1h`` deletes step_100 whole (its three remaining rank
    files and ``.metadata``), keeps step_200 (newest complete) and step_300 (newer than it) as they are."""
    run = artefact("dcp")
    (run / "step_100" / "__2_0.distcp").unlink()
    (run / "step_300" / "__1_0.distcp").unlink()
    _age(run, 3 * HOUR)
    statuses = {n: c["status"] for n, c in _once(run).items()}
    assert statuses == {"step_100": "incomplete", "step_200": "complete", "step_300": "incomplete"}
    item = _prune(run, "--delete-incomplete-after", "1h")
    reasons, results = _by_name(item)
    assert results == {"step_100": "deleted"}
    assert reasons["step_300"] == ["newer than the newest complete (step 200)"]
    assert sorted(p.name for p in run.iterdir()) == ["step_200", "step_300"]
    assert sorted(p.name for p in (run / "step_300").iterdir()) == [
        ".metadata", "__0_0.distcp", "__2_0.distcp", "__3_0.distcp"]


# ---------------------------------------------------------------------------------------------------
# 9. the service pruning while a trainer keeps writing


LIVE_TIMEOUT_S = 150.0


def test_the_service_prunes_while_a_real_trainer_keeps_saving(tmp_path):
    """A real Trainer (``python -m tests.builders.hf live``: save every step, a 1 s pause after each save,
    10 steps) writes into a watched root while an in-process service (inotify, settle 1 s,
    ``keep_last 2``) turns its loop. The trainer must finish cleanly (a deletion under its save or its
    own bookkeeping would crash it), the two newest survive complete, the older ones were deleted by the
    service while it ran, and no deletion named a checkpoint whose last verdict was not complete."""
    root = tmp_path / "root"
    root.mkdir()
    run = root / "run"
    d = make_daemon(tmp_path / "state", root, observer="inotify", settle_seconds=1,
                    watch={"retention": {"keep_last": 2}})
    trainer = None
    try:
        with capture_logs() as logs, (tmp_path / "trainer.stderr").open("wb") as err_file:
            d.observers.start(d.config.watches, d.judge.run_index)
            d.judge_watch(d.config.watches[0])
            trainer = subprocess.Popen([sys.executable, "-m", "tests.builders.hf", "live", str(run)],
                                       cwd=REPO, env=_child_env(), stdout=subprocess.DEVNULL, stderr=err_file,
                                       start_new_session=True)
            deadline = time.monotonic() + LIVE_TIMEOUT_S
            deleted_while_training = 0
            while trainer.poll() is None and time.monotonic() < deadline:
                time.sleep(min(0.2, d.step()))
                deleted_while_training = sum(1 for e in logs if e["event"] == "checkpoint_deleted")
            assert trainer.poll() is not None, f"the trainer did not finish in {LIVE_TIMEOUT_S:.0f} s"
            err = (tmp_path / "trainer.stderr").read_text(errors="replace")
            assert trainer.returncode == 0, err[-3000:]
            time.sleep(1.5)  # the last save settles
            for _ in range(2):  # judge, prune off the loop, then judge what is left
                d.judge_watch(d.config.watches[0])
                assert d.background.wait_idle(60)
                d.background.drain()
        newest = [f"checkpoint-{LIVE_STEPS - 1}", f"checkpoint-{LIVE_STEPS}"]
        assert sorted(_names(run)) == sorted(newest)
        assert {n: c["status"] for n, c in _once(run).items()} == dict.fromkeys(newest, "complete")
        assert not (run / TRASH_NAME).exists()

        status: dict[str, str] = {}
        deleted: list[str] = []
        for e in logs:
            if e["event"] == "checkpoint_judged":
                status[e["checkpoint"]] = e["status"]
            elif e["event"] == "checkpoint_deleted":
                assert status.get(e["checkpoint"]) == "complete", (e, status.get(e["checkpoint"]))
                assert e["bytes"] > 0 and "keep_last" in e["reason"]
                deleted.append(Path(e["checkpoint"]).name)
        assert sorted(deleted) == sorted(f"checkpoint-{s}" for s in range(1, LIVE_STEPS - 1))
        assert len(set(deleted)) == len(deleted)
        assert deleted_while_training >= 3, "the service should prune while the trainer is still writing"
        unwanted = ("retention_blocked", "service_error", "retention_skipped")
        assert not [e for e in logs if e["event"] in unwanted]
    finally:
        if trainer is not None and trainer.poll() is None:
            os.killpg(trainer.pid, signal.SIGKILL)
            trainer.wait()
        for w in d.observers.watchers.values():
            w.stop()
        d.close()
