"""On-disk facts of the real-framework builders (tests/builders/) that other tests rely on.

Reads everything without importing transformers/peft/lightning: JSON, safetensors (numpy), zip
listings, and a stub unpickler for ``training_args.bin``.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

pytestmark = pytest.mark.slow

TRAINER_FILES = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "trainer_state.json"}
FULL_FILES = {"config.json", "generation_config.json", "model.safetensors"}
ADAPTER_FILES = {"README.md", "adapter_model.safetensors", "adapter_config.json"}


# ---------------------------------------------------------------------------------------------------
# helpers


def _names(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def _state(ckpt: Path) -> dict:
    return json.loads((ckpt / "trainer_state.json").read_text())


def _check_checkpoints(root: Path, steps: list[int], files: set[str]) -> None:
    """The ``checkpoint-*`` dirs are exactly ``checkpoint-<s>`` for ``steps``, each holding exactly ``files``,
    and each ``trainer_state.json`` records ``global_step == s``."""
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("checkpoint-")) == sorted(
        f"checkpoint-{s}" for s in steps)
    for s in steps:
        ckpt = root / f"checkpoint-{s}"
        assert _names(ckpt) == files, ckpt.name
        assert _state(ckpt)["global_step"] == s


def _losses(state: dict, key: str) -> list[float]:
    return [e[key] for e in state["log_history"] if key in e]


def _check_history(root: Path, last: int) -> None:
    """Train loss logged every step, eval every 2 steps; best = last checkpoint; loss clearly falls."""
    state = _state(root / f"checkpoint-{last}")
    assert [e["step"] for e in state["log_history"] if "loss" in e] == list(range(1, last + 1))
    assert [e["step"] for e in state["log_history"] if "eval_loss" in e] == list(range(2, last + 1, 2))
    train = _losses(state, "loss")
    assert train[-1] < 0.8 * train[0], train
    assert state["best_global_step"] == last
    # output_dir was absolute at build time: the path points at the build, not at this copy
    assert Path(state["best_model_checkpoint"]).name == f"checkpoint-{last}"
    assert state["best_metric"] == pytest.approx(_losses(state, "eval_loss")[-1])


def _lora_b(path: Path) -> dict[str, np.ndarray]:
    tensors = load_file(path)
    assert tensors and all(k.startswith("base_model.model.transformer.h.") for k in tensors)
    return {k: v for k, v in tensors.items() if ".lora_B." in k}


class _Stub(dict):
    """Stands in for any pickled class; a dict so that pickled dict subclasses (OrderedDict) fill it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        self.args = args

    def __setstate__(self, state) -> None:
        self.state = state


class _StubUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        return type(name, (_Stub,), {"__module__": module})

    def persistent_load(self, pid):
        return ("storage", pid)


def _unpickle_stub(path: Path):
    """Unpickle a torch zip file's ``*/data.pkl`` with every class replaced by a stub (no imports)."""
    with zipfile.ZipFile(path) as z:
        (pkl,) = [n for n in z.namelist() if n.endswith("/data.pkl")]
        return _StubUnpickler(io.BytesIO(z.read(pkl))).load()


# ---------------------------------------------------------------------------------------------------
# Hugging Face Trainer


def test_hf_full(artefact):
    """hf_full: checkpoint-{2,4,6} with full safetensors weights and all Trainer files."""
    root = artefact("hf_full")
    assert _names(root) == {"checkpoint-2", "checkpoint-4", "checkpoint-6"}
    _check_checkpoints(root, [2, 4, 6], FULL_FILES | TRAINER_FILES)
    _check_history(root, 6)
    with safe_open(root / "checkpoint-6" / "model.safetensors", "np") as f:
        keys = f.keys()  # a safe_open handle is not a dict
        assert "transformer.wte.weight" in keys and "lm_head.weight" not in keys  # tied, dropped


def test_hf_best_first(artefact):
    """hf_best_first: as hf_full, but the Trainer's recorded best is checkpoint-2 (the highest eval_loss)."""
    root = artefact("hf_best_first")
    _check_checkpoints(root, [2, 4, 6], FULL_FILES | TRAINER_FILES)
    state = _state(root / "checkpoint-6")
    evals = {e["step"]: e["eval_loss"] for e in state["log_history"] if "eval_loss" in e}
    assert sorted(evals) == [2, 4, 6] and evals[2] > evals[4] > evals[6]
    assert Path(state["best_model_checkpoint"]).name == "checkpoint-2" and state["best_global_step"] == 2
    assert state["best_metric"] == evals[2]


