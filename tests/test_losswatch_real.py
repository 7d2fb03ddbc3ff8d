"""The loss watch on runs written by the real frameworks (transformers 5.23 + peft 0.21.2, Lightning 2.6):
interrupted at step 25, resumed from the step-20 checkpoint correctly or wrongly (tests/builders/loss.py).

Numbers these tests see (median of 5 losses before / after the resume, TensorBoard or metrics.csv) are
printed with ``-s``; the README quotes them.
"""

from __future__ import annotations

import json
import os
import struct
import zlib

import pytest

from ckptwatch.losswatch import LossSettings, analyse_run, plot_history
from tests.helpers import run_cli

S = LossSettings()
pytestmark = pytest.mark.slow


def _show(name, report):
    for r in report.resumes:
        print(f"\n{name}: {r.source} resume at {r.at_step} from {r.from_step}: before {r.before:.4f} "
              f"after {r.after:.4f} ratio {r.ratio:.2f} alert {r.alert} scratch {r.scratch}")


def _only(report, source):
    assert [r.source for r in report.resumes] == [source], report.resumes
    return report.resumes[0]


def test_hf_interrupted_run_alone_has_no_resume(artefact):
    """The first process alone (stopped at 25, checkpoints 10 and 20) shows no resume in any source."""
    report = analyse_run(str(artefact("loss_hf_interrupted")), S)
    assert report.resumes == ()
    assert {s.source for s in report.segments} == {"tensorboard", "text", "trainer_state"}


def test_hf_correct_resume_no_alert(artefact):
    """trainer.train(resume_from_checkpoint=checkpoint-20): the loss continues (about 0.35 -> 0.32), no alert,
    and the resume is named: at step 21, from checkpoint-20."""
    run = artefact("loss_hf_resume_ok")
    report = analyse_run(str(run), S)
    _show("hf ok", report)
    r = _only(report, "tensorboard")
    assert (r.at_step, r.from_step, r.from_checkpoint) == (21, 20, str(run / "checkpoint-20"))
    assert not r.alert and r.judged and 0.8 < r.ratio < 1.2
    assert r.before == pytest.approx(0.3474, abs=0.02)


@pytest.mark.parametrize("name", ["loss_hf_resume_fresh", "loss_hf_resume_stub"])
def test_hf_broken_resume_alerts_as_scratch(artefact, name):
    """A fresh adapter (no weight load) and the stub pytorch_model.bin chosen by the real Trainer's resume
    both give loss_jump with both numbers (about 0.35 -> 1.79, 5x) and "restarted from scratch"."""
    run = artefact(name)
    report = analyse_run(str(run), S)
    _show(name, report)
    r = _only(report, "tensorboard")
    assert r.alert and r.scratch and r.kind == "loss_jump" and r.at_step == 21
    assert r.from_checkpoint == str(run / "checkpoint-20")
    assert r.before < 0.45 and r.after > 1.5 and r.ratio > 3
    assert f"{r.before:.4g}" in r.reason and f"{r.after:.4g}" in r.reason and "checkpoint-20" in r.reason
    assert "restarted from scratch" in r.reason


def test_hf_stub_resume_reproduces(artefact):
    """Seed report 1 reproduces with transformers 5.23: the resume through the stub starts where a fresh
    adapter starts (first post-resume loss equal to the fresh-adapter run's to 3 digits)."""
    stub = analyse_run(str(artefact("loss_hf_resume_stub")), S)
    fresh = analyse_run(str(artefact("loss_hf_resume_fresh")), S)
    first = {name: next(s.first_loss for s in rep.segments if s.source == "tensorboard"
                        and s.first_step == 21)
             for name, rep in (("stub", stub), ("fresh", fresh))}
    assert first["stub"] == pytest.approx(first["fresh"], abs=1e-3)


def test_hf_text_log_alone_sees_the_resume(artefact):
    """With only the appended train.log (HF console lines), the step going back is the resume."""
    run = artefact("loss_hf_resume_fresh")
    report = analyse_run(str(run), LossSettings(sources=("train.log",)))
    _show("hf fresh text", report)
    r = _only(report, "text")
    assert r.alert and r.at_step == 21 and "segment 1" in r.writer


