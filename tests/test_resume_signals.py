"""Resumes that no loss writer shows (issue 10 section 3): the run configuration in trainer_state.json,
the adapter's configuration, a checkpoint written again under the service, and the loss going back to
the run's initial level. Real Trainer + PEFT runs from ``tests/builders/loss.py``; each bad case must
alert, each healthy one (LR warm-up restarts, a changed batch size, an eval spike) must not."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from ckptwatch.hazards import CheckpointFacts, run_hazards
from ckptwatch.losswatch import LossSettings, analyse_run
from ckptwatch.losswatch.points import LazyPoints, LossPoint
from ckptwatch.losswatch.signals import LevelScan, config_change, run_config
from tests.helpers import make_daemon, run_cli

S = LossSettings()
TS_ONLY = LossSettings(sources=("trainer_state",))
WAIT = 30.0


# --- pure: the run configuration, the adapter configuration, the level scan ---------------------------


def test_config_change_names_both_values_and_checkpoints() -> None:
    """Only fields both checkpoints record count (another transformers version writes others)."""
    a = run_config({"max_steps": 20, "num_train_epochs": 3, "save_steps": 5, "global_step": 10})
    b = run_config({"max_steps": 30, "num_train_epochs": 4, "save_steps": 5, "global_step": 15,
                    "train_batch_size": 8})
    assert config_change(a, "checkpoint-10", b, "checkpoint-15") == (
        "max_steps 20 in checkpoint-10, 30 in checkpoint-15; num_train_epochs 3 in checkpoint-10, 4 in "
        "checkpoint-15")
    assert config_change(a, "checkpoint-10", dict(a or {}), "checkpoint-15") is None
    assert run_config({"global_step": 3}) is None and run_config([1]) is None


def _scan(values: list[float], batch: int) -> list[int]:
    scan, hits = LevelScan(), []
    pts = [LossPoint(i + 1, v) for i, v in enumerate(values)]
    initial = values[:S.window]
    for i in range(0, len(pts), batch):
        hits += scan.feed(pts[i:i + batch], initial, S)
    return [h.at_step for h in hits]


DESCENT = [1.9, 1.7, 1.4, 1.0, 0.7, 0.5, 0.45, 0.44, 0.46, 0.43, 0.42, 0.44, 0.41]
RESTART = [1.85, 1.9, 1.8, 1.75, 1.7, 1.6, 1.5, 1.4, 1.2, 1.0]  # a fresh model from step 14 on


@pytest.mark.parametrize("batch", [1, 3, 5, 100])
def test_level_scan_finds_the_return_to_the_initial_loss(batch: int) -> None:
    """A restart from scratch at step 14, fed in any batch size, is found at step 14, once."""
    assert _scan(DESCENT + RESTART, batch) == [14]


@pytest.mark.parametrize("tail", [
    [0.41, 3.0, 0.42, 0.40, 0.41, 0.40, 0.39, 0.40, 0.38, 0.40],  # one spike (a bad batch)
    [0.9, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.45, 0.42],  # doubled (an LR restart), not back to the start
    [float("nan")] * 3 + [0.4] * 7,  # non-finite losses are the non-finite rule's business
])
def test_level_scan_ignores_spikes_and_bumps(tail: list[float]) -> None:
    assert _scan(DESCENT + tail, 100) == []


def test_level_scan_reads_lazy_points_like_tuples() -> None:
    values = DESCENT + RESTART
    lazy = LazyPoints(list(range(1, len(values) + 1)), values)
    assert [h.at_step for h in LevelScan().feed(lazy, values[:5], S)] == [14]


def _adapter(config: dict) -> dict:
    return {"dir": "/r/c", "config": config, "weights": None}


def test_adapter_drift_extra_keys_only_when_both_record_them() -> None:
    """use_dora False -> True is drift; a key one PEFT version writes and another does not is not."""
    base = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "use_dora": False}
    a = CheckpointFacts("/r/checkpoint-10", 10, {"": _adapter(base)}, [])
    b = CheckpointFacts("/r/checkpoint-20", 20, {"": _adapter({**base, "use_dora": True})}, [])
    c = CheckpointFacts("/r/checkpoint-30", 30,
                        {"": _adapter({k: v for k, v in base.items() if k != "use_dora"})}, [])
    out = run_hazards([a, b])
    (h,) = out["/r/checkpoint-20"]
    assert h.message.startswith("use_dora False in checkpoint-10, True in checkpoint-20: the adapter was "
                                "re-created")
    assert run_hazards([a, c]) == {}


# --- real runs -----------------------------------------------------------------------------------------


def _without_logs(run: Path) -> Path:
    """Only the checkpoints: the TensorBoard files and the text log removed."""
    shutil.rmtree(run / "runs")
    (run / "train.log").unlink()
    return run


def _history(run: Path, ckpt: str) -> list[dict]:
    return json.loads((run / ckpt / "trainer_state.json").read_text())["log_history"]


@pytest.mark.slow
def test_overwriting_resume_seen_in_the_run_configuration(artefact) -> None:
    """The issue's case: checkpoints 5-20, then a process with max_steps 30 resumed from checkpoint-10
    with a fresh adapter and saved over 15 and 20. With only the checkpoints left, `once` reports the
    resume at step 11 from checkpoint-10 with its evidence, and alerts the loss jump (from scratch)."""
    run = _without_logs(artefact("loss_hf_overwrite_fresh"))
    h = [e["loss"] for e in _history(run, "checkpoint-15") if "loss" in e]
    assert h[9] < 0.5 and h[10] > 1.5 and abs(h[10] - h[0]) < 0.2  # back at the initial loss at step 11
    out = run_cli("once", "--settle", "0", "--json", str(run))
    assert out.returncode == 1, out.stderr
    (r,) = json.loads(out.stdout)["runs"][0]["loss"]["resumes"]
    assert (r["signal"], r["at_step"], r["from_step"], r["alert"], r["scratch"]) == (
        "config", 11, 10, True, True)
    assert r["from_checkpoint"].endswith("checkpoint-10")
    assert "max_steps 20 in checkpoint-10, 30 in checkpoint-15" in r["evidence"]
    assert "num_train_epochs 3 in checkpoint-10, 4 in checkpoint-15" in r["evidence"]
    assert r["evidence"] in r["message"] and "restarted from scratch" in r["message"]
    table = run_cli("once", "--settle", "0", str(run)).stdout
    assert "LOSS JUMP at step 11" in table


@pytest.mark.slow
def test_overwriting_resume_with_the_same_arguments_seen_in_the_loss_alone(artefact) -> None:
    """The same restart with max_steps unchanged: no configuration changes, no writer shows it; the loss
    going back to its initial level at step 11 is alerted, after checkpoint-10."""
    run = _without_logs(artefact("loss_hf_overwrite_fresh_same_args"))
    report = analyse_run(str(run), S)
    (r,) = report.resumes
    assert (r.signal, r.at_step, r.alert, r.scratch) == ("loss_level", 11, True, True)
    assert r.from_checkpoint == str(run / "checkpoint-10")
    assert r.writer.endswith("checkpoint-15/trainer_state.json")
    assert r.before < 0.5 and r.after > 1.5
    assert report.verdict() == "ALERT: loss back at its initial level at step 11 (restarted from scratch)"


@pytest.mark.slow
def test_honest_overwriting_resume_is_reported_not_alerted(artefact) -> None:
    """The correct resume from checkpoint-10 with max_steps 30: a resume (the configuration shows it),
    its loss continues (about 0.45 -> 0.38): no alert, exit 0."""
    run = _without_logs(artefact("loss_hf_overwrite_ok"))
    (r,) = analyse_run(str(run), S).resumes
    assert (r.signal, r.at_step, r.from_step, r.alert) == ("config", 11, 10, False)
    assert r.ratio is not None and 0.7 < r.ratio < 1.2 and "continued normally" in r.reason
    assert run_cli("once", "--settle", "0", str(run)).returncode == 0


@pytest.mark.slow
def test_changed_batch_size_on_an_honest_resume_is_no_alarm(artefact) -> None:
    """Resumed from checkpoint-20 with batch 16 instead of 8: every source sees one resume at 21 and no
    jump; trainer_state.json alone shows it through num_train_epochs (5 -> 10)."""
    run = artefact("loss_hf_resume_batch16")
    (r,) = analyse_run(str(run), S).resumes
    assert (r.source, r.at_step, r.alert) == ("tensorboard", 21, False)
    (r,) = analyse_run(str(run), TS_ONLY).resumes
    assert (r.signal, r.at_step, r.from_step, r.alert) == ("config", 21, 20, False)
    assert r.evidence == "num_train_epochs 5 in checkpoint-20, 10 in checkpoint-30"
    assert run_cli("once", "--settle", "0", str(_without_logs(run))).returncode == 0


@pytest.mark.slow
def test_lr_warm_up_restarts_are_no_alarm(artefact) -> None:
    """cosine_with_restarts at a hot peak LR: the loss overshoots past the first loss in the warm-up and
    doubles at the restarts, in one process: no resume, no alert, in any source."""
    run = artefact("loss_hf_restarts")
    loss = {e["step"]: e["loss"] for e in _history(run, "checkpoint-40") if "loss" in e}
    assert max(loss[5], loss[6]) > loss[1]  # the warm-up overshoot
    assert max(loss[16], loss[17]) > 1.8 * loss[15] and max(loss[25], loss[26]) > 1.8 * loss[23]
    for settings in (S, TS_ONLY):
        assert analyse_run(str(run), settings).resumes == ()
    assert run_cli("once", "--settle", "0", str(run)).returncode == 0


@pytest.mark.slow
def test_eval_spike_is_no_alarm(artefact) -> None:
    """eval_loss climbs far above the run's first train loss (another task) while the train loss falls:
    eval_loss is not the train loss, in trainer_state.json or in TensorBoard."""
    run = artefact("loss_hf_eval_spike")
    hist = _history(run, "checkpoint-40")
    evals = [e["eval_loss"] for e in hist if "eval_loss" in e]
    first = next(e["loss"] for e in hist if "loss" in e)
    assert evals[1] > 1.5 * evals[0] and max(evals) > first
    for settings in (S, TS_ONLY):
        assert analyse_run(str(run), settings).resumes == ()
    assert run_cli("once", "--settle", "0", str(run)).returncode == 0


@pytest.mark.slow
def test_adapter_re_created_with_another_alpha_is_a_hazard_naming_both(artefact) -> None:
    """A resume script that builds its adapter with lora_alpha 16 (the run trained with 8): the first
    checkpoint it wrote carries adapter_config_drift naming both values and both checkpoints."""
    run = artefact("loss_hf_resume_alpha16")
    out = run_cli("once", "--settle", "0", "--json", str(run))
    ckpts = {os.path.basename(c["path"]): c for c in json.loads(out.stdout)["runs"][0]["checkpoints"]}
    (h,) = [h for h in ckpts["checkpoint-30"]["hazards"] if h["kind"] == "adapter_config_drift"]
    assert h["file"].endswith("checkpoint-30/adapter_config.json")
    assert h["message"].startswith("lora_alpha 8 in checkpoint-20, 16 in checkpoint-30: the adapter was "
                                   "re-created with other settings")
    assert not [h for h in ckpts["checkpoint-40"]["hazards"] if h["kind"] == "adapter_config_drift"]


# --- the service ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_service_logs_a_checkpoint_written_again_and_alerts_the_loss(artefact, tmp_path: Path) -> None:
    """The service judged the first process's checkpoints 5-20; the second process (fresh adapter,
    max_steps 30, from checkpoint-10) then saves over 15 and 20. The service logs both as written
    again, and the resume from checkpoint-10 with the loss jump (trainer_state.json only: no logs)."""
    from structlog.testing import capture_logs

    first, second = artefact("loss_hf_overwrite_first"), artefact("loss_hf_overwrite_fresh")
    root = tmp_path / "root"
    root.mkdir()
    run = root / "run-lora"
    shutil.copytree(first, run, symlinks=True)
    _without_logs(run)
    d = make_daemon(tmp_path / "state", root, alerts={})
    try:
        with capture_logs() as logs:
            d.judge_watch(d.config.watches[0])
        assert not [e for e in logs if e["event"] == "resume_detected"]
        # a pin and a touched file are not a rewrite
        (run / "checkpoint-15" / ".ckptwatch-keep").touch()
        os.utime(run / "checkpoint-20" / "trainer_state.json")
        with capture_logs() as logs:
            d.judge_watch(d.config.watches[0])
        assert not [e for e in logs if e["event"] == "resume_detected"]
        for name in ("checkpoint-15", "checkpoint-20", "checkpoint-25", "checkpoint-30"):
            # the second process's files, written now (as that process wrote them: not their old mtimes)
            shutil.copytree(second / name, run / name, dirs_exist_ok=True, copy_function=shutil.copy)
        with capture_logs() as logs:
            d.judge_watch(d.config.watches[0])
        found = [e for e in logs if e["event"] == "resume_detected"]
        rewritten = sorted(os.path.basename(e["checkpoint"]) for e in found if e["signal"] == "rewritten")
        assert rewritten == ["checkpoint-15", "checkpoint-20"]
        assert all(not e["alert"] and "written again" in e["message"]
                   for e in found if e["signal"] == "rewritten")
        (loss,) = [e for e in found if e["signal"] != "rewritten"]
        assert loss["alert"] and loss["step"] == 11 and loss["checkpoint"].endswith("checkpoint-10")
        assert "max_steps 20 in checkpoint-10, 30 in checkpoint-15" in loss["evidence"]
    finally:
        d.close(timeout=WAIT)


def test_a_pointer_that_moves_on_is_not_a_rewrite(tmp_path: Path) -> None:
    """Lightning's last.ckpt (save_last=True) is written again at every save, each time at a newer step:
    not logged. Written again at the step it already held (a resumed process saving over it): logged."""
    from structlog.testing import capture_logs

    from ckptwatch.model import Status, Verdict
    from ckptwatch.resume import run_report

    root = tmp_path / "root"
    last = root / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    d = make_daemon(tmp_path / "state", root, alerts={})
    sink, watch = d.sink("loss watch"), d.config.watches[0]

    def save(step: int, at: float) -> list[dict]:
        last.write_bytes(b"step %d" % step)
        os.utime(last, (at, at))
        v = Verdict(str(last), step, "lightning", Status.COMPLETE, newest_mtime=at)
        with capture_logs() as logs:
            sink.judged(watch, run_report(str(root / "run"), "lightning", (v,)), at)
        return [e for e in logs if e["event"] == "resume_detected"]

    try:
        now = time.time()
        assert save(8, now - 300) == []
        assert save(12, now - 200) == []  # moved on to step 12
        (e,) = save(12, now - 100)  # step 12 written again
        assert (e["signal"], e["step"], e["alert"]) == ("rewritten", 12, False)
        assert e["checkpoint"] == str(last) and "written again" in e["message"]
    finally:
        d.close(timeout=WAIT)
