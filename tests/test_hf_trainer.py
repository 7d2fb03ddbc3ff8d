"""Hugging Face Trainer checkpoints written by the real transformers Trainer, judged whole and damaged."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ckptwatch.engine import check_root
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.model import Status
from tests.helpers import kinds_of, run_cli, verdicts_by_name

pytestmark = pytest.mark.slow
SETTLED = CheckOptions(settle_seconds=0)


def _judge(root: Path, opts: CheckOptions = SETTLED):
    report = check_root(str(root), opts, time.time())
    assert len(report.runs) == 1, [r.root for r in report.runs]
    return report.runs[0]


def test_full_run_is_complete_and_resumes_from_newest(artefact) -> None:
    """A healthy full-weights Trainer run: every checkpoint complete, resume from checkpoint-6."""
    root = artefact("hf_full")
    run = _judge(root)
    assert run.layout == "hf-trainer"
    assert [(v.step, v.status) for v in run.checkpoints] == [(2, Status.COMPLETE), (4, Status.COMPLETE),
                                                             (6, Status.COMPLETE)]
    assert run.latest_resumable == str(root / "checkpoint-6")
    assert all(v.ranks and v.ranks.expected == 1 and v.ranks.source == "metadata" for v in run.checkpoints)
    assert not run.hazards and not any(v.hazards for v in run.checkpoints)
    # The only findings: the advisory on the two pickles a Trainer saves that weights_only=True refuses.
    for v in run.checkpoints:
        assert sorted((os.path.basename(p.file), p.kind) for p in v.problems) == [
            ("rng_state.pth", "needs_weights_only_false"), ("training_args.bin", "needs_weights_only_false")]
        args = next(p for p in v.problems if p.file.endswith("training_args.bin"))
        assert "needs weights_only=False: transformers.training_args.TrainingArguments, " in args.message


def test_killed_save_falls_back_to_previous_checkpoint(artefact) -> None:
    """A save killed before optimizer state and trainer_state.json: incomplete; latest names the previous."""
    root = artefact("hf_full")
    ck6 = root / "checkpoint-6"
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        (ck6 / name).unlink()
    run = _judge(root)
    v = verdicts_by_name(run)["checkpoint-6"]
    assert v.status is Status.INCOMPLETE
    assert {"no_commit_marker", "missing_file", "missing_rank"} <= kinds_of(v)
    assert run.latest_resumable == str(root / "checkpoint-4")
    assert [h.kind for h in run.hazards] == ["newest_not_resumable"]
    assert "checkpoint-4" in run.hazards[0].message
    out = run_cli("latest", "--settle", "0", str(root))
    assert out.returncode == 0 and out.stdout.strip() == str(root / "checkpoint-4")
    assert "skipped newer" in out.stderr and "checkpoint-6" in out.stderr


def test_truncated_weights_are_corrupt(artefact) -> None:
    """model.safetensors cut short by one byte makes the checkpoint corrupt, naming the file."""
    root = artefact("hf_full")
    weights = root / "checkpoint-4" / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 1)
    v = verdicts_by_name(_judge(root))["checkpoint-4"]
    assert v.status is Status.CORRUPT
    assert any(p.kind == "truncated" and p.file.endswith("checkpoint-4/model.safetensors")
               for p in v.problems)


def test_truncated_optimizer_zip_is_corrupt(artefact) -> None:
    """optimizer.pt cut in half has no zip central directory: corrupt."""
    root = artefact("hf_full")
    opt = root / "checkpoint-2" / "optimizer.pt"
    os.truncate(opt, opt.stat().st_size // 2)
    v = verdicts_by_name(_judge(root))["checkpoint-2"]
    assert v.status is Status.CORRUPT
    assert any(p.file.endswith("optimizer.pt") for p in v.problems)


def test_step_mismatch_in_trainer_state(artefact) -> None:
    """trainer_state.json naming another global_step than the directory is flagged."""
    root = artefact("hf_full")
    state_path = root / "checkpoint-4" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["global_step"] = 5
    mtime = state_path.stat().st_mtime
    state_path.write_text(json.dumps(state))
    os.utime(state_path, (mtime, mtime))
    v = verdicts_by_name(_judge(root))["checkpoint-4"]
    assert "step_mismatch" in kinds_of(v)


def test_stale_commit_marker(artefact) -> None:
    """A weights file rewritten after trainer_state.json (an unfinished overwrite) is flagged."""
    root = artefact("hf_full")
    ck = root / "checkpoint-4"
    t = (ck / "model.safetensors").stat().st_mtime
    os.utime(ck / "trainer_state.json", (t - 60, t - 60))
    v = verdicts_by_name(_judge(root))["checkpoint-4"]
    assert v.status is Status.INCOMPLETE and "stale_commit_marker" in kinds_of(v)


def test_unsettled_checkpoint_is_in_progress_not_incomplete(artefact) -> None:
    """Within settle_seconds of its last write a half-written checkpoint is in_progress, findings withheld."""
    root = artefact("hf_full")
    ck6 = root / "checkpoint-6"
    (ck6 / "trainer_state.json").unlink()
    (ck6 / "model.safetensors").touch()
    run = _judge(root, CheckOptions(settle_seconds=60))
    v = verdicts_by_name(run)["checkpoint-6"]
    assert v.status is Status.IN_PROGRESS
    assert kinds_of(v) - {"needs_weights_only_false"} == {"in_progress"}  # warnings are not withheld


def test_staging_dir_in_progress_then_abandoned(artefact) -> None:
    """tmp-checkpoint-* is in_progress; untouched for stale_after it is an abandoned (killed) save."""
    root = artefact("hf_full")
    staging = root / "tmp-checkpoint-8"
    staging.mkdir()
    (staging / "config.json").write_text("{}")
    v = verdicts_by_name(_judge(root))["tmp-checkpoint-8"]
    assert v.status is Status.IN_PROGRESS
    old = time.time() - 7200
    os.utime(staging / "config.json", (old, old))
    os.utime(staging, (old, old))
    v = verdicts_by_name(_judge(root, CheckOptions(settle_seconds=0, stale_after=1800)))["tmp-checkpoint-8"]
    assert v.status is Status.INCOMPLETE and kinds_of(v) == {"abandoned_temp"}


def test_ddp_missing_rank_named(artefact) -> None:
    """Two-process DDP: a checkpoint without rng_state_1.pth is incomplete, naming rank 1 of 2 (metadata)."""
    root = artefact("hf_ddp")
    run = _judge(root)
    assert all(v.status is Status.COMPLETE for v in run.checkpoints), [v.problems for v in run.checkpoints]
    newest = run.checkpoints[-1]
    assert newest.ranks.expected == 2 and newest.ranks.present == (0, 1)
    Path(newest.path, "rng_state_1.pth").unlink()
    run = _judge(root)
    v = run.checkpoints[-1]
    assert v.status is Status.INCOMPLETE
    assert v.ranks.missing == (1,) and v.ranks.source == "metadata"
    (p,) = [p for p in v.problems if p.kind == "missing_rank"]
    assert "rank 1 of 2" in p.message and "rng_state_1.pth" in p.message
    assert run.latest_resumable == run.checkpoints[-2].path


def test_lora_run_complete_without_hazards(artefact) -> None:
    """A healthy LoRA run: adapters present and training, no hazards."""
    run = _judge(artefact("hf_lora"))
    assert all(v.status is Status.COMPLETE for v in run.checkpoints), [v.problems for v in run.checkpoints]
    assert not any(v.hazards for v in run.checkpoints), [v.hazards for v in run.checkpoints]


def test_stub_weights_beside_adapter(artefact) -> None:
    """The transformers#24551 stub pytorch_model.bin beside the adapter is a hazard naming both files."""
    root = artefact("hf_lora_stub")
    run = _judge(root)
    newest = run.checkpoints[-1]
    (h,) = [h for h in newest.hazards if h.kind == "stub_weights_shadow_adapter"]
    assert h.file.endswith("pytorch_model.bin") and "adapter_model.safetensors" in h.message
    out = run_cli("once", "--settle", "0", "--json", str(root))
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    hz = doc["runs"][0]["checkpoints"][-1]["hazards"]
    assert hz[0]["kind"] == "stub_weights_shadow_adapter" and "Move the full-weights file" in hz[0]["message"]


