"""Child side of the ``dist`` and ``synthetic`` builders: everything that imports torch runs here.

Parent side (no torch import): :func:`run_worker` starts ``python -m tests.builders._dist_worker TASK
JSON`` from the repo root in its own process group, with a timeout, and raises with the child's stderr
tail on failure (exit code :data:`SKIP_EXIT` means "cannot run here": the builder turns the message into
``pytest.skip``).

Child side: a task either runs in this process (single-process tasks: plain ``torch.save`` layouts) or
starts ``nprocs`` rank processes with ``torch.multiprocessing.start_processes(start_method="fork")``.
Fork (not spawn) because the heavy imports (torch.distributed.checkpoint, FSDP, DeepSpeed) are done
once here before forking; with spawn every rank re-imports them, which costs ~4 s of CPU per rank on
this 2-core machine. Nothing touches a tensor or a process group before the fork. Every rank joins a
gloo group over ``MASTER_ADDR=127.0.0.1`` and a free port chosen by the parent.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120
SKIP_EXIT = 77


# ---------------------------------------------------------------------------------------------------
# parent side


class WorkerSkip(Exception):
    """The worker could not run the framework at all (exit code SKIP_EXIT); the message says why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "CUDA_VISIBLE_DEVICES", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    )
    if "GLOO_SOCKET_IFNAME" not in env and Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # no dependence on the host name resolving to a usable interface
    return env


def _tail(text: str | None, lines: int = 40) -> str:
    return "\n".join((text or "").splitlines()[-lines:])


def run_worker(task: str, args: dict[str, Any], *, timeout: float = TIMEOUT_S) -> None:
    """Run ``task`` in a child process group; raise RuntimeError (or WorkerSkip) with the stderr tail."""
    argv = [sys.executable, "-m", "tests.builders._dist_worker", task, json.dumps(args)]
    proc = subprocess.Popen(argv, cwd=REPO, env=_child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the rank processes are in the same group
        out, err = proc.communicate()
        raise RuntimeError(f"worker {task}: timed out after {timeout}s\n--- stderr tail ---\n{_tail(err)}")
    if proc.returncode == SKIP_EXIT:
        raise WorkerSkip(_tail(err, 5).strip())
    if proc.returncode != 0:
        raise RuntimeError(f"worker {task}: exited with {proc.returncode}\n--- stderr tail ---\n{_tail(err)}"
                           f"\n--- stdout tail ---\n{_tail(out, 10)}")


# ---------------------------------------------------------------------------------------------------
# child side: common


def _spawn(fn, nprocs: int, args: dict[str, Any]) -> None:
    import torch.multiprocessing as mp

    mp.start_processes(_rank_main, args=(fn, nprocs, args), nprocs=nprocs, join=True, start_method="fork")


def _rank_main(rank: int, fn, world: int, args: dict[str, Any]) -> None:
    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args["port"]), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    fn(rank, world, args)


def _init_gloo(rank: int, world: int) -> None:
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))


def _megatron_args(**overrides: Any):
    """An argparse.Namespace shaped like Megatron-LM's ``args`` (the fields ckptwatch reads, plus a few)."""
    import argparse

    import torch

    base = dict(
        tensor_model_parallel_size=2, pipeline_model_parallel_size=1, expert_model_parallel_size=1,
        context_parallel_size=1, virtual_pipeline_model_parallel_size=None, world_size=2,
        data_parallel_size=1, num_layers=2, hidden_size=16, ffn_hidden_size=64, num_attention_heads=4,
        seq_length=32, max_position_embeddings=32, padded_vocab_size=64, micro_batch_size=1,
        global_batch_size=8, train_iters=300, lr=3e-4, min_lr=3e-5, lr_decay_style="cosine",
        params_dtype=torch.bfloat16, bf16=True, fp16=False, use_distributed_optimizer=False,
        save="/checkpoints/gpt-tiny", load="/checkpoints/gpt-tiny", save_interval=100,
        ckpt_format="torch", async_save=False, seed=1234, rank=0,
    )
    base.update(overrides)
    return argparse.Namespace(**base)


