"""Every non-HF layout on real (or, where the framework cannot run here, synthetic) checkpoints.

Real: torch.distributed.checkpoint from a 4-process gloo group, DeepSpeed ZeRO-2/3 over gloo on the
CPU, Lightning, torch.save. Synthetic (written with torch/protobuf exactly as the framework writes,
checked once against the real frameworks; see tests/builders/synthetic.py): Megatron, NeMo,
MindSpore, Orbax, NVRx.
"""

from __future__ import annotations

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


def _run(root: Path, opts: CheckOptions = SETTLED):
    report = check_root(str(root), opts, time.time())
    assert len(report.runs) == 1, [r.root for r in report.runs]
    return report.runs[0]


def _statuses(run) -> list[tuple[int | None, str]]:
    return [(v.step, v.status.value) for v in run.checkpoints]


# --- torch.distributed.checkpoint ---------------------------------------------------------------

def test_dcp_four_ranks_complete(artefact) -> None:
    """A real 4-rank DCP run: three complete checkpoints, 4 ranks each, resume from the newest."""
    root = artefact("dcp")
    run = _run(root)
    assert run.layout == "dcp"
    assert _statuses(run) == [(100, "complete"), (200, "complete"), (300, "complete")]
    assert all(v.ranks.present == (0, 1, 2, 3) for v in run.checkpoints)
    assert run.latest_resumable == str(root / "step_300")


def test_dcp_writer_died_after_three_shards(artefact) -> None:
    """Rank 3 never wrote, .metadata was never committed: incomplete, rank 3 named, resume from step_200."""
    root = artefact("dcp")
    (root / "step_300" / "__3_0.distcp").unlink()
    (root / "step_300" / ".metadata").unlink()
    run = _run(root)
    v = run.checkpoints[-1]
    assert v.status is Status.INCOMPLETE
    assert v.ranks.missing == (3,) and v.ranks.source == "siblings"
    assert {"no_commit_marker", "missing_rank"} <= kinds_of(v)
    assert any("rank 3 of 4" in p.message for p in v.problems)
    assert run.latest_resumable == str(root / "step_200")


def test_dcp_metadata_names_missing_shard(artefact) -> None:
    """.metadata committed but a data file it references is gone: incomplete, naming the file."""
    root = artefact("dcp")
    (root / "step_200" / "__2_0.distcp").unlink()
    v = verdicts_by_name(_run(root))["step_200"]
    assert v.status is Status.INCOMPLETE
    assert any(p.kind in ("missing_shard", "missing_rank") and "__2_0.distcp" in p.file for p in v.problems)


def test_dcp_truncated_shard_is_corrupt(artefact) -> None:
    """A data file shorter than the byte ranges .metadata records is corrupt."""
    root = artefact("dcp")
    f = root / "step_100" / "__1_0.distcp"
    os.truncate(f, f.stat().st_size - 10)
    v = verdicts_by_name(_run(root))["step_100"]
    assert v.status is Status.CORRUPT and "truncated" in kinds_of(v)


# --- DeepSpeed --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_complete(artefact, name: str) -> None:
    """Real ZeRO-2/3 saves over 2 gloo ranks: complete, 2 ranks from partition_count/dp_world_size."""
    run = _run(artefact(name))
    assert run.layout == "deepspeed"
    assert _statuses(run) == [(2, "complete"), (4, "complete")]
    assert all(v.ranks.expected == 2 and v.ranks.source == "metadata" for v in run.checkpoints)
    assert not run.hazards


