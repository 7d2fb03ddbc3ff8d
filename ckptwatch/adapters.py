"""Small reads of PEFT adapter weights for the resume hazards (adapter never trained or re-initialised).

Adapters are megabytes, so reading their LoRA B matrices and hashing their tensor bytes is cheap; a
cap keeps a mistakenly huge "adapter" from turning the structural pass into a full read.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from ckptwatch.formats._io import open_regular_file

MAX_ADAPTER_BYTES = 256 * 1024 * 1024
CHUNK = 4 * 1024 * 1024


def lora_b_all_zero(path: str, tensors: dict[str, Any], data_start: int) -> bool | None:
    """True when every ``lora_B`` tensor (or ``lora_embedding_A``, its embedding twin) is all zeros.

    None when the file has no such tensors or is too large to read cheaply.
    """
    zero_init = [t for name, t in tensors.items() if ".lora_B." in name or ".lora_embedding_A." in name]
    if not zero_init or sum(t.end - t.begin for t in zero_init) > MAX_ADAPTER_BYTES:
        return None
    try:
        with open_regular_file(path) as f:
            for t in zero_init:
                f.seek(data_start + t.begin)
                remaining = t.end - t.begin
                while remaining:
                    block = f.read(min(CHUNK, remaining))
                    if not block:
                        return None
                    if block.count(0) != len(block):
                        return False
                    remaining -= len(block)
    except OSError:
        return None
    return True


def tensor_digest(path: str, data_start: int) -> str | None:
    """SHA-256 of the tensor bytes (header excluded: metadata may differ while weights do not)."""
    try:
        with open_regular_file(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size - data_start > MAX_ADAPTER_BYTES:
                return None
            f.seek(data_start)
            h = hashlib.sha256()
            while block := f.read(CHUNK):
                h.update(block)
            return h.hexdigest()
    except OSError:
        return None
