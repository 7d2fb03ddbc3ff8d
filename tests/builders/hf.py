"""Hugging Face Trainer / PEFT training outputs, written by the real transformers 5.23 Trainer.

Every builder runs the real Trainer in a child process (``python -m tests.builders.hf <variant> <dest>``,
or ``python -m torch.distributed.run ... -m tests.builders.hf ddp <dest>`` for two processes), so the
pytest process never imports transformers, peft or torch.distributed. The model is a tiny GPT-2 built
from a config (no download) and the data are synthetic token ids with a learnable pattern
(counting sequences over a 12-token slice of the vocabulary), so the loss clearly falls within a few
steps.

Common run shape: ``max_steps=6``, ``save_steps=2``, ``eval_steps=2``, ``logging_steps=1``,
``metric_for_best_model="eval_loss"``, ``load_best_model_at_end=True``, CPU, seed 0, ``report_to=[]``.
The Trainer writes only ``checkpoint-<step>/`` dirs into ``output_dir`` (nothing at the top level: no
builder calls ``trainer.save_model()``), except ``hf_lora_tensorboard`` (its ``runs/`` dir).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.builders import builder

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 180
STUB_NAME = "pytorch_model.bin"

# Where this process last built each variant; conftest never modifies a built dir (tests get copies),
# so ``hf_lora_stub`` can copy a finished ``hf_lora`` build instead of training again.
_BUILT: dict[str, Path] = {}


# ---------------------------------------------------------------------------------------------------
# parent side: run the child and report its failure


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TENSORBOARD_LOGGING_DIR", "ACCELERATE_USE_CPU", "CUDA_VISIBLE_DEVICES"):
        env.pop(key, None)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        WANDB_DISABLED="true",
        WANDB_MODE="disabled",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    )
    env.update(extra or {})
    return env


def run_child(argv: list[str], *, what: str, env: dict[str, str] | None = None,
              timeout: float = TIMEOUT_S) -> None:
    """Run ``argv`` from the repo root in its own process group; raise with the stderr tail on failure.

    On timeout the whole group is killed (torchrun's workers included), not just the direct child.
    """
    proc = subprocess.Popen(argv, cwd=REPO, env=env if env is not None else _child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise RuntimeError(f"builder {what}: timed out after {timeout}s\n--- stderr tail ---\n{_tail(err)}")
    if proc.returncode != 0:
        raise RuntimeError(f"builder {what}: child exited with {proc.returncode}: {' '.join(argv)}\n"
                           f"--- stderr tail ---\n{_tail(err)}\n--- stdout tail ---\n{_tail(out, 10)}")


def _tail(text: str | None, lines: int = 40) -> str:
    return "\n".join((text or "").splitlines()[-lines:])


def _run_variant(variant: str, dest: Path, env: dict[str, str] | None = None) -> None:
    run_child([sys.executable, "-m", "tests.builders.hf", variant, str(dest)], what=f"hf {variant}",
              env=_child_env(env))
    _BUILT[variant] = dest


# ---------------------------------------------------------------------------------------------------
# builders


@builder("hf_full")
def build_hf_full(dest: Path) -> None:
    """Full training of a tiny GPT-2 from scratch (lr 2e-2, train loss about 4.4 -> 2.7):
    ``checkpoint-{2,4,6}/`` each with ``config.json``, ``generation_config.json``, ``model.safetensors``
    (mode 0600, safetensors 0.8 temp-file + rename), ``training_args.bin``, ``optimizer.pt``,
    ``scheduler.pt``, ``rng_state.pth``, ``trainer_state.json``; best = ``checkpoint-6``."""
    _run_variant("full", dest)


@builder("hf_best_first")
def build_hf_best_first(dest: Path) -> None:
    """``hf_full`` with ``greater_is_better=True`` on ``eval_loss``: the loss falls, so the Trainer's
    recorded best (``best_model_checkpoint``, ``best_metric``) is ``checkpoint-2``, the oldest, not the
    newest. Why: a reader that takes "the newest" for "the best" passes on ``hf_full`` and fails here."""
    _run_variant("best_first", dest)


@builder("hf_lora")
def build_hf_lora(dest: Path) -> None:
    """LoRA (r=4, lora_alpha=8, target ``c_attn``, lr 1e-2) through PEFT on a briefly pre-trained tiny
    GPT-2 (see ``_pretrained_gpt2``; train loss about 1.9 -> 0.8):
    ``checkpoint-{2,4,6}/`` hold ``README.md``, ``adapter_model.safetensors``, ``adapter_config.json``
    (no ``config.json``, no full weights) plus the usual optimizer/scheduler/rng/args/state files.
    ``lora_B`` is non-zero and differs between checkpoints."""
    _run_variant("lora", dest)


@builder("hf_lora_stub")
def build_hf_lora_stub(dest: Path) -> None:
    """The transformers#24551 resume hazard (seed report 1): ``hf_lora`` plus a near-empty
    ``pytorch_model.bin`` beside the adapter in the newest checkpoint, ``checkpoint-6`` only.

    Why: ``Trainer._load_from_checkpoint`` (still so in transformers 5.23) checks for full weights
    (``model.safetensors`` / ``pytorch_model.bin``) *before* the adapter; when one exists it loads it with
    ``model.load_state_dict(sd, strict=False)``, which succeeds with every key "missing" (only a logged
    warning), and never loads ``adapter_model.safetensors``: the resumed run continues from a fresh
    adapter (checked by hand: resuming this checkpoint, the next train loss is 1.84, back near the run's
    first loss 1.92; with the stub renamed away it is 0.73, continuing from 0.79).

    The stub is a real ``torch.save({}, path)`` in torch 2.13's default zip format: 1297 bytes (six
    records named ``pytorch_model/...``, no tensors). The seed report's 888 bytes cannot be reached with
    the zip format of torch 2.13 (only the legacy format, 149 bytes, is under 1 KB). Written by a child
    process so the pytest process does not import torch; its mtime is the build time, later than
    ``trainer_state.json``. When ``hf_lora`` was built earlier in this process its output is copied
    (mtimes and modes kept) instead of training again.
    """
    src = _BUILT.get("lora")
    if src is not None and (src / "checkpoint-6" / "trainer_state.json").is_file():
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    else:
        _run_variant("lora", dest)
    run_child([sys.executable, "-m", "tests.builders.hf", "stub", str(dest / "checkpoint-6" / STUB_NAME)],
              what="hf stub", env=_child_env())


@builder("hf_multi_adapter")
def build_hf_multi_adapter(dest: Path) -> None:
    """Two LoRA adapters on one PeftModel, saved by the real Trainer (its ``_save`` calls
    ``PeftModel.save_pretrained``, which saves *every* adapter): ``checkpoint-{2,4,6}/`` hold the
    ``default`` adapter at the top level (``adapter_model.safetensors``, ``adapter_config.json``,
    ``README.md``) and ``second/adapter_model.safetensors`` + ``second/adapter_config.json``.

    ``default`` (r=4, alpha 8, ``c_attn``) is the active, trained adapter. ``second`` (r=2, alpha 4,
    ``c_attn``, ``init_lora_weights=False`` so its ``lora_B`` is random, not zero) is added with
    ``add_adapter`` and never active, so it is identical in every checkpoint."""
    _run_variant("multi_adapter", dest)


@builder("hf_sharded")
def build_hf_sharded(dest: Path) -> None:
    """Full fine-tune whose weights the Trainer itself saves sharded: ``checkpoint-{2,4,6}/`` hold
    ``model-0000i-of-0000N.safetensors`` + ``model.safetensors.index.json`` instead of
    ``model.safetensors``.

    How: transformers 5.23 ``Trainer._save`` calls ``self.model.save_pretrained(output_dir,
    state_dict=..., is_main_process=...)`` without ``max_shard_size`` (default "50GB"), so the child
    binds ``max_shard_size="50KB"`` on the model *instance* (``functools.partial`` over its bound
    ``save_pretrained``) before training. Everything else, including the write order (config,
    generation config, shards, index, then training_args.bin, optimizer, ...), is the Trainer's own;
    no file is rewritten after the fact. ``load_best_model_at_end`` reloads through the index."""
    _run_variant("sharded", dest)


@builder("hf_ddp")
def build_hf_ddp(dest: Path) -> None:
    """Two-process DDP (``python -m torch.distributed.run --standalone --nproc_per_node=2``, gloo, CPU,
    ``max_steps=4``): ``checkpoint-{2,4}/`` hold ``rng_state_0.pth`` and ``rng_state_1.pth`` (no
    ``rng_state.pth``); rank 0 wrote everything else; ``training_args.bin`` pickles
    ``distributed_state.num_processes == 2``."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "tests.builders.hf", "ddp", str(dest)]
    run_child(argv, what="hf ddp", env=_child_env())
    _BUILT["ddp"] = dest


