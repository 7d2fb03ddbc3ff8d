"""A picture of a run's loss for a human deciding what to do: matplotlib (Agg), imported lazily.

Each writer segment gets its own colour (so "the second process" is visible at a glance), each resume a
vertical line at its first step, the reference window (before) and the post-resume window (after) are
shaded, and the title states the verdict. Only the CLI and tests import this module; the daemon never
draws.
"""

from __future__ import annotations

import math
import os

from ckptwatch.losswatch.report import LossReport


def plot_history(report: LossReport, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    try:
        # one family is enough for the picture: the one the resumes came from, else the first
        kinds = [r.source for r in report.resumes] or [s.source for s in report.segments]
        family = kinds[0] if kinds else None
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        n = 0
        for seg, hist in zip(report.segments, report.histories):
            if seg.source != family or not hist:
                continue
            xs = [p.step for p in hist if math.isfinite(p.value)]
            ys = [p.value for p in hist if math.isfinite(p.value)]
            label = f"{os.path.relpath(seg.writer.split(' (')[0], report.root)}"
            if " (" in seg.writer:
                label += " (" + seg.writer.split(" (", 1)[1]
            ax.plot(xs, ys, marker=".", markersize=3, linewidth=1, color=colours[n % len(colours)],
                    label=label)
            n += 1
        for r in report.resumes:
            if r.source != family:
                continue
            colour = "red" if r.alert else "grey"
            ax.axvline(r.at_step, color=colour, linestyle="--", linewidth=1)
            if r.before_steps:
                ax.axvspan(r.before_steps[0], r.before_steps[1], color="tab:blue", alpha=0.12)
            if r.after_steps:
                ax.axvspan(r.after_steps[0], r.after_steps[1], color=colour, alpha=0.15)
            if r.ratio is not None:
                ax.annotate(f"resume @ {r.at_step}: {r.ratio:.2f}x", xy=(r.at_step, r.after or 0),
                            fontsize=8, color=colour)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        title = report.verdict()
        alerts = [r for r in report.resumes if r.alert]
        if alerts:
            r = alerts[0]
            if r.before is not None and r.after is not None:
                title += f" (before {r.before:.3g}, after {r.after:.3g})"
        ax.set_title(title, color="red" if alerts else "black", fontsize=10)
        if n:
            ax.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
