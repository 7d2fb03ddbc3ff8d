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


def _child_main(dest: Path) -> None:
    import warnings

    import torch
    from lightning.pytorch import LightningModule, Trainer, seed_everything
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    seed_everything(0, verbose=False)

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

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    y = torch.tanh(x @ torch.randn(8, 1, generator=g)) + 0.05 * torch.randn(64, 1, generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True, generator=g)

    trainer = Trainer(
        default_root_dir=str(dest),
        accelerator="cpu",
        devices=1,
        max_steps=MAX_STEPS,
        logger=CSVLogger(save_dir=str(dest), name="lightning_logs"),
        callbacks=[
            ModelCheckpoint(dirpath=str(dest / "checkpoints"), every_n_train_steps=EVERY_N_STEPS,
                            save_top_k=-1, save_last="link"),
            LearningRateMonitor(logging_interval="step"),
        ],
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=True,
    )
    trainer.fit(TinyRegressor(), train_dataloaders=loader)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m tests.builders.lightning DEST")
    _child_main(Path(sys.argv[1]))
