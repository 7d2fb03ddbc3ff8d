"""Run-level pointers (DeepSpeed ``latest``, Megatron's tracker, MindSpore's ``meta.json``) are recorded on
the target only once the copy of the checkpoint they name is committed, and ``restore <to>/<run> DEST``
brings back the run with them, so the restored run resumes from the same step as the source.

DeepSpeed is a real ZeRO-2 run (2 ranks on gloo, the cached ``deepspeed_zero2`` artefact); Megatron and
MindSpore cannot run here (CUDA; no MindSpore), so their runs are the synthetic builders'.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror.pointer_record import RECORD_NAME
from tests.helpers import run_cli

pytestmark = pytest.mark.slow  # real DeepSpeed runs are built


def _mirror(run: Path, to: Path, code: int = 0) -> dict[str, dict]:
    r = run_cli("mirror", str(run), "--to", str(to), "--settle", "0", "--json")
    assert r.returncode == code, r.stderr + r.stdout
    [item] = json.loads(r.stdout)["runs"]
    return {os.path.basename(c["checkpoint"]): c for c in item["mirror"]["checkpoints"]}


def _restore_run(copy: Path, dest: Path) -> dict:
    r = run_cli("restore", str(copy), str(dest), "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    return json.loads(r.stdout)


def _judged(path: Path) -> dict:
    r = run_cli("once", str(path), "--json", "--settle", "0", "--no-loss")
    [run] = json.loads(r.stdout)["runs"]
    return run


def _record(to: Path, run: str) -> dict:
    return json.loads((to / run / RECORD_NAME).read_bytes())["pointers"]


def test_deepspeed_latest_comes_back_with_the_run(artefact, tmp_path):
    """Real DeepSpeed ZeRO-2: ``latest`` ("global_step4") is recorded with global_step4's commit; the run
    restored from <to>/<run> has both tag dirs byte for byte and ``latest``, and is judged resumable from
    global_step4 with no pointer finding."""
    run = artefact("deepspeed_zero2")
    to = tmp_path / "backup"
    results = _mirror(run, to)
    assert {c: r["result"] for c, r in results.items()} == {"global_step4": "committed",
                                                           "global_step2": "committed"}
    assert results["global_step4"]["pointers"] == ["latest"] and results["global_step2"]["pointers"] == []
    assert _record(to, run.name)["latest"]["copy"] == "global_step4"
    dest = tmp_path / "restored" / run.name
    doc = _restore_run(to / run.name, dest)
    assert (doc["copies"], doc["pointers"]) == (["global_step2", "global_step4"], ["latest"])
    assert (dest / "latest").read_bytes() == (run / "latest").read_bytes() == b"global_step4"
    for tag in ("global_step2", "global_step4"):
        for f in (run / tag).iterdir():
            assert (dest / tag / f.name).read_bytes() == f.read_bytes()
    judged = _judged(dest)
    assert judged["layout"] == "deepspeed" and judged["problems"] == [] and judged["hazards"] == []
    assert judged["latest_resumable"] == str(dest / "global_step4")
    assert {c["status"] for c in judged["checkpoints"]} == {"complete"}
    assert not (dest / "zero_to_fp32.py").exists()  # run-level scripts are no checkpoint and no pointer


def test_a_pointer_waits_for_the_copy_it_names(artefact, tmp_path):
    """``latest`` names global_step4, whose copy cannot be committed (a broken copy is in the way): it is not
    recorded, and the restored run has no ``latest`` (never one naming a missing copy). Pointed at
    global_step2 (committed) it is recorded at the next pass; once global_step4 commits, it follows."""
    run = artefact("deepspeed_zero2")
    to = tmp_path / "backup"
    blocked = to / run.name / "global_step4"
    blocked.mkdir(parents=True)
    (blocked / mf.MARKER_NAME).write_text("not ours")
    results = _mirror(run, to, code=1)
    assert (results["global_step4"]["result"], results["global_step2"]["result"]) == ("conflict", "committed")
    assert not (to / run.name / RECORD_NAME).exists()
    dest = tmp_path / "r1"
    doc = _restore_run(to / run.name, dest)
    assert doc["copies"] == ["global_step2"] and doc["pointers"] == []
    assert sorted(os.listdir(dest)) == ["global_step2"]
    (run / "latest").write_text("global_step2")
    assert _mirror(run, to, code=1)["global_step2"]["pointers"] == ["latest"]
    assert _restore_run(to / run.name, tmp_path / "r2")["pointers"] == ["latest"]
    assert (tmp_path / "r2" / "latest").read_text() == "global_step2"
    (blocked / mf.MARKER_NAME).unlink()
    (run / "latest").write_text("global_step4")
    results = _mirror(run, to)
    assert results["global_step4"]["result"] == "committed"
    assert results["global_step4"]["pointers"] == ["latest"]
    assert _record(to, run.name)["latest"]["copy"] == "global_step4"
    _restore_run(to / run.name, tmp_path / "r3")
    assert (tmp_path / "r3" / "latest").read_text() == "global_step4"


def test_megatron_tracker_comes_back_with_the_run(artefact, tmp_path):
    """SYNTHETIC Megatron (it trains only on CUDA): ``latest_checkpointed_iteration.txt`` ("200") follows
    iter_0000200's commit and comes back with the run."""
    run = artefact("megatron_legacy")
    to = tmp_path / "backup"
    results = _mirror(run, to)
    assert results["iter_0000200"]["pointers"] == ["latest_checkpointed_iteration.txt"]
    dest = tmp_path / "restored"
    assert _restore_run(to / run.name, dest)["pointers"] == ["latest_checkpointed_iteration.txt"]
    assert (dest / "latest_checkpointed_iteration.txt").read_bytes() == b"200"
    judged = _judged(dest)
    assert judged["latest_resumable"] == str(dest / "iter_0000200") and judged["problems"] == []


