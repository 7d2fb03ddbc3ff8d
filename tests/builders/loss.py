"""Training runs that were interrupted and resumed, written by the real frameworks, for the loss watch.

Every builder trains in child processes (``python -m tests.builders.loss <variant> <dest>``) so the pytest
process never imports transformers, peft, lightning or torch.

Hugging Face runs (``loss_hf_*``): LoRA (r=4, alpha 8, ``c_attn``, lr 1e-2) on the briefly pre-trained
tiny GPT-2 of ``tests.builders.hf`` learning stride-2 counting (memorisable: the loss falls from about
1.9 to well under 0.1). ``max_steps=40``, ``save_steps=10``, ``logging_steps=1``, TensorBoard on
(``TENSORBOARD_LOGGING_DIR=<dest>/runs``, one ``events.out.tfevents.*`` per process) and a callback that
appends HF console lines (``{'loss': '0.0898', ..., 'epoch': '1.2', 'step': 21}``, the ``PrinterCallback``
formatting plus the step) and some log noise to ``<dest>/train.log``.

The first process is "preempted" after logging step 25 (a callback sets ``should_training_stop``, so the
writers close cleanly; the newest checkpoint is ``checkpoint-20``). A second process then resumes from
``checkpoint-20`` to step 40 in the same output dir, in one of these ways:

- ``ok``: ``trainer.train(resume_from_checkpoint=".../checkpoint-20")``, the right way.
- ``fresh``: a new ``get_peft_model`` (fresh LoRA, ``lora_B`` zero) and a Trainer whose
  ``_load_from_checkpoint`` loads nothing: optimizer, scheduler, RNG and trainer state are restored, the
  step counter continues, but the adapter is the untrained one (seed report 4).
- ``stub``: ``torch.save({}, "checkpoint-20/pytorch_model.bin")`` then the correct resume call: the real
  Trainer loads the stub (``strict=False``) instead of the adapter (seed report 1).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tests.builders import builder
from tests.builders.hf import _child_env, run_child

MAX_STEPS = 40
SAVE_STEPS = 10
PREEMPT_AT = 25
RESUME_FROM = 20

_BUILT: dict[str, Path] = {}


def _run(variant: str, dest: Path, env: dict[str, str] | None = None) -> None:
    run_child([sys.executable, "-m", "tests.builders.loss", variant, str(dest)], what=f"loss {variant}",
              env=_child_env(env))


def _hf_env(dest: Path) -> dict[str, str]:
    return {"TENSORBOARD_LOGGING_DIR": str(dest / "runs")}


def _hf_base(dest: Path) -> None:
    src = _BUILT.get("hf_base")
    if src is not None and (src / f"checkpoint-{RESUME_FROM}" / "trainer_state.json").is_file():
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
        return
    _run("hf_base", dest, _hf_env(dest))
    # keep a pristine copy: resume variants continue in their own dest
    keep = dest.parent / ".loss_hf_base_pristine"
    if not keep.exists():
        shutil.copytree(dest, keep, symlinks=True)
    _BUILT["hf_base"] = keep


@builder("loss_hf_interrupted")
def build_loss_hf_interrupted(dest: Path) -> None:
    """The first process only: steps 1-25 logged, ``checkpoint-{10,20}/``, one events file, train.log."""
    _hf_base(dest)


@builder("loss_hf_resume_ok")
def build_loss_hf_resume_ok(dest: Path) -> None:
    """Interrupted at 25, resumed correctly from ``checkpoint-20`` to 40 (second events file)."""
    _hf_base(dest)
    _run("hf_resume_ok", dest, _hf_env(dest))


@builder("loss_hf_resume_fresh")
def build_loss_hf_resume_fresh(dest: Path) -> None:
    """Interrupted at 25, resumed from ``checkpoint-20`` with a fresh adapter and no weight load."""
    _hf_base(dest)
    _run("hf_resume_fresh", dest, _hf_env(dest))


@builder("loss_hf_resume_stub")
def build_loss_hf_resume_stub(dest: Path) -> None:
    """Interrupted at 25; a stub ``pytorch_model.bin`` is put in ``checkpoint-20``, then the correct
    ``resume_from_checkpoint`` call runs (the real Trainer chooses the stub over the adapter)."""
    _hf_base(dest)
    _run("stub", dest)
    _run("hf_resume_ok", dest, _hf_env(dest))


def _hf_ow_base(dest: Path) -> None:
    src = _BUILT.get("hf_ow_base")
    if src is not None and (src / "checkpoint-20" / "trainer_state.json").is_file():
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
        return
    _run("hf_ow_base", dest, _hf_env(dest))
    keep = dest.parent / ".loss_hf_ow_base_pristine"
    if not keep.exists():
        shutil.copytree(dest, keep, symlinks=True)
    _BUILT["hf_ow_base"] = keep


@builder("loss_hf_overwrite_first")
def build_loss_hf_overwrite_first(dest: Path) -> None:
    """The first process of the ``loss_hf_overwrite_*`` runs alone: ``max_steps=20``, ``save_steps=5``,
    ``checkpoint-{5,10,15,20}``, one events file, ``train.log``."""
    _hf_ow_base(dest)


@builder("loss_hf_overwrite_fresh")
def build_loss_hf_overwrite_fresh(dest: Path) -> None:
    """Issue 10 section 3: a full run (``max_steps=20``, ``save_steps=5``: ``checkpoint-{5,10,15,20}``),
    then a second process with ``max_steps=30`` resumes from ``checkpoint-10`` with a fresh adapter and
    no weight load, and saves over ``checkpoint-15`` and ``-20`` (then ``-25``, ``-30``). Its
    trainer_state.json files record ``max_steps`` 30 and ``num_train_epochs`` 4 (were 20 and 3); their
    ``log_history`` is checkpoint-10's verbatim, then losses back near the first one. TensorBoard
    (``runs/``, one events file per process) and ``train.log`` are kept; tests remove them."""
    _hf_ow_base(dest)
    _run("hf_ow_fresh", dest, _hf_env(dest))


@builder("loss_hf_overwrite_fresh_same_args")
def build_loss_hf_overwrite_fresh_same_args(dest: Path) -> None:
    """As ``loss_hf_overwrite_fresh`` with the same ``max_steps=20``: the run configuration does not
    change, only the loss shows the restart (``checkpoint-15`` and ``-20`` overwritten)."""
    _hf_ow_base(dest)
    _run("hf_ow_fresh_same", dest, _hf_env(dest))


@builder("loss_hf_overwrite_ok")
def build_loss_hf_overwrite_ok(dest: Path) -> None:
    """As ``loss_hf_overwrite_fresh`` but the second process resumes correctly (``max_steps=30``): an
    honest resume from ``checkpoint-10`` that saves over ``-15`` and ``-20``."""
    _hf_ow_base(dest)
    _run("hf_ow_ok", dest, _hf_env(dest))


@builder("loss_hf_resume_batch16")
def build_loss_hf_resume_batch16(dest: Path) -> None:
    """Interrupted at 25, resumed correctly from ``checkpoint-20`` with ``per_device_train_batch_size``
    16 instead of 8: ``num_train_epochs`` in trainer_state.json goes from 5 to 10 (``train_batch_size``
    stays 8: the Trainer keeps the loaded state's value)."""
    _hf_base(dest)
    _run("hf_resume_batch16", dest, _hf_env(dest))


@builder("loss_hf_resume_alpha16")
def build_loss_hf_resume_alpha16(dest: Path) -> None:
    """Interrupted at 25, resumed from ``checkpoint-20`` by a script that re-creates the adapter with
    ``lora_alpha=16`` (was 8) before the correct ``resume_from_checkpoint`` call: ``checkpoint-30`` and
    ``-40`` hold an ``adapter_config.json`` with ``lora_alpha`` 16."""
    _hf_base(dest)
    _run("hf_resume_alpha16", dest, _hf_env(dest))


@builder("loss_hf_restarts")
def build_loss_hf_restarts(dest: Path) -> None:
    """One healthy process of 40 steps with LR warm-up (3 steps) and ``cosine_with_restarts`` (4 hard
    restarts: the LR jumps back to its peak every 9-10 steps), at a hot peak LR of 6e-2: the loss
    overshoots to about 5.5 (above the first loss, 1.92) at the end of the warm-up, and doubles at the
    restarts (0.67 -> 1.34 at step 17, 0.53 -> 1.14 at step 26) without going back to the start."""
    _run("hf_restarts", dest, _hf_env(dest))


@builder("loss_hf_eval_spike")
def build_loss_hf_eval_spike(dest: Path) -> None:
    """One healthy process of 40 steps evaluated every 5 steps on another task (stride-1 counting):
    ``eval_loss`` climbs while the train loss falls; both in ``log_history`` and TensorBoard
    (``eval/loss``)."""
    _run("hf_eval_spike", dest, _hf_env(dest))


@builder("loss_lightning_resume")
def build_loss_lightning_resume(dest: Path) -> None:
    """Lightning 2.6 ``CSVLogger`` run (tiny MLP fitting ``tanh(x @ w)`` on 64 points, batch 16 in a fixed
    order, Adam lr 1e-2, ``log_every_n_steps=1``; steps are logged 0-based):
    the first process stops after step 25 with ``ModelCheckpoint`` files at steps 10 and 20
    (``checkpoints/step=10.ckpt``...); a second process resumes with ``ckpt_path=...step=20.ckpt`` to
    step 40. ``lightning_logs/version_0/metrics.csv`` and ``version_1/metrics.csv`` (one per process)."""
    _run("lightning", dest)
    _run("lightning_resume", dest)


@builder("loss_lightning_resume_fresh")
def build_loss_lightning_resume_fresh(dest: Path) -> None:
    """As ``loss_lightning_resume`` but the resumed process drops the model weights from the loaded
    checkpoint (``on_load_checkpoint`` empties ``state_dict``; ``strict_loading=False``): the step counter
    and optimizer state continue, the model is freshly initialised."""
    _run("lightning", dest)
    _run("lightning_resume_fresh", dest)


# ---------------------------------------------------------------------------------------------------
# child side (imports the frameworks)


def _log_callback(log_path: Path):
    from transformers import TrainerCallback

    class TextLog(TrainerCallback):
        """Append HF console lines (PrinterCallback's formatting plus the step) and noise to a log."""

        def on_train_begin(self, args, state, control, **kwargs):
            with open(log_path, "a") as f:
                f.write(f"INFO trainer: ***** Running training ***** max_steps={args.max_steps}\n")

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = {k: v for k, v in (logs or {}).items() if k != "total_flos"}
            shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in logs.items()}
            shown["step"] = state.global_step
            with open(log_path, "a") as f:
                f.write(f"{shown}\n")
                f.write(f"DEBUG dataloader: batch {state.global_step} fetched in 0.001s\n")

    return TextLog()


