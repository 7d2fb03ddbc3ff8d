"""Child process: writes small, real Trainer checkpoints on command, for the service benchmark.

``python -m bench.ckpt_writer TEMPLATE`` reads one JSON command per line on stdin and answers one JSON
line on stdout. TEMPLATE is the 20-file checkpoint ``bench.make_hf`` trains (``checkpoint-2``).

Each checkpoint is what ``transformers.Trainer`` writes, in its order, 10 files:
``model-00001-of-00002.safetensors`` and ``model-00002-of-00002.safetensors``, written by
``safetensors.numpy.save_file`` from the template's tensors (safetensors 0.8 writes ``.tmpXXXXXX`` and
renames it, as in a real save), ``model.safetensors.index.json``, ``config.json``,
``generation_config.json``, ``training_args.bin``, ``optimizer.pt``, ``scheduler.pt``,
``rng_state.pth`` (the template's ``torch.save`` bytes, written with open/write/close) and last
``trainer_state.json`` with ``global_step`` = the directory's step.

Commands:
  {"op": "ckpt", "dir": PATH, "step": N}            -> {"dir", "first_write", "last_write"}
  {"op": "burst", "run": DIR, "start": N, "count": K} -> {"first_write", "last_write", "dirs"}
  {"op": "quit"}

``last_write`` is ``time.time()`` right after ``trainer_state.json`` is closed. Run as a child so the
benchmark driver never imports numpy (nor torch: the .pt files are copied bytes).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
COPIED = ("config.json", "generation_config.json", "training_args.bin", "optimizer.pt", "scheduler.pt",
          "rng_state.pth")


class Writer:
    def __init__(self, template: str) -> None:
        from safetensors.numpy import load_file

        tensors: dict = {}
        for name in sorted(os.listdir(template)):
            if name.endswith(".safetensors"):
                tensors.update(load_file(os.path.join(template, name)))
        names = sorted(tensors)
        half = len(names) // 2
        self.groups = [{k: tensors[k] for k in names[:half]}, {k: tensors[k] for k in names[half:]}]
        weight_map = {k: SHARDS[0] for k in names[:half]} | {k: SHARDS[1] for k in names[half:]}
        total = sum(int(t.nbytes) for t in tensors.values())
        self.index = json.dumps({"metadata": {"total_parameters": sum(int(t.size) for t in tensors.values()),
                                              "total_size": total}, "weight_map": weight_map},
                                indent=2, sort_keys=True).encode() + b"\n"
        self.copied = {n: Path(template, n).read_bytes() for n in COPIED}
        with open(os.path.join(template, "trainer_state.json")) as f:
            self.state = json.load(f)

    @staticmethod
    def _write(path: str, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)

    def checkpoint(self, d: str, step: int) -> tuple[float, float]:
        from safetensors.numpy import save_file

        os.makedirs(d, exist_ok=True)
        first = time.time()
        for name, group in zip(SHARDS, self.groups):
            save_file(group, os.path.join(d, name), metadata={"format": "pt"})
        self._write(os.path.join(d, "model.safetensors.index.json"), self.index)
        for name in COPIED:
            self._write(os.path.join(d, name), self.copied[name])
        self.state["global_step"] = step
        self._write(os.path.join(d, "trainer_state.json"),
                    (json.dumps(self.state, indent=2, sort_keys=True) + "\n").encode())
        return first, time.time()


def main() -> int:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m bench.ckpt_writer TEMPLATE_CHECKPOINT_DIR")
    w = Writer(sys.argv[1])
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.get("op")
        if op == "quit":
            break
        if op == "ckpt":
            first, last = w.checkpoint(cmd["dir"], int(cmd["step"]))
            out = {"dir": cmd["dir"], "first_write": first, "last_write": last}
        elif op == "burst":
            dirs, first = [], None
            for step in range(int(cmd["start"]), int(cmd["start"]) + int(cmd["count"])):
                d = os.path.join(cmd["run"], f"checkpoint-{step}")
                f0, last = w.checkpoint(d, step)
                first = f0 if first is None else first
                dirs.append(d)
            out = {"first_write": first, "last_write": last, "dirs": dirs}
        else:
            out = {"error": f"unknown op {op!r}"}
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