def test_hf_trainer_state_alone_sees_the_return_to_the_initial_loss(artefact):
    """What the real Trainer writes: checkpoint-30's log_history is checkpoint-20's verbatim plus the new
    entries, so trainer_state.json alone shows one continuous history (same run configuration: no resume
    to see). The fresh adapter's loss going back to the run's initial level in it is alerted all the same,
    at step 21, after checkpoint-20."""
    run = artefact("loss_hf_resume_fresh")
    h20 = json.loads((run / "checkpoint-20" / "trainer_state.json").read_text())["log_history"]
    h30 = json.loads((run / "checkpoint-30" / "trainer_state.json").read_text())["log_history"]
    assert h30[:len(h20)] == h20 and [e["step"] for e in h30] == list(range(1, 31))
    report = analyse_run(str(run), LossSettings(sources=("trainer_state",)))
    assert len(report.segments) == 1 and report.segments[0].last_step == 40
    r = _only(report, "trainer_state")
    assert (r.signal, r.at_step, r.from_checkpoint, r.alert, r.scratch) == (
        "loss_level", 21, str(run / "checkpoint-20"), True, True)
    assert "initial level" in r.reason and "checkpoint-30" in r.writer


def test_lightning_correct_resume_no_alert(artefact):
    """Lightning ckpt_path=step=20.ckpt: version_1/metrics.csv continues at step 20 (0-based), no alert,
    resumed from checkpoints/step=20.ckpt."""
    run = artefact("loss_lightning_resume")
    report = analyse_run(str(run), S)
    _show("lightning ok", report)
    r = _only(report, "csv")
    assert (r.at_step, r.from_step) == (20, 20) and r.from_checkpoint.endswith("step=20.ckpt")
    assert not r.alert and r.judged


def test_lightning_weights_dropped_alerts(artefact):
    """Lightning resume that restores the loop and optimizer but not the weights: loss_jump, scratch."""
    report = analyse_run(str(artefact("loss_lightning_resume_fresh")), S)
    _show("lightning fresh", report)
    r = _only(report, "csv")
    assert r.alert and r.scratch and r.ratio > 3


def test_cli_exit_codes_and_json(artefact, tmp_path):
    """`ckptwatch loss`: exit 1 and the contract keys for a jump, 0 for a good resume, 2 for a bad path."""
    bad = run_cli_loss(str(artefact("loss_hf_resume_stub")), "--json")
    assert bad.returncode == 1, bad.stderr
    res = json.loads(bad.stdout)["loss"]["resumes"][0]
    assert {"at_step", "before", "after", "ratio", "alert"} <= set(res) and res["alert"] is True
    good = run_cli_loss(str(artefact("loss_hf_resume_ok")))
    assert good.returncode == 0
    assert "resume at step 21" in good.stdout and "verdict: 1 resume(s)" in good.stdout
    missing = run_cli_loss(str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert "nope: no such file" in missing.stderr and "Traceback" not in missing.stderr


def run_cli_loss(*args):
    """Through `ckptwatch loss` once cli.py registers it, else through the module's own entry point."""
    from ckptwatch import cli

    if "loss" in cli.COMMANDS:
        return run_cli("loss", *args)
    import subprocess
    import sys

    from tests.helpers import REPO

    return subprocess.run([sys.executable, "-m", "ckptwatch.losswatch.cli", "loss", *args], check=False,
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_plot_is_a_png(artefact, tmp_path):
    """plot_history writes a real PNG (valid signature and IHDR CRC) of a sensible size."""
    report = analyse_run(str(artefact("loss_hf_resume_stub")), S)
    out = tmp_path / "loss.png"
    plot_history(report, str(out))
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, = struct.unpack(">I", data[8:12])
    (crc,) = struct.unpack(">I", data[16 + length:20 + length])
    assert data[12:16] == b"IHDR" and crc == zlib.crc32(data[12:16 + length])
    w, h = struct.unpack(">II", data[16:24])
    assert (w, h) == (1000, 500) and os.path.getsize(out) > 10_000