@builder("hf_lora_tensorboard")
def build_hf_lora_tensorboard(dest: Path) -> None:
    """``hf_lora`` with ``report_to=["tensorboard"]``: besides ``checkpoint-{2,4,6}/``, ``runs/`` holds
    one ``events.out.tfevents.*`` file with ``train/loss`` (steps 1-6) and ``eval/loss`` (2, 4, 6)
    scalars. transformers 5.23 has no ``logging_dir`` argument any more; the directory comes from
    ``TENSORBOARD_LOGGING_DIR`` (set to ``<dest>/runs`` here instead of the default
    ``runs/<date>_<host>``, so the path is stable)."""
    _run_variant("lora_tensorboard", dest, env={"TENSORBOARD_LOGGING_DIR": str(dest / "runs")})


# ---------------------------------------------------------------------------------------------------
# child side (imports the frameworks)

# ``live``: ``hf_full``'s model and data, no eval, ``save_steps=1``, a pause after each save (not a builder:
# tests run ``python -m tests.builders.hf live DEST`` as a trainer that writes while they watch)
LIVE_STEPS = 10
LIVE_PAUSE_S = 1.0

VOCAB = 96
SEQ_LEN = 32
ALPHABET = 12


def _dataset(n: int, seed: int, stride: int = 1):
    """Counting sequences over a 12-token slice of the vocabulary, ``10 + (start + stride * t) % 12``.

    The model first learns which tokens occur, then the successor rule, so the loss falls clearly within
    a few steps."""
    import torch

    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, ALPHABET, (n, 1), generator=g)
    ids = 10 + (start + stride * torch.arange(SEQ_LEN)) % ALPHABET
    return [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row.clone()} for row in ids]


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=64,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def _pretrained_gpt2():
    """Stand-in for a pretrained base: the tiny GPT-2 after 40 plain AdamW steps on stride-1 counting
    (under 1 s). LoRA on ``c_attn`` of a *random* GPT-2 barely moves the loss (4.59 -> 4.56 in 6
    steps); on this base, LoRA fine-tuning to stride-2 counting drops it clearly (about 1.9 -> 0.8)."""
    import torch

    model = _tiny_gpt2()
    ids = torch.stack([row["input_ids"] for row in _dataset(640, seed=5, stride=1)])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    for step in range(40):
        batch = ids[16 * step: 16 * step + 16]
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return model