# ---------------------------------------------------------------------------------------------------
# task: dcp (FSDP2 + AdamW, 4 ranks, dcp.save)


def _tiny_lm_class():
    import torch
    import torch.nn as nn

    class TinyLM(nn.Module):
        vocab, dim = 64, 32

        def __init__(self):
            super().__init__()
            self.tok_embeddings = nn.Embedding(self.vocab, self.dim)
            self.w1 = nn.Linear(self.dim, 2 * self.dim)
            self.w2 = nn.Linear(2 * self.dim, self.dim)
            self.norm = nn.LayerNorm(self.dim)
            self.output = nn.Linear(self.dim, self.vocab, bias=False)

        def forward(self, ids):
            h = self.tok_embeddings(ids)
            h = h + self.w2(torch.relu(self.w1(h)))
            return self.output(self.norm(h))

    return TinyLM


def _dcp_rank(rank: int, world: int, args: dict[str, Any]) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    import torch.nn as nn
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    _init_gloo(rank, world)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("dp_shard",))
    torch.manual_seed(0)
    model = _tiny_lm_class()()
    for block in (model.w1, model.w2, model.output):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(100 + rank)  # each rank trains on its own batch
    vocab = model.vocab

    for step in args["steps"]:
        ids = torch.randint(0, vocab, (4, 8), generator=gen)
        loss = nn.functional.cross_entropy(model(ids[:, :-1]).reshape(-1, vocab), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optimizer": osd, "train_state": {"step": step, "loss": float(loss)}},
                 checkpoint_id=os.path.join(args["dest"], f"step_{step}"))
    dist.barrier()
    dist.destroy_process_group()


def task_dcp(args: dict[str, Any]) -> None:
    # imported here, before the fork, so that no rank pays for them
    import torch.distributed.checkpoint
    import torch.distributed.checkpoint.state_dict
    import torch.distributed.fsdp  # noqa: F401 - for the ranks

    _spawn(_dcp_rank, args["nprocs"], args)


# ---------------------------------------------------------------------------------------------------
# task: deepspeed (ZeRO 2/3 on the CPU over gloo)


DS_MICRO = 4  # the micro batch of the DeepSpeed runs


def ds_engine(world: int, stage: int):  # -> deepspeed.DeepSpeedEngine
    """The DeepSpeed runs' model and ZeRO config on gloo (one home: a checkpoint loads only into the
    same model, so ``tests/deepspeed_resume_child.py`` builds its engine here too)."""
    import deepspeed
    import torch
    import torch.nn as nn

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    config = {
        "train_batch_size": DS_MICRO * world,
        "train_micro_batch_size_per_gpu": DS_MICRO,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}},
        "zero_optimization": {"stage": stage},
        "steps_per_print": 1000,
        "wall_clock_breakdown": False,
    }
    if stage == 3:
        # the default threshold (1e5 elements) would keep every tiny parameter unpartitioned
        config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    return engine


