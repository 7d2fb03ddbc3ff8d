"""Mirror and restore of single-file checkpoints (Lightning ``.ckpt``, plain ``torch.save`` files) and of
per-rank file sets (MindSpore ``rank_*/``, NVRx ``<rank>/``).

Lightning and torch.save outputs are real (the builders run Lightning 2.6.6 and torch); MindSpore and
NVRx cannot run here (no MindSpore, no CUDA/Megatron), so those runs are the synthetic builders'
(tests/builders/synthetic.py says how each was checked against the real framework's files).

A copy lives at ``<to>/<run>/<name>/`` with the files at their paths relative to the run root; a restore
gives back what the framework loads: the file itself, or the ``rank_N/`` tree. The restored output is
byte for byte the source and is judged complete by the same layout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ckptwatch.mirror import manifest as mf
from tests.helpers import run_cli

pytestmark = pytest.mark.slow  # real Lightning and torch runs are built


def _mirror(run: Path, to: Path, *extra: str) -> dict[str, dict]:
    r = run_cli("mirror", str(run), "--to", str(to), "--settle", "0", "--json", *extra)
    assert r.returncode == 0, r.stderr + r.stdout
    [item] = json.loads(r.stdout)["runs"]
    return {c["copy"]: c for c in item["mirror"]["checkpoints"]}


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and not p.name.startswith(mf.PREFIX)}


def _judged(path: Path) -> dict:
    r = run_cli("once", str(path), "--json", "--settle", "0", "--no-loss")
    [run] = json.loads(r.stdout)["runs"]
    return run


def test_lightning_ckpt_files_round_trip(artefact, tmp_path):
    """Each Lightning ``.ckpt`` (real Trainer run) is committed under <to>/checkpoints/<file name>/ holding
    the file; restoring it gives back the file itself, byte for byte, judged complete at its step."""
    run = artefact("lightning") / "checkpoints"
    to = tmp_path / "backup"
    results = _mirror(run, to)
    names = sorted(p.name for p in run.iterdir() if not p.is_symlink())
    assert sorted(os.path.basename(c) for c in results) == names
    assert names == ["epoch=0-step=4.ckpt", "epoch=0-step=8.ckpt"]
    assert {c["result"] for c in results.values()} == {"committed"}
    for name in names:
        copy = to / "checkpoints" / name
        assert _files(copy) == {name: (run / name).read_bytes()}
        manifest = json.loads((copy / mf.MANIFEST_NAME).read_bytes())
        assert (manifest["version"], manifest["kind"], manifest["run_path"]) == (2, "file", name)
    dest = tmp_path / "restored" / "checkpoints" / "epoch=0-step=8.ckpt"
    r = run_cli("restore", str(to / "checkpoints" / "epoch=0-step=8.ckpt"), str(dest))
    assert r.returncode == 0, r.stderr
    assert dest.is_file() and dest.read_bytes() == (run / "epoch=0-step=8.ckpt").read_bytes()
    assert dest.stat().st_mtime_ns == (run / "epoch=0-step=8.ckpt").stat().st_mtime_ns
    assert os.listdir(dest.parent) == [dest.name]  # no staging dir left beside it
    [verdict] = _judged(dest.parent)["checkpoints"]
    assert (verdict["layout"], verdict["status"], verdict["step"]) == ("lightning", "complete", 8)
    again = _mirror(run, to)
    assert {c["result"] for c in again.values()} == {"up_to_date"}
    assert run_cli("verify", str(to / "checkpoints" / "epoch=0-step=4.ckpt")).returncode == 0


def test_torch_save_files_round_trip(artefact, tmp_path):
    """Plain torch.save files (zip and legacy) and a safetensors file: one copy each, restored as files."""
    run = artefact("torch_save")
    to = tmp_path / "backup"
    results = _mirror(run, to)
    assert {os.path.basename(c): r["result"] for c, r in results.items()} == {
        "ckpt_step_10.pt": "committed", "ckpt_step_20.pt": "committed", "legacy_step_30.pt": "committed",
        "weights_step_20.safetensors": "committed"}
    for name in ("legacy_step_30.pt", "weights_step_20.safetensors"):
        dest = tmp_path / "restored" / name
        r = run_cli("restore", str(to / run.name / name), str(dest))
        assert r.returncode == 0, r.stderr
        assert dest.read_bytes() == (run / name).read_bytes()
    judged = {os.path.basename(c["path"]): c["status"] for c in _judged(tmp_path / "restored")["checkpoints"]}
    assert judged == {"legacy_step_30.pt": "complete", "weights_step_20.safetensors": "complete"}
    exists = tmp_path / "restored" / "legacy_step_30.pt"
    r = run_cli("restore", str(to / run.name / "legacy_step_30.pt"), str(exists))
    assert r.returncode == 1 and "already exists" in r.stderr


@pytest.mark.parametrize(("name", "run_dir", "copy", "ranks"), [
    ("mindspore", "checkpoint", "llama2_7b_rank_all-1_15.ckpt",
     {f"rank_{r}/llama2_7b_rank_{r}-1_15.ckpt" for r in range(4)}),
    ("nvrx_local", "", "iter_0000200_all_local.pt", {f"{r}/iter_0000200_{r}_local.pt" for r in range(4)}),
])
def test_per_rank_sets_round_trip(artefact, tmp_path, name, run_dir, copy, ranks):
    """SYNTHETIC runs (MindSpore and NVRx cannot run here): a per-rank set is one copy named after its
    pattern (``*`` spelled ``all``) holding every rank's file at its run-relative path; restoring it gives
    back the rank tree, judged complete with every rank; an interrupted set is not copied."""
    run = artefact(name) / run_dir if run_dir else artefact(name)
    to = tmp_path / "backup"
    results = _mirror(run, to)
    copy_dir = to / run.name / copy
    assert results[str(copy_dir)]["result"] == "committed"
    skipped = {os.path.basename(c): r["reason"] for c, r in results.items() if r["result"] != "committed"}
    if name == "nvrx_local":  # iteration 300 is being written on rank 2: not a backup yet
        assert list(skipped) == ["iter_0000300_all_local.pt"]
        assert skipped["iter_0000300_all_local.pt"].startswith("in_progress")
        assert not (to / run.name / "iter_0000300_all_local.pt").exists()
    else:
        assert skipped == {}
    assert str(copy_dir) in results
    assert set(_files(copy_dir)) == ranks
    assert _files(copy_dir) == {rel: (run / rel).read_bytes() for rel in ranks}
    manifest = json.loads((copy_dir / mf.MANIFEST_NAME).read_bytes())
    assert manifest["kind"] == "files" and "*" in manifest["run_path"]
    dest = tmp_path / "restored" / run.name
    r = run_cli("restore", str(copy_dir), str(dest))
    assert r.returncode == 0, r.stderr
    assert set(_files(dest)) == ranks
    [verdict] = _judged(dest)["checkpoints"]
    assert verdict["status"] == "complete", verdict
    assert verdict["ranks"]["present"] == [0, 1, 2, 3] and verdict["ranks"]["missing"] == []
    assert run_cli("verify", str(copy_dir)).returncode == 0
    assert _mirror(run, to)[str(copy_dir)]["result"] == "up_to_date"


def test_lightning_resumes_from_the_restored_file(artefact, tmp_path):
    """Lightning itself (``Trainer.fit(ckpt_path=...)``) resumes from the restored ``.ckpt`` at step 8 with
    the same weights as from the source file."""
    import subprocess
    import sys

    from tests.builders.hf import _child_env

    run = artefact("lightning") / "checkpoints"
    to = tmp_path / "backup"
    _mirror(run, to)
    dest = tmp_path / "restored.ckpt"
    assert run_cli("restore", str(to / "checkpoints" / "epoch=0-step=8.ckpt"), str(dest)).returncode == 0
    loads = []
    for ckpt in (run / "epoch=0-step=8.ckpt", dest):
        out = tmp_path / f"{ckpt.name}.json"
        proc = subprocess.run([sys.executable, "-m", "tests.lightning_resume_child", str(ckpt), str(out)],
                              cwd=Path(__file__).resolve().parents[1], env=_child_env(), capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        loads.append(json.loads(out.read_text()))
    assert loads[0]["start_step"] == loads[1]["start_step"] == 8
    assert loads[0]["params"] == loads[1]["params"]