def _lora(model, **overrides):
    from peft import LoraConfig, get_peft_model

    cfg = dict(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0, fan_in_fan_out=True,
               task_type="CAUSAL_LM")
    cfg.update(overrides)
    return get_peft_model(model, LoraConfig(**cfg))


def _child_train(variant: str, out: Path) -> None:
    import functools

    from transformers import Trainer, TrainingArguments, set_seed
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    set_seed(0)
    lora = variant in ("lora", "lora_tensorboard", "multi_adapter")
    model = _lora(_pretrained_gpt2()) if lora else _tiny_gpt2()
    lr = 2e-2
    stride = 1
    max_steps = 6
    report_to: list[str] = []
    extra: dict = {}
    if lora:
        lr = 1e-2
        stride = 2
        if variant == "multi_adapter":
            from peft import LoraConfig

            model.add_adapter("second", LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"],
                                                   lora_dropout=0.0, fan_in_fan_out=True,
                                                   task_type="CAUSAL_LM", init_lora_weights=False))
            model.set_adapter("default")
        if variant == "lora_tensorboard":
            report_to = ["tensorboard"]
    elif variant == "sharded":
        model.save_pretrained = functools.partial(model.save_pretrained, max_shard_size="50KB")
    elif variant == "ddp":
        max_steps = 4
        extra = dict(ddp_backend="gloo")
    elif variant == "live":
        max_steps = LIVE_STEPS
    elif variant not in ("full", "best_first"):
        raise SystemExit(f"unknown variant {variant!r}")

    live = variant == "live"
    if live:  # a trainer that keeps writing while a watcher prunes: no eval, no best, no rotation of its own
        extra = dict(save_steps=1, eval_strategy="no", load_best_model_at_end=False)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=8 if variant != "ddp" else 4,
        per_device_eval_batch_size=16,
        learning_rate=lr,
        warmup_steps=0,
        logging_steps=1,
        eval_steps=2,
        save_strategy="steps",
        metric_for_best_model="eval_loss",
        greater_is_better=variant == "best_first",
        **({"eval_strategy": "steps", "save_steps": 2, "load_best_model_at_end": True} | extra),
        report_to=report_to,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(64, seed=1, stride=stride),
                      eval_dataset=_dataset(16, seed=2, stride=stride),
                      callbacks=[_pause_after_each_step(LIVE_PAUSE_S)] if live else None)
    trainer.train()


def _pause_after_each_step(seconds: float):
    """A callback that sleeps after every optimizer step (after the step's save): the ``live`` variant's
    saves come about ``seconds`` apart, so a watcher sees checkpoints appear, settle and age meanwhile."""
    import time

    from transformers import TrainerCallback

    class Pause(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            time.sleep(seconds)

    return Pause()


def _child_stub(path: Path) -> None:
    import torch

    torch.save({}, path)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m tests.builders.hf {full,best_first,live,lora,"
                         "lora_tensorboard,multi_adapter,sharded,ddp,stub} PATH")
    _variant, _path = sys.argv[1], Path(sys.argv[2])
    if _variant == "stub":
        _child_stub(_path)
    else:
        _child_train(_variant, _path)
