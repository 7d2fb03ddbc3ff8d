"""Write a realistic training output dir for the README's demo, with real transformers training.

Two runs of a tiny GPT-2 (built from a config; nothing is downloaded):
- ``gpt2-full/``: full fine-tuning, a checkpoint every 10 steps; the process is killed (SIGKILL-like
  ``os._exit(137)``, as a preemption or the OOM killer would) in the middle of the step-30 save,
  after the weights were written and before the optimizer state and ``trainer_state.json``.
- ``gpt2-lora/``: a PEFT LoRA run; afterwards a near-empty ``pytorch_model.bin`` is written beside
  the adapter of the newest checkpoint, the situation of transformers#24551 (seed report 1) in which
  a resume silently loads the stub instead of the trained adapter.
- ``gpt2-lora-resumed/``: what happens next. A LoRA run (TensorBoard on, a text log) is preempted after
  step 25; a stub ``pytorch_model.bin`` lands in ``checkpoint-20``; the run is resumed the correct way
  (``trainer.train(resume_from_checkpoint=...)``) and the real Trainer loads the stub instead of the
  adapter: the loss jumps back to where training started. This run is made by the same child code the
  tests use (``tests/builders/loss.py``), so the demo and the tests show the same thing.

Usage: python examples/make_demo_runs.py OUTPUT_DIR
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def train(out: Path, *, lora: bool, kill_at_save: int | None) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=128, n_positions=64))
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn"],
                                                 task_type="CAUSAL_LM"))

    class Repeating(torch.utils.data.Dataset):
        """A learnable sequence task: the loss drops quickly, as a real run's would."""

        def __len__(self) -> int:
            return 256

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            ids = (torch.arange(32) * 3 + i % 7) % 128
            return {"input_ids": ids, "labels": ids}

    args = TrainingArguments(output_dir=str(out), max_steps=30, save_steps=10, logging_steps=5,
                             per_device_train_batch_size=8, learning_rate=3e-3 if lora else 1e-3,
                             report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=Repeating())
    if kill_at_save is not None:
        real = trainer._save_optimizer_and_scheduler

        def dying_save(output_dir: str) -> None:
            if output_dir.endswith(f"checkpoint-{kill_at_save}"):
                print(f"simulated preemption: killed while saving {output_dir}", flush=True)
                os._exit(137)
            real(output_dir)

        trainer._save_optimizer_and_scheduler = dying_save
    trainer.train()


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output").resolve()
    if len(sys.argv) > 2:  # child mode: one training run
        train(root, lora=sys.argv[2] == "lora", kill_at_save=int(sys.argv[3]) if len(sys.argv) > 3 else None)
        return 0
    root.mkdir(parents=True, exist_ok=True)
    for name, mode, kill in (("gpt2-full", "full", "30"), ("gpt2-lora", "lora", None)):
        out = root / name
        if out.exists():
            print(f"{out} exists; keeping it")
            continue
        argv = [sys.executable, __file__, str(out), mode, *([kill] if kill else [])]
        print(f"training {name} ...", flush=True)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if done.returncode not in (0, 137):
            sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
            return done.returncode
        if done.returncode == 137:
            print(f"  {name}: the trainer process died with exit 137 during a save, as intended")
    resumed = root / "gpt2-lora-resumed"
    if resumed.exists():
        print(f"{resumed} exists; keeping it")
    else:
        print("training gpt2-lora-resumed (preempted at step 25, stub put in checkpoint-20, resumed) ...",
              flush=True)
        resumed.mkdir()
        repo = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": str(repo), "TENSORBOARD_LOGGING_DIR": str(resumed / "runs"),
               "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
        for step in ("hf_base", "stub", "hf_resume_ok"):
            done = subprocess.run([sys.executable, "-m", "tests.builders.loss", step, str(resumed)], cwd=repo,
                                  env=env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
                return done.returncode

    import torch

    newest = max((root / "gpt2-lora").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    stub = newest / "pytorch_model.bin"
    if not stub.exists():
        torch.save({}, stub)  # a near-empty state dict, like the 888-byte file of the report
        marker = (newest / "trainer_state.json").stat().st_mtime
        os.utime(stub, (marker - 1, marker - 1))  # as if written during the save, before its last file
        print(f"  gpt2-lora: wrote a {stub.stat().st_size}-byte stub {stub.name} beside the adapter in {newest.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
