"""``python -m tests.lightning_resume_child CKPT OUT``: resume Lightning 2.6.6 from a ``.ckpt`` file.

The ``lightning`` builder's model (``tests/builders/lightning.tiny_regressor``: a checkpoint only loads
into the same module), ``Trainer.fit(ckpt_path=CKPT)`` for one more
step; OUT gets ``{"start_step", "params"}``: the global step training resumed at, and the sum of every
parameter as loaded (before the extra step), to compare two resumes.
"""

from __future__ import annotations

import json
import sys
import warnings


def main(ckpt: str, out: str) -> None:
    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything
    from torch.utils.data import DataLoader, TensorDataset

    warnings.filterwarnings("ignore")
    seed_everything(0, verbose=False)

    from tests.builders.lightning import tiny_regressor

    TinyRegressor = tiny_regressor()  # the builder's class: the checkpoint loads only into it

    seen: dict[str, float] = {}

    class Record(Callback):
        def on_train_start(self, trainer, pl_module):
            seen["start_step"] = trainer.global_step
            seen["params"] = float(sum(p.detach().sum() for p in pl_module.parameters()))

    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    y = torch.randn(64, 1, generator=g)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=9, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()])
    trainer.fit(TinyRegressor(), train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=4),
                ckpt_path=ckpt)
    with open(out, "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
