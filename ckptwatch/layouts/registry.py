"""The ordered list of layouts: first match wins (layouts.md §4).

Order matters where layouts nest: a Trainer checkpoint may hold a DeepSpeed tag dir or FSDP DCP
dirs, so the Trainer layout is asked first and consumes its checkpoints whole. ``generic`` is last:
it claims loose weight files only where no framework layout recognised the directory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ckptwatch.errors import UsageError

if TYPE_CHECKING:  # NAMES is read by the command line's parser, which imports no layout (cli.build_parser)
    from ckptwatch.layouts.base import Layout


def _all() -> list[Layout]:
    from ckptwatch.layouts.dcp import DcpRun
    from ckptwatch.layouts.deepspeed import DeepSpeed
    from ckptwatch.layouts.generic import Generic
    from ckptwatch.layouts.hf_trainer import HfTrainer
    from ckptwatch.layouts.lightning import Lightning
    from ckptwatch.layouts.megatron import Megatron
    from ckptwatch.layouts.mindspore import MindSpore
    from ckptwatch.layouts.nemo import Nemo
    from ckptwatch.layouts.nvrx import NvrxLocal
    from ckptwatch.layouts.orbax import Orbax

    return [HfTrainer(), DeepSpeed(), Megatron(), Nemo(), MindSpore(), Orbax(), NvrxLocal(), DcpRun(),
            Lightning(), Generic()]


NAMES = ("hf-trainer", "deepspeed", "megatron", "nemo", "mindspore", "orbax", "nvrx-local", "dcp",
         "lightning", "generic")


def layouts(choice: str = "auto") -> list[Layout]:
    """All layouts in order, or just the one the user forced (config ``layout``, ``--layout``)."""
    every = _all()
    if choice == "auto":
        return every
    chosen = [lay for lay in every if lay.name == choice]
    if not chosen:
        raise UsageError(f"unknown layout {choice!r}; choose one of: auto, {', '.join(NAMES)}")
    return chosen
