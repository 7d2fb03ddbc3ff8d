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
"""

from ckptwatch.losswatch.report import LossReport, Resume, SegmentSummary
from ckptwatch.losswatch.settings import LossSettings, parse_loss_settings
from ckptwatch.losswatch.watcher import RunLossWatcher, analyse_run


def plot_history(report: LossReport, path: str) -> None:
    """Write a PNG of the report's loss history (see ``ckptwatch.losswatch.plot``)."""
    from ckptwatch.losswatch.plot import plot_history as _plot

    _plot(report, path)


__all__ = ["LossReport", "LossSettings", "Resume", "RunLossWatcher", "SegmentSummary", "analyse_run",
           "parse_loss_settings", "plot_history"]
