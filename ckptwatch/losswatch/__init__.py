"""Loss watch: catch a resume that quietly restarted training.

A run resumes from a checkpoint, the step counter continues, but the model is not the trained one (a stub
``pytorch_model.bin`` loaded instead of the adapter; a fresh adapter created before loading). The loss
shows it: 0.088 before the interruption, 0.34 after. This package reads the run's loss from whatever the
training wrote (``trainer_state.json``, TensorBoard, ``metrics.csv``, JSON lines, text logs), finds the
resumes, and judges each with a pure rule (``rule.judge``).

Modules: ``points`` (types, bounded history), ``settings`` (``[watch.loss]``), ``parse`` (pure parsers),
``tail`` (incremental file reads), ``sources`` (discovery and readers), ``rule`` (the jump rule),
``watcher`` (resume detection; ``RunLossWatcher`` and ``analyse_run``), ``report`` (results),
``plot`` (matplotlib, lazily), ``cli`` (``ckptwatch loss``).

The names below are imported on first use, not with the package (as ``ckptwatch.config`` does): the
command line's parser imports ``losswatch.cli`` for the ``loss`` flags, and ``ckptwatch --help`` must
not load the sources and the watcher to print them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ckptwatch.losswatch.report import LossReport, Resume, SegmentSummary
    from ckptwatch.losswatch.settings import LossSettings, parse_loss_settings
    from ckptwatch.losswatch.watcher import RunLossWatcher, analyse_run

_HOME = {  # name -> the module that defines it
    "LossReport": "report", "Resume": "report", "SegmentSummary": "report",
    "LossSettings": "settings", "parse_loss_settings": "settings",
    "RunLossWatcher": "watcher", "analyse_run": "watcher",
}


def plot_history(report: LossReport, path: str) -> None:
    """Write a PNG of the report's loss history (see ``ckptwatch.losswatch.plot``)."""
    from ckptwatch.losswatch.plot import plot_history as _plot

    _plot(report, path)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


__all__ = ["LossReport", "LossSettings", "Resume", "RunLossWatcher", "SegmentSummary", "analyse_run",
           "parse_loss_settings", "plot_history"]
