"""Child process: the big files of the ``--deep`` benchmark, written by the real libraries.

``python -m bench.make_files safetensors PATH MIB``: a safetensors file of about MIB MiB written by
``safetensors.numpy.save_file`` (F32 tensors of 16 Mi elements = 64 MiB each, random values from numpy).
``python -m bench.make_files torch PATH MIB``: a ``torch.save`` zip of a state dict of 64 MiB
``torch.rand`` tensors (torch's default zip format: every record stored, with its CRC-32).

Run as a child so the benchmark process never imports numpy or torch. Prints the file size.
"""

from __future__ import annotations

import os
import sys

TENSOR_ELEMS = 4096 * 4096  # 64 MiB of F32
STRIDE = 4096  # distinct start offsets into one random base array: every tensor differs


def safetensors_file(path: str, mib: int) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    count = max(1, mib // 64)
    per = TENSOR_ELEMS if mib >= 64 else mib * (1 << 18)  # elements per tensor (4 bytes each)
    rng = np.random.default_rng(0)
    # One random base and shifted views: every tensor holds distinct random values, without generating
    # count x 64 MiB of random numbers (the serializer copies them anyway).
    base = rng.random(per + count * STRIDE, dtype=np.float32)
    tensors = {f"model.layers.{i}.weight": base[i * STRIDE: i * STRIDE + per].reshape(-1, 1024)
               if per % 1024 == 0 else base[i * STRIDE: i * STRIDE + per] for i in range(count)}
    save_file(tensors, path, metadata={"format": "np"})


def torch_file(path: str, mib: int) -> None:
    import torch

    torch.manual_seed(0)
    count = max(1, mib // 64)
    per = TENSOR_ELEMS if mib >= 64 else mib * (1 << 18)
    state = {f"model.layers.{i}.weight": torch.rand(per // 1024, 1024) for i in range(count)}
    torch.save(state, path)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("safetensors", "torch"):
        raise SystemExit("usage: python -m bench.make_files {safetensors,torch} PATH MIB")
    kind, dest, size_mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tmp = dest + ".partial"
    (safetensors_file if kind == "safetensors" else torch_file)(tmp, size_mib)
    os.replace(tmp, dest)
    print(os.path.getsize(dest))
