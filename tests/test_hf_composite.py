"""Trainer checkpoints that hold another framework's sub-tree: FSDP (DCP dirs) and DeepSpeed.

The Trainer under FSDP or DeepSpeed cannot run on this CPU-only machine through accelerate's launch
path, so these checkpoints are assembled from real parts: the Trainer files of a real Trainer run,
plus a DCP directory written by a real 4-rank gloo group (what accelerate's ``save_fsdp_model``
writes into ``pytorch_model_fsdp_0/``) or a real DeepSpeed ZeRO-2 tag dir (what
``model_wrapped.save_checkpoint(checkpoint-N)`` writes). File names follow layouts.md §3.1.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from ckptwatch.engine import check_root
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.model import Status
from tests.helpers import kinds_of

pytestmark = pytest.mark.slow
SETTLED = CheckOptions(settle_seconds=0)


def _fsdp_checkpoint(artefact) -> Path:
    hf = artefact("hf_ddp")
    dcp = artefact("dcp")
    ck = sorted(hf.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    for name in ("model.safetensors", "config.json", "generation_config.json", "optimizer.pt"):
        (ck / name).unlink()
    shutil.copytree(dcp / "step_100", ck / "pytorch_model_fsdp_0")
    shutil.copytree(dcp / "step_200", ck / "optimizer_0")
    # the Trainer writes trainer_state.json last: keep it newest
    (ck / "trainer_state.json").touch()
    return ck


def test_fsdp_sharded_checkpoint_complete(artefact) -> None:
    """A Trainer FSDP SHARDED_STATE_DICT checkpoint (DCP model + optimizer dirs) is complete."""
    ck = _fsdp_checkpoint(artefact)
    run = check_root(str(ck.parent), SETTLED, time.time()).runs[0]
    v = next(v for v in run.checkpoints if v.path == str(ck))
    assert v.status is Status.COMPLETE, v.problems


def test_fsdp_shard_missing_is_incomplete(artefact) -> None:
    """A missing FSDP model shard (a .distcp that .metadata names) makes the Trainer checkpoint incomplete."""
    ck = _fsdp_checkpoint(artefact)
    (ck / "pytorch_model_fsdp_0" / "__3_0.distcp").unlink()
    run = check_root(str(ck.parent), SETTLED, time.time()).runs[0]
    v = next(v for v in run.checkpoints if v.path == str(ck))
    assert v.status is Status.INCOMPLETE
    assert any("pytorch_model_fsdp_0/__3_0.distcp" in p.file for p in v.problems)


def _deepspeed_checkpoint(artefact) -> Path:
    hf = artefact("hf_full")
    ds = artefact("deepspeed_zero2")
    ck = hf / "checkpoint-6"
    for name in ("optimizer.pt", "scheduler.pt"):
        (ck / name).unlink()
    shutil.copytree(ds / "global_step4", ck / "global_step6")
    (ck / "latest").write_text("global_step6")
    shutil.copy(ds / "zero_to_fp32.py", ck / "zero_to_fp32.py")
    (ck / "trainer_state.json").touch()
    return ck


def test_deepspeed_inside_trainer_checkpoint(artefact) -> None:
    """A Trainer+DeepSpeed checkpoint (latest + global_stepN in it) is complete without optimizer.pt."""
    ck = _deepspeed_checkpoint(artefact)
    run = check_root(str(ck.parent), SETTLED, time.time()).runs[0]
    v = next(v for v in run.checkpoints if v.path == str(ck))
    assert v.status is Status.COMPLETE, v.problems


def test_deepspeed_inside_trainer_missing_zero_shard(artefact) -> None:
    """The DeepSpeed tag inside a Trainer checkpoint lacking rank 1's ZeRO shard makes it incomplete."""
    ck = _deepspeed_checkpoint(artefact)
    (ck / "global_step6" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    run = check_root(str(ck.parent), SETTLED, time.time()).runs[0]
    v = next(v for v in run.checkpoints if v.path == str(ck))
    assert v.status is Status.INCOMPLETE
    assert any("zero_pp_rank_1" in p.message for p in v.problems), kinds_of(v)