def test_hf_lora(artefact):
    """hf_lora: adapter-only checkpoints; lora_B non-zero and changing between checkpoints."""
    root = artefact("hf_lora")
    _check_checkpoints(root, [2, 4, 6], ADAPTER_FILES | TRAINER_FILES)
    _check_history(root, 6)
    cfg = json.loads((root / "checkpoint-6" / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"]) == ("LORA", 4, 8)
    assert cfg["target_modules"] == ["c_attn"]
    b = {s: _lora_b(root / f"checkpoint-{s}" / "adapter_model.safetensors") for s in (2, 4, 6)}
    assert len(b[6]) == 2 and all(v.shape == (96, 4) for v in b[6].values())
    assert all(np.abs(v).max() > 1e-2 for v in b[6].values())
    assert all(not np.array_equal(b[4][k], b[6][k]) and not np.array_equal(b[2][k], b[4][k]) for k in b[6])


def test_hf_lora_stub(artefact):
    """hf_lora_stub: near-empty torch-zip pytorch_model.bin beside the adapter in checkpoint-6 only."""
    root = artefact("hf_lora_stub")
    assert _names(root) == {"checkpoint-2", "checkpoint-4", "checkpoint-6"}
    for s in (2, 4, 6):
        extra = {"pytorch_model.bin"} if s == 6 else set()
        assert _names(root / f"checkpoint-{s}") == ADAPTER_FILES | TRAINER_FILES | extra
        assert _state(root / f"checkpoint-{s}")["global_step"] == s
    ckpt = root / "checkpoint-6"
    stub = ckpt / "pytorch_model.bin"
    # torch 2.13's zip format cannot go below ~1.3 KB with this archive name (six records)
    assert stub.stat().st_size < 2048
    with zipfile.ZipFile(stub) as z:
        assert not [n for n in z.namelist() if re.fullmatch(r"pytorch_model/data/\d+", n)]  # no tensors
    assert _unpickle_stub(stub) == {}
    assert np.abs(next(iter(_lora_b(ckpt / "adapter_model.safetensors").values()))).max() > 1e-2


def test_hf_multi_adapter(artefact):
    """hf_multi_adapter: default adapter at top level, second adapter in second/."""
    root = artefact("hf_multi_adapter")
    _check_checkpoints(root, [2, 4, 6], ADAPTER_FILES | TRAINER_FILES | {"second"})
    _check_history(root, 6)
    for s in (2, 4, 6):
        second_dir = root / f"checkpoint-{s}" / "second"
        assert _names(second_dir) == {"adapter_model.safetensors", "adapter_config.json"}
    cfg2 = json.loads((root / "checkpoint-6" / "second" / "adapter_config.json").read_text())
    assert (cfg2["r"], cfg2["lora_alpha"], cfg2["init_lora_weights"]) == (2, 4, False)
    second = [_lora_b(root / f"checkpoint-{s}" / "second" / "adapter_model.safetensors") for s in (2, 6)]
    assert all(v.shape == (96, 2) and np.abs(v).max() > 0 for v in second[1].values())
    assert all(np.array_equal(second[0][k], second[1][k]) for k in second[1])  # never active: unchanged
    default = [_lora_b(root / f"checkpoint-{s}" / "adapter_model.safetensors") for s in (2, 6)]
    assert all(not np.array_equal(default[0][k], default[1][k]) for k in default[1])


def test_hf_sharded(artefact):
    """hf_sharded: index + model-0000i-of-0000N shards instead of model.safetensors."""
    root = artefact("hf_sharded")
    for s in (2, 4, 6):
        ckpt = root / f"checkpoint-{s}"
        index = json.loads((ckpt / "model.safetensors.index.json").read_text())
        shards = set(index["weight_map"].values())
        n = len(shards)
        assert n >= 2 and shards == {f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)}
        other = {"config.json", "generation_config.json", "model.safetensors.index.json"}
        assert _names(ckpt) == shards | other | TRAINER_FILES
        keys: set[str] = set()
        for shard in shards:
            with safe_open(ckpt / shard, "np") as f:
                assert {k for k, v in index["weight_map"].items() if v == shard} == set(f.keys())
                keys |= set(f.keys())
        assert keys == set(index["weight_map"]) and "total_size" in index["metadata"]
        assert _state(ckpt)["global_step"] == s
    _check_history(root, 6)


def test_hf_ddp(artefact):
    """hf_ddp: two-process DDP; rng_state_0/1.pth and training_args num_processes == 2."""
    root = artefact("hf_ddp")
    files = FULL_FILES | TRAINER_FILES - {"rng_state.pth"} | {"rng_state_0.pth", "rng_state_1.pth"}
    _check_checkpoints(root, [2, 4], files)
    args = _unpickle_stub(root / "checkpoint-4" / "training_args.bin")
    dist = args.state["distributed_state"].state
    assert (dist["num_processes"], dist["process_index"], dist["backend"]) == (2, 0, "gloo")
    assert _state(root / "checkpoint-4")["best_global_step"] == 4


def test_hf_lora_tensorboard(artefact):
    """hf_lora_tensorboard: hf_lora layout plus runs/events.out.tfevents.* with train/loss scalars."""
    root = artefact("hf_lora_tensorboard")
    assert _names(root) == {"checkpoint-2", "checkpoint-4", "checkpoint-6", "runs"}
    _check_checkpoints(root, [2, 4, 6], ADAPTER_FILES | TRAINER_FILES)
    (events,) = (root / "runs").iterdir()
    assert events.name.startswith("events.out.tfevents.")
    data = events.read_bytes()
    assert b"train/loss" in data and b"eval/loss" in data


# ---------------------------------------------------------------------------------------------------
# Lightning


def test_lightning(artefact):
    """lightning: two step checkpoints, last.ckpt a relative symlink to the newest, metrics.csv."""
    root = artefact("lightning")
    assert _names(root) == {"checkpoints", "lightning_logs"}
    ckpts = root / "checkpoints"
    assert _names(ckpts) == {"epoch=0-step=4.ckpt", "epoch=0-step=8.ckpt", "last.ckpt"}
    last = ckpts / "last.ckpt"
    assert last.is_symlink() and last.readlink() == Path("epoch=0-step=8.ckpt") and last.is_file()
    for name, step in (("epoch=0-step=4.ckpt", 4), ("epoch=0-step=8.ckpt", 8)):
        assert not (ckpts / name).is_symlink()
        with zipfile.ZipFile(ckpts / name) as z:
            assert "archive/data.pkl" in z.namelist()
        ckpt = _unpickle_stub(ckpts / name)
        assert ckpt["global_step"] == step and ckpt["epoch"] == 0
        assert {"state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks",
                "pytorch-lightning_version", "hyper_parameters"} <= set(ckpt)
    logs = root / "lightning_logs" / "version_0"
    assert _names(logs) == {"hparams.yaml", "metrics.csv"}
    rows = (logs / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",") == ["epoch", "lr-Adam", "step", "train_loss"]
    assert sum(1 for r in rows[1:] if r.split(",")[3]) == 8  # one train_loss per step 0..7


def test_lightning_top_k(artefact):
    """lightning_top_k: the two best of four monitored saves, named with val_loss; last.ckpt a copy; the
    callback's own record (callback_truth.json) agrees with the files."""
    root = artefact("lightning_top_k")
    truth = json.loads((root / "callback_truth.json").read_text())
    ckpts = root / "checkpoints"
    assert sorted(truth["val_loss_by_step"]) == ["2", "4", "6", "8"]
    kept = sorted(truth["val_loss_by_step"].items(), key=lambda kv: kv[1])[:2]
    assert set(truth["best_k_models"]) == {f"epoch=0-step={s}-val_loss={v:.4f}.ckpt" for s, v in kept}
    assert _names(ckpts) == {*truth["best_k_models"], "last.ckpt"}
    assert truth["best_model_path"] == min(truth["best_k_models"], key=truth["best_k_models"].get)
    assert not (ckpts / "last.ckpt").is_symlink() and (ckpts / "last.ckpt").stat().st_nlink == 1
    for name in _names(ckpts):
        ckpt = _unpickle_stub(ckpts / name)
        assert any(k.startswith("ModelCheckpoint{'monitor': 'val_loss'") for k in ckpt["callbacks"])
    assert _unpickle_stub(ckpts / "last.ckpt")["global_step"] == 8