def test_adapter_config_drift_and_reinit(artefact) -> None:
    """lora_alpha changed in the newest checkpoint is drift; zeroed lora_B there means re-initialised."""
    root = artefact("hf_lora")
    newest = sorted(root.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    cfg_path = newest / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["lora_alpha"] = cfg["lora_alpha"] * 2
    cfg_path.write_text(json.dumps(cfg))
    _zero_lora_b(newest / "adapter_model.safetensors")
    v = _judge(root).checkpoints[-1]
    kinds = {h.kind for h in v.hazards}
    assert {"adapter_config_drift", "adapter_b_zero"} <= kinds


def _zero_lora_b(path: Path) -> None:
    """Overwrite every lora_B tensor's bytes with zeros in place (header untouched)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    buf = bytearray(raw)
    for name, t in header.items():
        if ".lora_B." in name:
            b, e = t["data_offsets"]
            buf[8 + n + b: 8 + n + e] = bytes(e - b)
    path.write_bytes(bytes(buf))


def test_multi_adapter_checkpoints_complete(artefact) -> None:
    """Two adapters (default at top level, another in a sub-dir) form complete checkpoints."""
    run = _judge(artefact("hf_multi_adapter"))
    assert all(v.status is Status.COMPLETE for v in run.checkpoints), [v.problems for v in run.checkpoints]


def test_multi_adapter_missing_subadapter_weights(artefact) -> None:
    """A named adapter sub-dir without its weights file is incomplete."""
    root = artefact("hf_multi_adapter")
    newest = sorted(root.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    sub = next(d for d in newest.iterdir() if d.is_dir() and (d / "adapter_config.json").exists())
    next(sub.glob("adapter_model.*")).unlink()
    v = _judge(root).checkpoints[-1]
    assert v.status is Status.INCOMPLETE
    assert any(p.kind == "missing_file" and sub.name in p.file for p in v.problems)


def test_sharded_index_missing_shard(artefact) -> None:
    """A sharded checkpoint is complete; deleting one shard makes it incomplete, naming the shard."""
    root = artefact("hf_sharded")
    run = _judge(root)
    assert all(v.status is Status.COMPLETE for v in run.checkpoints), [v.problems for v in run.checkpoints]
    newest = Path(run.checkpoints[-1].path)
    shard = sorted(newest.glob("model-*-of-*.safetensors"))[-1]
    shard.unlink()
    v = _judge(root).checkpoints[-1]
    assert v.status is Status.INCOMPLETE
    assert any(p.kind == "missing_shard" and p.file.endswith(shard.name) for p in v.problems)


def test_verify_single_checkpoint_and_file(artefact) -> None:
    """verify judges one checkpoint dir, and a single weights file, with exit codes 0/1."""
    root = artefact("hf_full")
    ok = run_cli("verify", "--settle", "0", str(root / "checkpoint-4"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    weights = root / "checkpoint-2" / "model.safetensors"
    assert run_cli("verify", "--settle", "0", str(weights)).returncode == 0
    os.truncate(weights, 100)
    bad = run_cli("verify", "--settle", "0", "--json", str(weights))
    assert bad.returncode == 1
    doc = json.loads(bad.stdout)
    assert doc["checkpoint"]["status"] == "corrupt"


def test_deep_pass_catches_bit_flip_in_optimizer(artefact) -> None:
    """A flipped byte in optimizer.pt's tensor data passes the structural pass but fails --deep (zip CRC)."""
    root = artefact("hf_full")
    opt = root / "checkpoint-4" / "optimizer.pt"
    import zipfile

    with zipfile.ZipFile(opt) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        # Local header: 30 bytes + name + extra, then data.
    mtime = opt.stat().st_mtime
    with open(opt, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len = int.from_bytes(f.read(2), "little")
        extra_len = int.from_bytes(f.read(2), "little")
        pos = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0xFF]))
    os.utime(opt, (mtime, mtime))  # silent bit rot: same size, same mtime
    assert verdicts_by_name(_judge(root))["checkpoint-4"].status is Status.COMPLETE
    v = verdicts_by_name(_judge(root, CheckOptions(settle_seconds=0, deep=True)))["checkpoint-4"]
    assert v.status is Status.CORRUPT and "crc_mismatch" in kinds_of(v)


class _Payload:
    """A pickled object whose loading would run a shell command (what a hostile checkpoint holds)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_hostile_training_args_never_executed(artefact, tmp_path: Path) -> None:
    """A training_args.bin whose pickle would create a file is judged by the CLI; the file never appears."""
    import torch

    root = artefact("hf_full")
    target = tmp_path / "pwned"
    args = root / "checkpoint-4" / "training_args.bin"
    mtime = args.stat().st_mtime
    torch.save(_Payload(str(target)), args)
    os.utime(args, (mtime, mtime))
    out = run_cli("once", "--settle", "0", "--json", str(root))
    assert "Traceback" not in out.stderr
    json.loads(out.stdout)
    assert not target.exists()
    out = run_cli("verify", "--deep", "--settle", "0", str(args))
    assert not target.exists() and "Traceback" not in out.stderr
