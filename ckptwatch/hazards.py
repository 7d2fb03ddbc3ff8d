"""Resume hazards: checkpoints that are whole but would resume the wrong model. Pure functions.

The failures behind the project (seeds 1 and 4): a stub ``pytorch_model.bin`` beside a LoRA adapter
that the Trainer loads first, non-strictly, so the trained adapter is silently ignored; and adapters
that never change or are all-zero B matrices (never trained, or re-initialised by a fresh
``add_adapter`` before loading). These take the per-checkpoint facts the layout gathered and return
hazards; they never touch the disk.

"Never trained" is judged on the default adapter only (the one at the checkpoint's top level): extra
named adapters (``<name>/`` sub-dirs) are often frozen on purpose, and flagging them would be noise.
"""

from __future__ import annotations

import os
from typing import Any

from ckptwatch.model import Hazard, Record, set_field
from ckptwatch.scan import display

EMPTY_ADAPTER_BYTES = 1024
DRIFT_KEYS = ("r", "lora_alpha", "target_modules")
# Also compared, but only when both checkpoints record them (older PEFT versions write fewer keys): each
# changes what the same weights compute. ``base_model_name_or_path`` is not: a base model moved to another
# path on the machine the run resumed on is the same model.
DRIFT_KEYS_IF_RECORDED = ("use_rslora", "use_dora", "modules_to_save", "rank_pattern", "alpha_pattern")


class CheckpointFacts(Record):
    """What the hazard rules need to know about one checkpoint of a run, in step order."""

    __slots__ = ("path", "step", "adapters", "full_weights")
    path: str
    step: int | None
    adapters: dict[str, dict[str, Any]]
    full_weights: list[tuple[str, int]]

    def __init__(self, path: str, step: int | None, adapters: dict[str, dict[str, Any]],
                 full_weights: list[tuple[str, int]]) -> None:
        set_field(self, "path", path)
        set_field(self, "step", step)
        set_field(self, "adapters", adapters)
        set_field(self, "full_weights", full_weights)


def checkpoint_hazards(facts: CheckpointFacts) -> list[Hazard]:
    """Hazards visible inside one checkpoint."""
    hazards: list[Hazard] = []
    if facts.adapters:
        adapter = next(iter(facts.adapters.values()))
        adapter_file = adapter.get("weights") or os.path.join(adapter["dir"], "adapter_config.json")
        for path, size in facts.full_weights:
            hazards.append(Hazard(
                "stub_weights_shadow_adapter", display(path),
                f"{display(path)} ({size} bytes) sits beside the PEFT adapter {display(adapter_file)}; "
                f"Trainer(resume_from_checkpoint=...) loads {os.path.basename(path)} first, non-strictly, "
                "and never loads the adapter, so the resumed run continues from untrained LoRA weights"))
    for label, info in facts.adapters.items():
        size, tensors, weights = info.get("size"), info.get("tensors"), info.get("weights")
        if weights is None:
            continue
        if (size is not None and size <= EMPTY_ADAPTER_BYTES) or tensors == {}:
            hazards.append(Hazard("empty_adapter", display(weights),
                                  f"{display(weights)} is {size} bytes with {len(tensors or {})} tensors: "
                                  f"no LoRA weights were saved"))
        if label == "" and info.get("b_all_zero") is True and (facts.step or 0) > 0:
            hazards.append(Hazard("adapter_b_zero", display(weights),
                                  f"every LoRA B matrix in {display(weights)} is zero at step {facts.step}: "
                                  f"the adapter output is still exactly zero, as at initialisation"))
    return hazards


def _drift_view(config: Any) -> dict[str, Any] | None:
    if not isinstance(config, dict):
        return None
    view = {}
    for key in DRIFT_KEYS + DRIFT_KEYS_IF_RECORDED:
        if key in DRIFT_KEYS or key in config:
            value = config.get(key)
            view[key] = sorted(value, key=repr) if isinstance(value, list) else value
    return view


def _drift(old: dict[str, Any], new: dict[str, Any], old_name: str, new_name: str) -> str:
    """Each changed key with both values and both checkpoints ("lora_alpha 8 in checkpoint-20, 16 in
    checkpoint-30"); "" when none changed."""
    keys = [k for k in DRIFT_KEYS + DRIFT_KEYS_IF_RECORDED
            if k in old and k in new and old[k] != new[k]]
    return "; ".join(f"{k} {old[k]!r} in {old_name}, {new[k]!r} in {new_name}" for k in keys)


def _name(path: str) -> str:
    return display(os.path.basename(path.rstrip(os.sep)) or path)


def run_hazards(ordered: list[CheckpointFacts]) -> dict[str, list[Hazard]]:
    """Hazards that compare successive checkpoints of one run; keyed by checkpoint path."""
    out: dict[str, list[Hazard]] = {}
    for prev, cur in zip(ordered, ordered[1:]):
        for label, info in cur.adapters.items():
            before = prev.adapters.get(label)
            if not before:
                continue
            old, new = _drift_view(before.get("config")), _drift_view(info.get("config"))
            changed = _drift(old, new, _name(prev.path), _name(cur.path)) if old and new else ""
            if changed:
                where = info.get("dir", cur.path)
                adapter = f"the adapter {label!r}" if label else "the adapter"
                out.setdefault(cur.path, []).append(Hazard(
                    "adapter_config_drift", display(os.path.join(where, "adapter_config.json")),
                    f"{changed}: {adapter} was re-created with other settings between {display(prev.path)} "
                    f"and {display(cur.path)} (a training script that builds the adapter itself when it "
                    f"resumes), so the process that wrote {_name(cur.path)} trained the loaded weights in "
                    f"an adapter that computes something else"))
            d_old, d_new = before.get("digest"), info.get("digest")
            if label == "" and d_old and d_new and d_old == d_new and info.get("weights"):
                out.setdefault(cur.path, []).append(Hazard(
                    "adapter_unchanged", display(info["weights"]),
                    f"{display(info['weights'])} holds exactly the same tensor bytes as in "
                    f"{display(prev.path)}: the adapter did not change between step {prev.step} and step "
                    f"{cur.step}"))
    return out
