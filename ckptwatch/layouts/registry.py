"""The ordered list of layouts: first match wins (layouts.md §4).

Order matters where layouts nest: a Trainer checkpoint may hold a DeepSpeed tag dir or FSDP DCP
dirs, so the Trainer layout is asked first and consumes its checkpoints whole. ``generic`` is last:
it claims loose weight files only where no framework layout recognised the directory.

Each layout's module is imported the first time a walk asks it (``layouts`` is lazy): discovery stops
at the first layout that recognises a directory, so ``ckptwatch latest RUN`` on a Trainer run imports
the Trainer layout alone, not the nine others (their patterns and readers: ~4 ms of the command's
start-up, which bench/startup.py measures). A tree no early layout claims imports them all, in order.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ckptwatch.errors import UsageError

if TYPE_CHECKING:  # NAMES is read by the command line's parser, which imports no layout (cli.build_parser)
    from ckptwatch.layouts.base import Layout

# name -> (module under ckptwatch.layouts, class), in the order discovery asks them
_HOME = {"hf-trainer": ("hf_trainer", "HfTrainer"), "deepspeed": ("deepspeed", "DeepSpeed"),
         "megatron": ("megatron", "Megatron"), "nemo": ("nemo", "Nemo"),
         "mindspore": ("mindspore", "MindSpore"), "orbax": ("orbax", "Orbax"),
         "nvrx-local": ("nvrx", "NvrxLocal"), "dcp": ("dcp", "DcpRun"),
         "lightning": ("lightning", "Lightning"), "generic": ("generic", "Generic")}

NAMES = tuple(_HOME)


def _make(name: str) -> Layout:
    module, cls = _HOME[name]
    return getattr(importlib.import_module(f"ckptwatch.layouts.{module}"), cls)()


class Layouts:
    """Layouts in order, each imported and made when an iteration first reaches it, then kept.

    One instance per ``layouts()`` call, as a list of fresh instances was: a walk asks the same
    instance of a layout about every directory.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names
        self._made: list[Layout] = []

    def __iter__(self) -> Iterator[Layout]:
        for i, name in enumerate(self._names):
            if i == len(self._made):
                self._made.append(_make(name))
            yield self._made[i]

    def __len__(self) -> int:
        return len(self._names)


def layouts(choice: str = "auto") -> Layouts:
    """All layouts in order, or just the one the user forced (config ``layout``, ``--layout``)."""
    if choice == "auto":
        return Layouts(NAMES)
    if choice not in _HOME:
        raise UsageError(f"unknown layout {choice!r}; choose one of: auto, {', '.join(NAMES)}")
    return Layouts((choice,))