def _ds_rank(rank: int, world: int, args: dict[str, Any]) -> None:
    import torch
    import torch.nn as nn

    engine = ds_engine(world, args["stage"])
    micro = DS_MICRO
    gen = torch.Generator().manual_seed(10 + rank)
    for _ in range(args["train_steps"]):
        x = torch.randn(micro, 16, generator=gen)
        y = torch.randn(micro, 4, generator=gen)
        loss = nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()
        if engine.global_steps in args["save_at"]:
            engine.save_checkpoint(args["dest"], client_state={"loss": float(loss)})
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def import_deepspeed() -> None:
    """Import DeepSpeed for the CPU, or exit ``SKIP_EXIT`` (the test skips) when it cannot be imported."""
    try:
        import deepspeed
        import deepspeed.ops
    except Exception as e:  # noqa: BLE001 - any import failure means "cannot run here"
        print(f"deepspeed cannot be imported: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(SKIP_EXIT)
    # DeepSpeed's TorchBackend JIT-compiles its shared-memory allreduce op (deepspeed_shm_comm) at
    # init_distributed when the accelerator is the CPU: ~80 s of g++ on this machine, cached in
    # ~/.cache/torch_extensions. It only speeds up collectives and changes nothing on disk, so it is
    # disabled (build_shm_op() returns None when the op is not marked compatible).
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def task_deepspeed(args: dict[str, Any]) -> None:
    import_deepspeed()
    _spawn(_ds_rank, args["nprocs"], args)


# ---------------------------------------------------------------------------------------------------
# task: sharded_dcp (Megatron torch_dist / NeMo 2 weights dirs; 2 "TP" ranks, DTensor shards)


def _sharded_state(rank: int, world: int, mesh, flavor: str, iteration: int):
    """A TP-sharded GPT-ish state dict: every rank owns distinct shards (Shard(0)) + its rng object."""
    import torch
    from torch.distributed.tensor import DTensor, Replicate, Shard

    h, ffn, vocab = 16, 64, 64
    g = torch.Generator().manual_seed(1000 * iteration + rank)
    prefix = "module." if flavor == "nemo" else ""

    def shard(*global_shape):
        local = torch.randn(global_shape[0] // world, *global_shape[1:], generator=g).to(torch.bfloat16)
        return DTensor.from_local(local, mesh, [Shard(0)], run_check=False)

    def replicated(*shape):
        return DTensor.from_local(torch.ones(*shape, dtype=torch.bfloat16), mesh, [Replicate()],
                                  run_check=False)

    model = {
        f"{prefix}embedding.word_embeddings.weight": shard(vocab, h),
        f"{prefix}decoder.layers.self_attention.linear_qkv.weight": shard(3 * h, h),
        f"{prefix}decoder.layers.self_attention.linear_proj.weight": shard(h, h),
        f"{prefix}decoder.layers.mlp.linear_fc1.weight": shard(ffn, h),
        f"{prefix}decoder.layers.mlp.linear_fc2.weight": shard(h, ffn),
        f"{prefix}decoder.final_layernorm.weight": replicated(h),
        f"{prefix}output_layer.weight": shard(vocab, h),
    }
    state: dict[str, Any] = dict(model)
    for k, v in model.items():
        if v.placements[0].is_shard():
            for moment in ("exp_avg", "exp_avg_sq"):
                local = torch.rand(v.to_local().shape, generator=g)
                state[f"optimizer.state.{moment}.{k}"] = DTensor.from_local(local, mesh, [Shard(0)],
                                                                            run_check=False)
    # Megatron's ShardedObject("rng_state", ..., global_shape=(pp, tp), global_offset=(0, tp_rank)) is
    # saved by torch_dist as a DCP bytes item keyed by its unique_key.
    state[f"rng_state/shard_0.{rank}_1.{world}"] = {
        "random_rng_state": None,
        "torch_rng_state": torch.get_rng_state(),
        "rng_tracker_states": {"model-parallel-rng": torch.get_rng_state()},
    }
    return state


def _common_state(flavor: str, iteration: int) -> dict[str, Any]:
    if flavor == "nemo":
        return {
            "epoch": 0,
            "global_step": iteration,
            "pytorch-lightning_version": "2.5.1",
            "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 0}}}},
            "callbacks": {"ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}":
                          {"best_model_score": None}},
            "optimizer": [{"param_groups": [{"lr": 3e-4, "weight_decay": 0.1, "params": [0, 1, 2]}]}],
            "lr_schedulers": [{"last_epoch": iteration, "_step_count": iteration + 1}],
            "hyper_parameters": {},
        }
    return {
        "args": _megatron_args(ckpt_format="torch_dist"),
        "checkpoint_version": 3.0,
        "iteration": iteration,
        "num_floating_point_operations_so_far": 1.5e12 * iteration,
        "opt_param_scheduler": {"max_lr": 3e-4, "min_lr": 3e-5, "num_steps": iteration * 8,
                                "lr_decay_style": "cosine"},
        "optimizer": {"param_groups": [{"lr": 3e-4, "weight_decay": 0.1, "params": [0, 1, 2, 3, 4, 5, 6]}]},
    }


def _megatron_planner():
    """DefaultSavePlanner that, like Megatron's ``save_state_dict_async_plan``
    (``megatron/core/dist_checkpointing/strategies/state_dict_saver.py``: ``global_metadata.
    all_local_plans = all_local_plans``), stores the gathered local plans on the global ``Metadata``,
    so ``.metadata`` also pickles ``SavePlan``/``WriteItem``/``WriteItemType``/``TensorWriteData``."""
    from torch.distributed.checkpoint import DefaultSavePlanner

    class MegatronLikeSavePlanner(DefaultSavePlanner):
        def create_global_plan(self, all_plans):
            global_plans, metadata = super().create_global_plan(all_plans)
            metadata.all_local_plans = all_plans
            return global_plans, metadata

    return MegatronLikeSavePlanner()


def _sharded_dcp_rank(rank: int, world: int, args: dict[str, Any]) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh

    _init_gloo(rank, world)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    for item in args["dirs"]:
        path = Path(item["path"])
        if rank == 0:
            path.mkdir(parents=True, exist_ok=True)
        # optional framework steps around the save, done by rank 0 like the frameworks do:
        # "pre_touch" (NeMo's -unfinished marker, then a barrier), "post_write" (NeMo context files,
        # Megatron's tracker; after the final barrier), "post_remove" (marker removal).
        if rank == 0:
            for marker in item.get("pre_touch", []):
                Path(marker).parent.mkdir(parents=True, exist_ok=True)
                Path(marker).touch()
        dist.barrier()
        # Megatron <= core_v0.18 (serialization.save): rank 0 writes common.pt first, then the DCP
        # sharded save (data files, then .metadata), then rank 0 writes metadata.json + barrier.
        if rank == 0 and item.get("common", True):
            torch.save(_common_state(item["flavor"], item["iteration"]), path / "common.pt")
        dcp.save(_sharded_state(rank, world, mesh, item["flavor"], item["iteration"]), checkpoint_id=path,
                 planner=_megatron_planner())
        if rank == 0 and item.get("metadata_json", True):
            # megatron/core/dist_checkpointing/core.py save_config: json.dump(asdict(CheckpointingConfig))
            with open(path / "metadata.json", "w") as f:
                json.dump({"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                           "common_backend": "torch", "common_backend_version": 1}, f)
        dist.barrier()
        if rank == 0:
            for name, text in item.get("post_write", {}).items():
                Path(name).parent.mkdir(parents=True, exist_ok=True)
                Path(name).write_text(text)
            for name in item.get("post_remove", []):
                Path(name).unlink()
        dist.barrier()
    dist.destroy_process_group()


def task_sharded_dcp(args: dict[str, Any]) -> None:
    # imported here, before the fork, so that no rank pays for them
    import torch.distributed.checkpoint
    import torch.distributed.tensor  # noqa: F401 - for the ranks

    _spawn(_sharded_dcp_rank, args["nprocs"], args)


# ---------------------------------------------------------------------------------------------------
# task: torch_save (generic training output, single process)


def _tiny_training_state(step: int):
    import torch
    import torch.nn as nn

    torch.manual_seed(step)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        model(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def task_torch_save(args: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import save_file

    dest = Path(args["dest"])
    for step in (10, 20):
        model, opt = _tiny_training_state(step)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step},
                   dest / f"ckpt_step_{step}.pt")
        if step == 20:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                      str(dest / "weights_step_20.safetensors"), metadata={"format": "pt", "step": "20"})
    model, opt = _tiny_training_state(30)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 30},
               dest / "legacy_step_30.pt", _use_new_zipfile_serialization=False)


# ---------------------------------------------------------------------------------------------------
# task: megatron_legacy (format "torch": one model_optim_rng.pt per TP rank)


def _legacy_state(iteration: int, tp_rank: int, tp: int) -> dict[str, Any]:
    import random

    import torch

    h, ffn, vocab, layers = 16, 64, 64, 2
    g = torch.Generator().manual_seed(iteration * 10 + tp_rank)

    def t(*shape):
        return torch.randn(*shape, generator=g).to(torch.bfloat16)

    model: dict[str, Any] = {"embedding.word_embeddings.weight": t(vocab // tp, h)}
    for i in range(layers):
        p = f"decoder.layers.{i}."
        model[p + "self_attention.linear_qkv.layer_norm_weight"] = torch.ones(h, dtype=torch.bfloat16)
        model[p + "self_attention.linear_qkv.weight"] = t(3 * h // tp, h)
        model[p + "self_attention.linear_proj.weight"] = t(h, h // tp)
        model[p + "self_attention.core_attention._extra_state"] = None
        model[p + "mlp.linear_fc1.layer_norm_weight"] = torch.ones(h, dtype=torch.bfloat16)
        model[p + "mlp.linear_fc1.weight"] = t(ffn // tp, h)
        model[p + "mlp.linear_fc2.weight"] = t(h, ffn // tp)
    model["decoder.final_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    model["output_layer.weight"] = t(vocab // tp, h)
    params = [k for k, v in model.items() if isinstance(v, torch.Tensor)]
    adam_state = {i: {"exp_avg": torch.rand(model[k].shape, generator=g),
                      "exp_avg_sq": torch.rand(model[k].shape, generator=g)} for i, k in enumerate(params)}
    optimizer = {
        "optimizer": {"state": adam_state,
                      "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1,
                                        "params": list(range(len(params)))}]},
        "fp32_from_fp16_params": [[model[k].float() for k in params]],
    }
    rng = {"random_rng_state": random.Random(iteration).getstate(),
           "torch_rng_state": torch.get_rng_state(),
           "cuda_rng_state": torch.zeros(16, dtype=torch.uint8),  # placeholder: no CUDA here
           "rng_tracker_states": {"model-parallel-rng": torch.zeros(16, dtype=torch.uint8)}}
    try:
        import numpy as np

        rng["np_rng_state"] = np.random.RandomState(iteration).get_state()
    except ImportError:
        pass
    return {
        "args": _megatron_args(rank=tp_rank),
        "checkpoint_version": 3.0,
        "iteration": iteration,
        "model": model,
        "optimizer": optimizer,
        "opt_param_scheduler": {"max_lr": 3e-4, "min_lr": 3e-5, "num_steps": iteration * 8,
                                "warmup_steps": 10, "decay_steps": 300, "decay_style": "cosine"},
        "rerun_state_machine": {"mode": "disabled", "rerun_requested": False},
        "rng_state": [rng],
        "num_floating_point_operations_so_far": 1.5e12 * iteration,
    }


def task_megatron_legacy(args: dict[str, Any]) -> None:
    import torch

    dest = Path(args["dest"])
    tp = 2
    for iteration in args["iterations"]:
        it_dir = dest / f"iter_{iteration:07d}"
        for tp_rank in range(tp):
            d = it_dir / f"mp_rank_{tp_rank:02d}"
            d.mkdir(parents=True)
            torch.save(_legacy_state(iteration, tp_rank, tp), d / "model_optim_rng.pt")
        # tracker last, by rank 0, after the barrier (checkpointing.py iter_finalize_fn)
        (dest / "latest_checkpointed_iteration.txt").write_text(str(iteration))


# ---------------------------------------------------------------------------------------------------
# task: nvrx_local (nvidia-resiliency-ext LocalCheckpointManager files)


class _FakeModules:
    """Temporarily register stand-ins for Megatron classes so pickles name the real globals."""

    def __init__(self, classes: dict[str, list[type]]):
        self.classes = classes
        self.added: list[str] = []

    def __enter__(self):
        import types

        for modname, classes in self.classes.items():
            parts = modname.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name not in sys.modules:
                    sys.modules[name] = types.ModuleType(name)
                    self.added.append(name)
            for cls in classes:
                cls.__module__ = modname
                setattr(sys.modules[modname], cls.__qualname__, cls)
        return self

    def __exit__(self, *exc):
        for name in reversed(self.added):
            sys.modules.pop(name, None)


def task_nvrx_local(args: dict[str, Any]) -> None:
    import dataclasses
    import io

    import torch

    @dataclasses.dataclass
    class ShardedTensor:
        key: str
        data: Any
        dtype: Any
        local_shape: tuple
        global_shape: tuple
        global_offset: tuple
        axis_fragmentations: tuple | None
        replica_id: Any = 0
        prepend_axis_num: int = 0
        allow_shape_mismatch: bool = False
        flattened_range: Any = None

    @dataclasses.dataclass
    class ShardedObject:
        key: str
        data: Any
        global_shape: tuple
        global_offset: tuple
        replica_id: Any = 0

    @dataclasses.dataclass
    class MCoreTensorAwareStateDict:
        common: dict
        sharded_state_dict: dict
        _is_hollow: bool = False

    ShardedTensor.__qualname__ = "ShardedTensor"
    ShardedObject.__qualname__ = "ShardedObject"
    MCoreTensorAwareStateDict.__qualname__ = "MCoreTensorAwareStateDict"

    dest = Path(args["dest"])
    world = args["world"]

    def state(iteration: int, rank: int) -> MCoreTensorAwareStateDict:
        g = torch.Generator().manual_seed(iteration * 100 + rank)
        sharded = {}
        for name, rows in (("embedding.word_embeddings.weight", 64),
                           ("decoder.layers.mlp.linear_fc1.weight", 32)):
            local = torch.randn(rows // world, 16, generator=g).to(torch.bfloat16)
            sharded[name] = ShardedTensor(name, local, torch.bfloat16, tuple(local.shape), (rows, 16),
                                          (rank * (rows // world), 0), (world, 1))
        sharded["rng_state"] = ShardedObject("rng_state", {"torch_rng_state": torch.get_rng_state()},
                                             (1, world), (0, rank))
        common = {"args": _megatron_args(world_size=world, tensor_model_parallel_size=world, rank=rank,
                                         ckpt_format="torch_dist", non_persistent_ckpt_type="local"),
                  "checkpoint_version": 3.0, "iteration": iteration,
                  "num_floating_point_operations_so_far": 1.5e12 * iteration}
        return MCoreTensorAwareStateDict(common=common, sharded_state_dict={"model": sharded})

    with _FakeModules({
        "megatron.core.dist_checkpointing.mapping": [ShardedTensor, ShardedObject],
        "megatron.core.dist_checkpointing.tensor_aware_state_dict": [MCoreTensorAwareStateDict],
    }):
        for iteration in args["iterations"]:
            for rank in range(world):
                rank_dir = dest / str(rank)  # root_local_ckpt_dir / session_id ("") / str(rank)
                rank_dir.mkdir(parents=True, exist_ok=True)
                dirty = rank_dir / f"iter_{iteration:07d}_{rank}_local.dirty.pt"
                final = rank_dir / f"iter_{iteration:07d}_{rank}_local.pt"
                with open(dirty, "bx") as f:  # LocalCheckpointManager._save: open "bx", torch.save, rename
                    torch.save(state(iteration, rank), f)
                dirty.rename(final)
        # a save interrupted on one rank: the .dirty file holds the first part of the torch.save stream
        it, rank = args["dirty"]
        buf = io.BytesIO()
        torch.save(state(it, rank), buf)
        data = buf.getvalue()
        with open(dest / str(rank) / f"iter_{it:07d}_{rank}_local.dirty.pt", "bx") as f:
            f.write(data[: len(data) * 3 // 5])


# ---------------------------------------------------------------------------------------------------

TASKS = {
    "dcp": task_dcp,
    "deepspeed": task_deepspeed,
    "sharded_dcp": task_sharded_dcp,
    "torch_save": task_torch_save,
    "megatron_legacy": task_megatron_legacy,
    "nvrx_local": task_nvrx_local,
}

if __name__ == "__main__":
    TASKS[sys.argv[1]](json.loads(sys.argv[2]))