def test_mindspore_meta_json_comes_back_with_the_rank_tree(artefact, tmp_path):
    """SYNTHETIC MindSpore (not installable here): each rank's ``meta.json`` names that rank's step-15 file;
    it is recorded with the step-15 set's commit, and the restored run holds every set's rank files and
    the four meta.json, judged complete with no finding."""
    run = artefact("mindspore") / "checkpoint"
    to = tmp_path / "backup"
    results = _mirror(run, to)
    newest = results["llama2_7b_rank_*-1_15.ckpt"]
    assert newest["pointers"] == [f"rank_{r}/meta.json" for r in range(4)]
    assert all(r["pointers"] == [] for c, r in results.items() if c != "llama2_7b_rank_*-1_15.ckpt")
    dest = tmp_path / "restored" / "checkpoint"
    doc = _restore_run(to / "checkpoint", dest)
    assert len(doc["copies"]) == 3 and doc["pointers"] == [f"rank_{r}/meta.json" for r in range(4)]
    for r in range(4):
        meta = f"rank_{r}/meta.json"
        assert (dest / meta).read_bytes() == (run / meta).read_bytes()
        assert sorted(os.listdir(dest / f"rank_{r}")) == sorted(os.listdir(run / f"rank_{r}"))
    judged = _judged(dest)
    assert [c["status"] for c in judged["checkpoints"]] == ["complete"] * 3 and judged["problems"] == []


def test_deepspeed_resumes_the_restored_run_at_the_same_step(artefact, tmp_path):
    """The real proof: DeepSpeed itself (2 ranks, gloo) resumes the run restored from the mirror with no
    tag given, i.e. through the restored ``latest``, at global step 4, with the same weights and client
    state as a resume from the source run."""
    import subprocess
    import sys

    from tests.builders._dist_worker import SKIP_EXIT, _child_env, free_port

    run = artefact("deepspeed_zero2")
    to = tmp_path / "backup"
    _mirror(run, to)
    dest = tmp_path / "restored" / run.name
    _restore_run(to / run.name, dest)
    out = tmp_path / "loads.json"
    args = {"stage": 2, "dirs": [str(run), str(dest)], "out": str(out), "port": free_port()}
    proc = subprocess.run([sys.executable, "-m", "tests.deepspeed_resume_child", json.dumps(args)],
                          cwd=Path(__file__).resolve().parents[1], env=_child_env(), capture_output=True,
                          text=True, timeout=300)
    if proc.returncode == SKIP_EXIT:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    source, restored = json.loads(out.read_text())
    assert source["load_path"].startswith(str(run / "global_step4"))
    assert restored["load_path"].startswith(str(dest / "global_step4"))
    assert restored["global_steps"] == source["global_steps"] == 4
    assert restored["client_loss"] == source["client_loss"] is not None
    assert restored["params"] == source["params"]