def _preempt_callback(at: int):
    from transformers import TrainerCallback

    class Preempt(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.global_step >= at and "loss" in (logs or {}):
                control.should_training_stop = True

    return Preempt()


# Each Hugging Face process of a builder, by variant: what differs from the common run shape (module
# docstring). ``resume``: the checkpoint step it resumes from; ``forgetful``: a fresh adapter and a Trainer
# whose ``_load_from_checkpoint`` loads nothing; ``preempt``: stop after logging this step.
HF_PROCESSES: dict[str, dict] = {
    "hf_base": dict(preempt=PREEMPT_AT),
    "hf_resume_ok": dict(resume=RESUME_FROM),
    "hf_resume_fresh": dict(resume=RESUME_FROM, forgetful=True),
    # issue 10 section 3: a full run of 20 steps saving every 5, then a second process that resumes from
    # checkpoint-10 and saves over checkpoint-15 and -20
    "hf_ow_base": dict(max_steps=20, save_steps=5),
    "hf_ow_fresh": dict(max_steps=30, save_steps=5, resume=10, forgetful=True),
    "hf_ow_fresh_same": dict(max_steps=20, save_steps=5, resume=10, forgetful=True),
    "hf_ow_ok": dict(max_steps=30, save_steps=5, resume=10),
    # healthy runs the new signals must not alert on
    "hf_resume_batch16": dict(resume=RESUME_FROM, batch=16),
    "hf_restarts": dict(scheduler="cosine_with_restarts", scheduler_kwargs={"num_cycles": 4}, warmup=3,
                        lr=6e-2),
    "hf_eval_spike": dict(eval_steps=5),
    # a resume whose script re-creates the adapter with another lora_alpha (and loads the trained weights)
    "hf_resume_alpha16": dict(resume=RESUME_FROM, lora_alpha=16),
}


def _child_hf(variant: str, out: Path) -> None:
    from transformers import Trainer, TrainingArguments, set_seed
    from transformers.utils import logging as hf_logging

    from tests.builders.hf import _dataset, _lora, _pretrained_gpt2

    spec = HF_PROCESSES[variant]
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    set_seed(0)
    base = _pretrained_gpt2()
    if spec.get("forgetful"):
        set_seed(1)  # a different fresh adapter (lora_A random, lora_B zero) from the trained one
    model = _lora(base, lora_alpha=spec.get("lora_alpha", 8))
    evals: dict = {}
    if spec.get("eval_steps"):
        # evaluated on stride-1 counting while training on stride 2: eval_loss climbs as the adapter
        # specialises, while the train loss falls (an eval spike, not a train-loss jump)
        evals = dict(eval_strategy="steps", eval_steps=spec["eval_steps"], per_device_eval_batch_size=16)
    args = TrainingArguments(
        output_dir=str(out), max_steps=spec.get("max_steps", MAX_STEPS),
        per_device_train_batch_size=spec.get("batch", 8), learning_rate=spec.get("lr", 1e-2),
        warmup_steps=spec.get("warmup", 0), lr_scheduler_type=spec.get("scheduler", "linear"),
        lr_scheduler_kwargs=spec.get("scheduler_kwargs", {}), logging_steps=1, save_strategy="steps",
        save_steps=spec.get("save_steps", SAVE_STEPS), report_to=["tensorboard"], use_cpu=True, seed=0,
        disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False, **evals,
    )
    callbacks = [_log_callback(out / "train.log")]
    if spec.get("preempt"):
        callbacks.append(_preempt_callback(spec["preempt"]))
    cls = Trainer
    if spec.get("forgetful"):
        class ForgetfulTrainer(Trainer):
            def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
                pass  # the bug: weights are never loaded; everything else is restored

        cls = ForgetfulTrainer
    trainer = cls(model=model, args=args, train_dataset=_dataset(64, seed=1, stride=2), callbacks=callbacks,
                  eval_dataset=_dataset(16, seed=2, stride=1) if evals else None)
    if spec.get("resume") is None:
        trainer.train()
    else:
        trainer.train(resume_from_checkpoint=str(out / f"checkpoint-{spec['resume']}"))


def _child_stub(out: Path) -> None:
    import os

    import torch

    ckpt = out / f"checkpoint-{RESUME_FROM}"
    torch.save({}, ckpt / "pytorch_model.bin")
    marker = (ckpt / "trainer_state.json").stat().st_mtime  # dated as if written during the save, before
    os.utime(ckpt / "pytorch_model.bin", (marker - 1, marker - 1))  # its commit marker (transformers#24551)


def _child_lightning(variant: str, out: Path) -> None:
    import logging

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    L.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 8, generator=g)
    y = torch.tanh(x @ torch.randn(8, 1, generator=g))  # a learnable target: the loss falls steadily
    data = torch.utils.data.TensorDataset(x, y)

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
            if variant == "lightning_resume_fresh":
                self.strict_loading = False

        def training_step(self, batch, _):
            loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
            self.log("train_loss", loss, on_step=True, on_epoch=False)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

        def on_load_checkpoint(self, checkpoint):
            if variant == "lightning_resume_fresh":
                checkpoint["state_dict"] = {}  # the bug: trainer state restored, weights dropped

    class Preempt(Callback):
        def on_train_batch_end(self, trainer, *a, **k):
            if trainer.global_step >= PREEMPT_AT:
                trainer.should_stop = True

    ckpt = ModelCheckpoint(dirpath=out / "checkpoints", filename="{step}", every_n_train_steps=SAVE_STEPS,
                           save_top_k=-1)
    callbacks = [ckpt] + ([Preempt()] if variant == "lightning" else [])
    trainer = L.Trainer(max_steps=MAX_STEPS, logger=CSVLogger(str(out)), callbacks=callbacks,
                        log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", devices=1)
    loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=False)
    path = None if variant == "lightning" else str(out / "checkpoints" / f"step={RESUME_FROM}.ckpt")
    trainer.fit(Net(), loader, ckpt_path=path)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m tests.builders.loss VARIANT PATH")
    _variant, _path = sys.argv[1], Path(sys.argv[2])
    if _variant == "stub":
        _child_stub(_path)
    elif _variant.startswith("hf_"):
        _child_hf(_variant, _path)
    else:
        _child_lightning(_variant, _path)
