"""``python -m tests.deepspeed_resume_child JSON``: resume DeepSpeed from run dirs, as a trainer would.

2 ranks on gloo (CPU), the model and ZeRO config of the ``deepspeed_zero*`` builders
(``tests/builders/_dist_worker._ds_rank``; repeated here because a checkpoint only loads into the same
model), ``engine.load_checkpoint(run_dir)`` with no tag: DeepSpeed reads the run's ``latest`` itself.
For each dir of ``args["dirs"]`` rank 0 writes ``{"load_path", "global_steps", "client_loss",
"params"}`` (``params``: the sum of every parameter after loading, to compare two loads) to
``args["out"]``. Exit 77 when DeepSpeed cannot be imported (the test skips).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tests.builders._dist_worker import SKIP_EXIT, _spawn


def _rank(rank: int, world: int, args: dict[str, Any]) -> None:
    import deepspeed
    import torch
    import torch.nn as nn

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    micro = 4
    config = {
        "train_batch_size": micro * world, "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}},
        "zero_optimization": {"stage": args["stage"]}, "steps_per_print": 1000, "wall_clock_breakdown": False,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    results = []
    for d in args["dirs"]:
        load_path, client = engine.load_checkpoint(d)
        total = float(sum(p.detach().float().sum() for p in engine.module.parameters()))
        results.append({"dir": d, "load_path": load_path, "global_steps": engine.global_steps,
                        "client_loss": (client or {}).get("loss"), "params": total})
    if rank == 0:
        with open(args["out"], "w") as f:
            json.dump(results, f)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def main(args: dict[str, Any]) -> None:
    try:
        import deepspeed
        import deepspeed.ops
    except Exception as e:  # noqa: BLE001 - any import failure means "cannot run here"
        print(f"deepspeed cannot be imported: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(SKIP_EXIT)
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # as the builder: no 80 s g++ build
    _spawn(_rank, 2, args)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
