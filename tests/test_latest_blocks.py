"""`latest` never names a checkpoint whose hazards would load the wrong weights: the seed bug, automated.

The real case: a PEFT run whose newest checkpoint holds a stub ``pytorch_model.bin`` beside the adapter
(transformers#24551; the ``hf_lora_stub`` builder trains it with the real Trainer). A launcher that runs
``ckpt=$(ckptwatch latest RUN) && torchrun train.py --resume "$ckpt"`` must get the checkpoint before it.
The builder writes the stub after the Trainer's save, which the commit-marker rule alone already calls
incomplete; in the seed report the stub was part of the save, so the tests give it the save's mtime.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from ckptwatch.alerts.plan import plan_run
from ckptwatch.engine import check_root
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.model import Hazard
from tests.helpers import run_cli

pytestmark = pytest.mark.slow

SETTLED = CheckOptions(settle_seconds=0)


def _stub_run(artefact) -> Path:
    """hf_lora_stub with the stub dated like the rest of its save: complete, and still the wrong weights."""
    root = artefact("hf_lora_stub")
    _date_like_the_save(root / "checkpoint-6" / "pytorch_model.bin")
    return root


def _date_like_the_save(stub: Path) -> None:
    marker = (stub.parent / "trainer_state.json").stat()
    os.utime(stub, ns=(marker.st_atime_ns, marker.st_mtime_ns))


def test_latest_skips_the_stub_checkpoint_and_says_why(artefact) -> None:
    root = _stub_run(artefact)
    out = run_cli("latest", "--settle", "0", str(root))
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{root / 'checkpoint-4'}\n"
    assert f"skipped newer {root / 'checkpoint-6'} (complete, but stub_weights_shadow_adapter" in out.stderr
    assert "Move the full-weights file out of the checkpoint" in out.stderr

    doc = json.loads(run_cli("latest", "--settle", "0", "--json", str(root)).stdout)
    assert doc["path"] == str(root / "checkpoint-4") and doc["step"] == 4
    assert [s["path"] for s in doc["skipped"]] == [str(root / "checkpoint-6")]

    once = json.loads(run_cli("once", "--settle", "0", "--json", "--no-loss", str(root)).stdout)
    (run,) = once["runs"]
    assert run["latest_resumable"] == str(root / "checkpoint-4")
    (skipped,) = run["resume_skipped"]
    assert skipped["path"] == str(root / "checkpoint-6")
    assert "stub_weights_shadow_adapter" in skipped["reason"]
    table = run_cli("once", "--settle", "0", "--no-loss", str(root)).stdout
    assert f"newest resumable: {root / 'checkpoint-4'}" in table and "skipped checkpoint-6" in table


def test_allow_hazards_opts_out(artefact) -> None:
    root = _stub_run(artefact)
    out = run_cli("latest", "--settle", "0", "--allow-hazards", str(root))
    assert out.returncode == 0 and out.stdout == f"{root / 'checkpoint-6'}\n"
    assert "warning: stub_weights_shadow_adapter" in out.stderr
    once = json.loads(run_cli("once", "--settle", "0", "--json", "--no-loss", "--allow-hazards",
                              str(root)).stdout)
    assert once["runs"][0]["latest_resumable"] == str(root / "checkpoint-6")


def test_no_safe_checkpoint_left_is_exit_1_saying_what_to_fix(artefact) -> None:
    """The stub copied into every checkpoint: nothing is safe; exit 1 names each file and the fix."""
    root = _stub_run(artefact)
    for step in (2, 4):
        stub = root / f"checkpoint-{step}" / "pytorch_model.bin"
        shutil.copy2(root / "checkpoint-6" / "pytorch_model.bin", stub)
        _date_like_the_save(stub)
    out = run_cli("latest", "--settle", "0", str(root))
    assert out.returncode == 1 and out.stdout == ""
    assert "no checkpoint is safe to resume from" in out.stderr and "--allow-hazards" in out.stderr
    for step in (2, 4, 6):
        assert f"{root / f'checkpoint-{step}'}: stub_weights_shadow_adapter" in out.stderr
    assert "Traceback" not in out.stderr


def test_advisory_hazard_does_not_block(artefact) -> None:
    """adapter_config_drift is reported but the newest checkpoint stays the one to resume from."""
    root = artefact("hf_lora")
    cfg_path = root / "checkpoint-6" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["lora_alpha"] = cfg["lora_alpha"] * 2
    cfg_path.write_text(json.dumps(cfg))
    _date_like_the_save(cfg_path)  # as if the run had saved it so (a re-created adapter)
    (run,) = check_root(str(root), SETTLED, time.time()).runs
    assert "adapter_config_drift" in {h.kind for h in run.checkpoints[-1].hazards}
    assert run.latest_resumable == str(root / "checkpoint-6")
    assert run_cli("latest", "--settle", "0", str(root)).stdout == f"{root / 'checkpoint-6'}\n"


def test_pointer_and_alerts_name_the_checkpoint_latest_names(artefact, tmp_path: Path) -> None:
    """The service's ckptwatch-latest pointer and the alerts' "resume from" line follow the same choice."""
    from ckptwatch.config import parse_config
    from ckptwatch.daemon import Daemon
    from ckptwatch.notify import Notifier

    root = tmp_path / "root"
    root.mkdir()
    run = root / "run-lora"
    shutil.copytree(_stub_run(artefact), run, symlinks=True)
    raw = {"service": {"state_dir": str(tmp_path / "state"), "log_format": "json", "settle_seconds": 0},
           "watch": [{"path": str(root), "latest_good": True}]}
    d = Daemon("test.toml", parse_config(raw, "test.toml"), notifier=Notifier(None))
    try:
        d.judge_watch(d.config.watches[0])
        assert (run / "ckptwatch-latest").resolve() == (run / "checkpoint-4").resolve()
        assert json.loads((run / "ckptwatch-latest.json").read_text())["path"] == str(run / "checkpoint-4")
    finally:
        d.close()

    (report,) = check_root(str(run), SETTLED, time.time()).runs
    shutil.rmtree(run / "checkpoint-4" / "adapter_model.safetensors", ignore_errors=True)
    (run / "checkpoint-4" / "adapter_model.safetensors").unlink(missing_ok=True)
    (broken,) = check_root(str(run), SETTLED, time.time()).runs
    assert broken.checkpoints[1].status.value != "complete"
    plan = plan_run(broken, open_keys={}, now=time.time() + 7200, host="h", stale_after=0.0,
                    stalled_after=None)
    bodies = "\n".join(a.body for a in plan.raises if a.kind in ("incomplete", "corrupt"))
    assert f"resume from checkpoint-2 (step 2): {run / 'checkpoint-2'}" in bodies, bodies
    assert report.latest_resumable == str(run / "checkpoint-4")
    assert not any(isinstance(h, Hazard) and h.kind == "stub_weights_shadow_adapter"
                   for h in report.checkpoints[0].hazards)


def test_skipped_notes_keep_a_newline_in_a_path_on_their_line(artefact, tmp_path: Path) -> None:
    """A run dir named ``run<newline>b``: each stderr note of `latest` (the skipped checkpoint, its
    blocking hazard's message, which names the file) stays one line, the newline shown as ``\\n``."""
    run = _stub_run(artefact).rename(tmp_path / "run\nb")
    out = run_cli("latest", "--settle", "0", "--json", str(run))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["path"] == str(run / "checkpoint-4")  # the JSON keeps the real text
    lines = out.stderr.splitlines()
    assert lines and all(line.startswith("ckptwatch: ") for line in lines), lines
    shown = f"{tmp_path}/run\\nb"
    note = f"ckptwatch: note: skipped newer {shown}/checkpoint-6 (complete, but stub_weights_shadow_adapter"
    assert any(line.startswith(note) for line in lines), lines
    hazard = "ckptwatch:   stub_weights_shadow_adapter: "
    assert any(line.startswith(hazard) and f"{shown}/checkpoint-6/" in line for line in lines), lines
