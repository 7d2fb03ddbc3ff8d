"""PyTorch Lightning 2.6.6 training output, written by the real ``lightning.pytorch.Trainer``.

The run happens in a child process (``python -m tests.builders.lightning <dest>``) so the pytest process
never imports lightning. This module is ``tests.builders.lightning``; ``import lightning`` inside it is an
absolute import and resolves to the installed package (the child runs with the repo root, not this
directory, as ``sys.path[0]``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.builders import builder
from tests.builders.hf import _child_env, run_child

MAX_STEPS = 8
EVERY_N_STEPS = 4


@builder("lightning")
def build_lightning(dest: Path) -> None:
    """Lightning Trainer on a tiny MLP (CPU, ``max_steps=8``, 16 batches per epoch, Adam + StepLR,
    ``save_hyperparameters()``), ``ModelCheckpoint(dirpath=<dest>/checkpoints, every_n_train_steps=4,
    save_top_k=-1, save_last="link")`` and ``CSVLogger(<dest>, name="lightning_logs")``. Output::

        checkpoints/epoch=0-step=4.ckpt
        checkpoints/epoch=0-step=8.ckpt
        checkpoints/last.ckpt -> epoch=0-step=8.ckpt     (relative symlink)
        lightning_logs/version_0/hparams.yaml
        lightning_logs/version_0/metrics.csv             (train_loss for steps 0..7, lr-Adam)
    """
    run_child([sys.executable, "-m", "tests.builders.lightning", str(dest)], what="lightning",
              env=_child_env())


@builder("lightning_top_k")
def build_lightning_top_k(dest: Path) -> None:
    """The same model and data with validation every 2 steps (``val_check_interval=2``, 2 batches) and
    ``ModelCheckpoint(dirpath=<dest>/checkpoints, monitor="val_loss", mode="min", save_top_k=2,
    filename="{epoch}-{step}-{val_loss:.4f}", save_last=True)``: after 8 steps the two best of the saves
    at steps 2, 4, 6 and 8 survive, named ``epoch=0-step=<N>-val_loss=<v>.ckpt``, and ``last.ckpt`` is a
    separate file (``save_last=True`` writes a copy, not a link). The callback's own record of the run,
    taken after ``fit`` (``best_model_path``, ``best_k_models`` as {basename: float}, the ``val_loss`` of
    every validation by step), is written to ``<dest>/callback_truth.json`` for the tests to compare with.
    """
    run_child([sys.executable, "-m", "tests.builders.lightning", str(dest), "top_k"], what="lightning top_k",
              env=_child_env())


def tiny_regressor(val_losses: dict[int, float] | None = None) -> type:
    """The builders' LightningModule (a tiny MLP, Adam + StepLR, ``save_hyperparameters``), as a class
    defined on call (torch and lightning are imported by the child processes only). A checkpoint loads
    only into the same module, so ``tests/lightning_resume_child.py`` resumes with this class too.
    ``val_losses``: filled with the validation loss by global step."""
    import torch
    from lightning.pytorch import LightningModule

    val_losses = {} if val_losses is None else val_losses

    class TinyRegressor(LightningModule):
        def __init__(self, hidden: int = 16, lr: float = 3e-2) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("val_loss", loss)
            return loss

        def on_validation_epoch_end(self):
            if not self.trainer.sanity_checking and "val_loss" in self.trainer.callback_metrics:
                val_losses[self.global_step] = float(self.trainer.callback_metrics["val_loss"])

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return TinyRegressor


def _child_main(dest: Path, variant: str = "") -> None:
    import json
    import os
    import warnings

    import torch
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    seed_everything(0, verbose=False)

    val_losses: dict[int, float] = {}
    TinyRegressor = tiny_regressor(val_losses)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    y = torch.tanh(x @ torch.randn(8, 1, generator=g)) + 0.05 * torch.randn(64, 1, generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True, generator=g)

    top_k = variant == "top_k"
    if top_k:
        ckpt = ModelCheckpoint(dirpath=str(dest / "checkpoints"), monitor="val_loss", mode="min",
                               save_top_k=2, filename="{epoch}-{step}-{val_loss:.4f}", save_last=True)
        extra = dict(val_check_interval=2, limit_val_batches=2, num_sanity_val_steps=0)
    else:
        ckpt = ModelCheckpoint(dirpath=str(dest / "checkpoints"), every_n_train_steps=EVERY_N_STEPS,
                               save_top_k=-1, save_last="link")
        extra = {}
    trainer = Trainer(
        default_root_dir=str(dest),
        accelerator="cpu",
        devices=1,
        max_steps=MAX_STEPS,
        logger=CSVLogger(save_dir=str(dest), name="lightning_logs"),
        callbacks=[ckpt, LearningRateMonitor(logging_interval="step")],
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=True,
        **extra,
    )
    trainer.fit(TinyRegressor(), train_dataloaders=loader, val_dataloaders=loader if top_k else None)
    if top_k:
        truth = {"best_model_path": os.path.basename(ckpt.best_model_path),
                 "best_k_models": {os.path.basename(p): float(v) for p, v in ckpt.best_k_models.items()},
                 "val_loss_by_step": {str(s): v for s, v in sorted(val_losses.items())}}
        (dest / "callback_truth.json").write_text(json.dumps(truth, indent=1))


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit("usage: python -m tests.builders.lightning DEST [top_k]")
    _child_main(Path(sys.argv[1]), *sys.argv[2:])
