"""``python -m tests.deepspeed_resume_child JSON``: resume DeepSpeed from run dirs, as a trainer would.

2 ranks on gloo (CPU), the model and ZeRO config of the ``deepspeed_zero*`` builders
(``tests/builders/_dist_worker.ds_engine``: a checkpoint only loads into the same model),
``engine.load_checkpoint(run_dir)`` with no tag: DeepSpeed reads the run's ``latest`` itself.
For each dir of ``args["dirs"]`` rank 0 writes ``{"load_path", "global_steps", "client_loss",
"params"}`` (``params``: the sum of every parameter after loading, to compare two loads) to
``args["out"]``. Exit 77 when DeepSpeed cannot be imported (the test skips).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tests.builders._dist_worker import _spawn, ds_engine, import_deepspeed


def _rank(rank: int, world: int, args: dict[str, Any]) -> None:
    import torch

    engine = ds_engine(world, args["stage"])
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
    import_deepspeed()
    _spawn(_rank, 2, args)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
