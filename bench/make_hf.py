"""Child process: one real Hugging Face Trainer checkpoint with sharded safetensors weights.

Run by ``bench/run.py`` (``python -m bench.make_hf DEST [MAX_SHARD_SIZE]``) so the benchmark process
never imports transformers or torch. It reuses the tiny GPT-2 and the synthetic data of
``tests/builders/hf.py`` (no download) and trains 2 steps with ``save_steps=2``; the Trainer writes
``DEST/checkpoint-2/`` itself: config.json, generation_config.json, model-0000i-of-000NN.safetensors
shards (``save_pretrained`` is bound with a small ``max_shard_size``, as the ``hf_sharded`` test builder
does), model.safetensors.index.json, training_args.bin, optimizer.pt, scheduler.pt, rng_state.pth and
trainer_state.json.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path


def main(dest: Path, max_shard: str) -> None:
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
                      WANDB_DISABLED="true", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false",
                      CUDA_VISIBLE_DEVICES="")
    from transformers import Trainer, TrainingArguments, set_seed
    from transformers.utils import logging as hf_logging

    from tests.builders.hf import _dataset, _tiny_gpt2

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    set_seed(0)
    model = _tiny_gpt2()
    model.save_pretrained = functools.partial(model.save_pretrained, max_shard_size=max_shard)
    args = TrainingArguments(output_dir=str(dest), max_steps=2, per_device_train_batch_size=8,
                             learning_rate=2e-2, logging_steps=1, save_strategy="steps", save_steps=2,
                             report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
                             dataloader_num_workers=0, dataloader_pin_memory=False)
    Trainer(model=model, args=args, train_dataset=_dataset(32, seed=1)).train()


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit("usage: python -m bench.make_hf DEST [MAX_SHARD_SIZE]")
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) == 3 else "14KB")