@pytest.mark.parametrize("name", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_latest_names_incomplete_tag(artefact, name: str) -> None:
    """Rank 1's ZeRO shard missing from the tag `latest` names: incomplete; a hazard names global_step2."""
    root = artefact(name)
    (root / "global_step4" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    run = _run(root)
    v = verdicts_by_name(run)["global_step4"]
    assert v.status is Status.INCOMPLETE and v.ranks.missing == (1,)
    hz = {h.kind: h for h in run.hazards}
    assert "latest_points_to_incomplete" in hz
    assert "global_step2" in hz["latest_points_to_incomplete"].message
    assert run.latest_resumable == str(root / "global_step2")


def test_deepspeed_latest_names_missing_tag(artefact) -> None:
    """A `latest` naming a tag dir that does not exist is a hazard."""
    root = artefact("deepspeed_zero2")
    (root / "latest").write_text("global_step6")
    run = _run(root)
    assert [h.kind for h in run.hazards] == ["latest_points_to_missing"]


# --- Megatron, NeMo -------------------------------------------------------------------------------

def test_megatron_legacy_missing_tp_rank(artefact) -> None:
    """Synthetic Megatron legacy TP=2: a missing mp_rank_01 dir is a missing rank; the tracker is a hazard."""
    root = artefact("megatron_legacy")
    run = _run(root)
    assert _statuses(run) == [(100, "complete"), (200, "complete")]
    assert run.checkpoints[0].ranks.expected == 2 and run.checkpoints[0].ranks.source == "metadata"
    import shutil

    shutil.rmtree(root / "iter_0000200" / "mp_rank_01")
    run = _run(root)
    v = run.checkpoints[-1]
    assert v.status is Status.INCOMPLETE and v.ranks.missing == (1,)
    assert any("mp_rank_01/model_optim_rng.pt" in p.message for p in v.problems)
    assert [h.kind for h in run.hazards if h.kind.startswith("latest")] == ["latest_points_to_incomplete"]
    assert run.latest_resumable == str(root / "iter_0000100")


def test_megatron_torch_dist_missing_commit_marker(artefact) -> None:
    """Synthetic Megatron torch_dist: an iteration without metadata.json did not finish."""
    root = artefact("megatron_torch_dist")
    assert _statuses(_run(root)) == [(100, "complete"), (200, "complete")]
    (root / "iter_0000200" / "metadata.json").unlink()
    v = _run(root).checkpoints[-1]
    assert v.status is Status.INCOMPLETE and "no_commit_marker" in kinds_of(v)


def test_nemo_unfinished_marker(artefact) -> None:
    """Synthetic NeMo 2: the step with a -unfinished marker is in_progress, then abandoned when stale."""
    root = artefact("nemo") / "checkpoints"
    run = _run(root)
    statuses = {v.step: v.status for v in run.checkpoints}
    assert statuses[99] is Status.COMPLETE and statuses[299] is Status.IN_PROGRESS
    marker = next(root.glob("*-unfinished"))
    old = time.time() - 3 * 3600
    os.utime(marker, (old, old))
    run = _run(root, CheckOptions(settle_seconds=0, stale_after=1800))
    v = next(v for v in run.checkpoints if v.step == 299)
    assert v.status is Status.INCOMPLETE and "abandoned_temp" in kinds_of(v)


# --- MindSpore ----------------------------------------------------------------------------------

def test_mindspore_falls_back_to_step_present_on_all_ranks(artefact) -> None:
    """MindSpore's rule: rank 3 lost step 15, so the run resumes from step 10 (the manual's example)."""
    root = artefact("mindspore") / "checkpoint"
    run = _run(root)
    assert [s for s, _ in _statuses(run)] == [5, 10, 15] and all(s == "complete" for _, s in _statuses(run))
    next((root / "rank_3").glob("*-1_15.ckpt")).unlink()
    run = _run(root)
    v = run.checkpoints[-1]
    assert v.status is Status.INCOMPLETE and v.ranks.missing == (3,)
    assert run.latest_resumable.endswith("-1_10.ckpt")


def test_mindspore_cut_at_record_boundary(artefact) -> None:
    """A protobuf file cut between records parses, but lacks parameters its siblings hold: truncated."""
    root = artefact("mindspore") / "checkpoint"
    f = next((root / "rank_1").glob("*-1_10.ckpt"))
    from ckptwatch.formats.mindspore import check_ms_ckpt

    facts = check_ms_ckpt(str(f)).facts
    data = f.read_bytes()
    if facts.get("has_crc"):
        data = data[:-17]
    # Walk top-level records and cut after the first one.
    length, i, shift = 0, 1, 0
    while True:
        b = data[i]
        length |= (b & 0x7F) << shift
        i += 1
        shift += 7
        if not b & 0x80:
            break
    os.chmod(f, 0o600)
    f.write_bytes(data[: i + length])
    v = verdicts_by_name(_run(root))[os.path.basename(str(_run(root).checkpoints[1].path))]
    assert v.status is Status.CORRUPT
    assert any(p.kind == "truncated" and "record boundary" in p.message for p in v.problems)


# --- Orbax, NVRx, Lightning, loose files -----------------------------------------------------------

def test_orbax_tmp_dir_in_progress(artefact) -> None:
    """Synthetic Orbax: finalized steps complete; the .orbax-checkpoint-tmp staging dir is in_progress."""
    root = artefact("orbax")
    run = _run(root)
    assert _statuses(run) == [(100, "complete"), (200, "complete"), (300, "in_progress")]
    (root / "200" / "commit_success.txt").unlink()
    v = verdicts_by_name(_run(root))["200"]
    assert v.status is Status.INCOMPLETE and "no_commit_marker" in kinds_of(v)


def test_nvrx_dirty_file_and_missing_rank(artefact) -> None:
    """Synthetic NVRx local: a .dirty file means rank 2 is still writing; a missing rank file: incomplete."""
    root = artefact("nvrx_local")
    run = _run(root)
    assert _statuses(run) == [(100, "complete"), (200, "complete"), (300, "in_progress")]
    (root / "1" / "iter_0000200_1_local.pt").unlink()
    run = _run(root)
    v = run.checkpoints[1]
    assert v.status is Status.INCOMPLETE and v.ranks.missing == (1,)
    assert run.latest_resumable.endswith("iter_0000100_*_local.pt")


def test_lightning_last_link_to_corrupt_file(artefact) -> None:
    """Real Lightning: last.ckpt links to the newest file; truncating that file makes the link a hazard."""
    root = artefact("lightning") / "checkpoints"
    run = _run(root)
    assert _statuses(run) == [(4, "complete"), (8, "complete")]
    target = root / "epoch=0-step=8.ckpt"
    os.truncate(target, target.stat().st_size // 2)
    run = _run(root)
    assert verdicts_by_name(run)["epoch=0-step=8.ckpt"].status is Status.CORRUPT
    assert any(h.kind == "latest_points_to_incomplete" and "last.ckpt" in h.file for h in run.hazards)
    assert run.latest_resumable == str(root / "epoch=0-step=4.ckpt")


def test_loose_torch_files(artefact) -> None:
    """torch.save (zip and legacy) and safetensors files with no framework layout are judged one by one."""
    root = artefact("torch_save")
    run = _run(root)
    assert run.layout == "generic" and all(s == "complete" for _, s in _statuses(run))
    legacy = root / "legacy_step_30.pt"
    os.truncate(legacy, legacy.stat().st_size - 3)
    out = run_cli("once", "--settle", "0", str(root))
    assert out.returncode == 1
    assert "legacy_step_30.pt" in out.stdout and "corrupt" in out.stdout


def test_expected_ranks_from_config_flag(tmp_path: Path, artefact) -> None:
    """With one DCP checkpoint and no siblings, --expected-ranks supplies the world size."""
    root = artefact("dcp")
    import shutil

    for d in ("step_100", "step_200"):
        shutil.rmtree(root / d)
    (root / "step_300" / "__3_0.distcp").unlink()
    (root / "step_300" / ".metadata").unlink()
    run = _run(root, CheckOptions(settle_seconds=0, expected_ranks=4))
    v = run.checkpoints[0]
    assert v.ranks.expected == 4 and v.ranks.source == "config" and v.ranks.missing == (3,)



# (module, pattern name, a name it matches); modules resolved in the test so collection stays import-light
NAME_PATTERNS = [
    ("ckptwatch.layouts.hf_trainer", "CKPT", "checkpoint-30"),
    ("ckptwatch.layouts.hf_trainer", "STAGING", "tmp-checkpoint-30"),
    ("ckptwatch.layouts.hf_trainer", "RNG", "rng_state_1.pth"),
    ("ckptwatch.layouts.hf_trainer", "SHARD", "model-00001-of-00002.safetensors"),
    ("ckptwatch.layouts.hf_trainer", "FSDP_RANK", "pytorch_model_fsdp_0_rank1.bin"),
    ("ckptwatch.layouts.hf_trainer", "OPTIM_RANK", "optimizer_0_rank1.bin"),
    ("ckptwatch.layouts.deepspeed", "TAG_STEP", "global_step30"),
    ("ckptwatch.layouts.deepspeed", "MODEL_MP", "mp_rank_00_model_states.pt"),
    ("ckptwatch.layouts.deepspeed", "MODEL_ZERO3", "zero_pp_rank_0_mp_rank_00_model_states.pt"),
    ("ckptwatch.layouts.deepspeed", "OPTIM", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"),
    ("ckptwatch.layouts.deepspeed", "LAYER", "layer_01-model_00-model_states.pt"),
    ("ckptwatch.layouts.lightning", "LAST", "last.ckpt"),
    ("ckptwatch.layouts.megatron", "ITER", "iter_0000030"),
    ("ckptwatch.layouts.megatron", "MP_DIR", "mp_rank_00_001"),
    ("ckptwatch.layouts.mindspore", "CKPT_FILE", "net-1_30.ckpt"),
    ("ckptwatch.layouts.mindspore", "RANK_DIR", "rank_3"),
    ("ckptwatch.layouts.nvrx", "LOCAL", "iter_30_0_local.pt"),
    ("ckptwatch.layouts.nvrx", "DIRTY", "iter_30_0_local.dirty.pt"),
    ("ckptwatch.layouts.nvrx", "RANK_DIR", "3"),
    ("ckptwatch.layouts.orbax", "STEP_DIR", "30"),
    ("ckptwatch.layouts.orbax", "TMP", "30.orbax-checkpoint-tmp-1"),
    ("ckptwatch.formats.dcp", "DISTCP", "__0_0.distcp"),
    ("ckptwatch.formats.dcp", "RANK_METADATA", "__0.metadata"),
    ("ckptwatch.engine", "TEMP_NAME", "model.safetensors.tmp"),
    ("ckptwatch.losswatch.sources", "_CKPT_DIR", "checkpoint-30"),
]


@pytest.mark.parametrize("module, pattern, name", NAME_PATTERNS,
                         ids=[f"{m.rsplit('.', 1)[1]}.{p}" for m, p, _ in NAME_PATTERNS])
def test_name_patterns_do_not_match_before_a_trailing_newline(module: str, pattern: str, name: str) -> None:
    """`$` matches before a final newline: `checkpoint-30<newline>` was step 30. Every name pattern ends
    at the end of the name (with a newline there it is another name)."""
    import importlib

    compiled = getattr(importlib.import_module(module), pattern)
    assert compiled.match(name)
    assert not compiled.match(name + "\n")
