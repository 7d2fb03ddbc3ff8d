"""Distributed and plain-torch training outputs written by the real frameworks (torch DCP, DeepSpeed).

Every builder runs its framework in a child process (``python -m tests.builders._dist_worker TASK
JSON``; see that module), so the pytest process never imports torch or DeepSpeed. Multi-process
builders start their ranks inside that child (fork after the imports) over gloo on the CPU, with
``MASTER_ADDR=127.0.0.1`` and a free port; the whole process group is killed on timeout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.builders import builder
from tests.builders._dist_worker import WorkerSkip, free_port, run_worker


@builder("dcp")
def build_dcp(dest: Path) -> None:
    """A real ``torch.distributed.checkpoint`` run: 4 ranks (gloo, CPU), a tiny LM wrapped with FSDP2
    (``fully_shard`` on ``w1``, ``w2``, ``output`` and the root, mesh ``("dp_shard",)`` of 4) and AdamW;
    after one optimizer step per save, ``dcp.save({"model", "optimizer", "train_state": {"step", "loss"}})``
    (state dicts from ``torch.distributed.checkpoint.state_dict.get_state_dict``) into::

        dest/step_100/.metadata  __0_0.distcp  __1_0.distcp  __2_0.distcp  __3_0.distcp
        dest/step_200/   (same)
        dest/step_300/   (same)

    Parameters and Adam moments are DTensors sharded on dim 0 across the 4 ranks, so every rank owns
    distinct data and all four ``__{r}_0.distcp`` are non-empty (default ``FileSystemWriter``:
    ``single_file_per_rank=True``, ``thread_count=1``). Replicated scalars (``optimizer.state.*.step``,
    ``train_state``) are deduplicated by DCP onto one rank. ``.metadata`` (written last, by rank 0)
    references every file."""
    run_worker("dcp", {"dest": str(dest), "steps": [100, 200, 300], "nprocs": 4, "port": free_port()})


def _deepspeed(dest: Path, stage: int) -> None:
    try:
        run_worker("deepspeed", {"dest": str(dest), "stage": stage, "train_steps": 4, "save_at": [2, 4],
                                 "nprocs": 2, "port": free_port()})
    except WorkerSkip as e:
        pytest.skip(f"DeepSpeed ZeRO-{stage} cannot run here: {e}")


@builder("deepspeed_zero2")
def build_deepspeed_zero2(dest: Path) -> None:
    """Real DeepSpeed 0.19.8 ZeRO stage 2 on 2 ranks (gloo, CPU; ``torch_adam``, fp32, no bf16): a tiny
    MLP trained 4 steps, ``engine.save_checkpoint(dest)`` after steps 2 and 4 (default tag
    ``global_step{N}``, ``client_state={"loss"}``)::

        dest/latest                       "global_step4" (no trailing newline)
        dest/zero_to_fp32.py              copied by rank 0 (mode 0744: S_IEXEC added)
        dest/zero_to_torch.py             new in 0.19.x, copied beside zero_to_fp32.py (0744)
        dest/global_step{2,4}/mp_rank_00_model_states.pt
        dest/global_step{2,4}/zero_pp_rank_0_mp_rank_00_optim_states.pt
        dest/global_step{2,4}/zero_pp_rank_1_mp_rank_00_optim_states.pt

    DeepSpeed's CPU shared-memory allreduce op is disabled (it would be JIT-compiled with g++, ~80 s);
    it has no effect on the files. If DeepSpeed cannot be imported the builder skips with the reason."""
    _deepspeed(dest, 2)


@builder("deepspeed_zero3")
def build_deepspeed_zero3(dest: Path) -> None:
    """Real DeepSpeed 0.19.8 ZeRO stage 3 on 2 ranks, otherwise as ``deepspeed_zero2``
    (``stage3_param_persistence_threshold=0`` so even the tiny parameters are partitioned)::

        dest/latest  dest/zero_to_fp32.py  dest/zero_to_torch.py
        dest/global_step{2,4}/zero_pp_rank_{0,1}_mp_rank_00_model_states.pt
        dest/global_step{2,4}/zero_pp_rank_{0,1}_mp_rank_00_optim_states.pt

    (no ``mp_rank_00_model_states.pt``: ZeRO-3 writes one model-states file per dp rank)."""
    _deepspeed(dest, 3)


@builder("torch_save")
def build_torch_save(dest: Path) -> None:
    """A generic training output of plain ``torch.save`` files (tiny MLP + AdamW, 2 steps each)::

        dest/ckpt_step_10.pt              zip, {"model", "optimizer", "step": 10}; records ckpt_step_10/*
        dest/ckpt_step_20.pt              zip, step 20
        dest/legacy_step_30.pt            _use_new_zipfile_serialization=False (magic 80 02 8a 0a ...)
        dest/weights_step_20.safetensors  safetensors.torch.save_file of step 20's model, metadata
                                          {"format": "pt", "step": "20"}; mode 0600 (safetensors 0.8.0)
    """
    run_worker("torch_save", {"dest": str(dest)})
