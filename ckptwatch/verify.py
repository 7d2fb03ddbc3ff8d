"""``ckptwatch verify PATH``: judge one checkpoint, with its run as context.

A checkpoint cannot always be judged alone: its expected rank count may come only from its siblings.
So the run that contains PATH is discovered from PATH's parent and judged as usual, and the verdict on
PATH is picked out. A path no layout claims as a checkpoint (a loose weights file, a DCP dir named
oddly) is judged on its own by the layout that recognises its contents.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ckptwatch.discover import discover
from ckptwatch.engine import RootReport, judge_run
from ckptwatch.errors import UsageError
from ckptwatch.layouts.base import Candidate, CheckOptions, RunFound
from ckptwatch.model import RunReport, Verdict
from ckptwatch.resume import run_report
from ckptwatch.scan import display


@dataclass
class VerifyResult:
    verdict: Verdict
    run: RunReport | None

    def as_root_report(self) -> RootReport:
        root, layout = (self.run.root, self.run.layout) if self.run else (os.path.dirname(self.verdict.path),
                                                                          self.verdict.layout)
        only = run_report(root, layout, (self.verdict,))
        return RootReport(root, [only], [])


def verify_path(path: str, opts: CheckOptions, now: float, *, layout: str = "auto") -> VerifyResult:
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    for run in discover(parent, layout=layout, max_depth=0).runs:
        if any(os.path.normpath(c.path) == path for c in run.candidates):
            report = judge_run(run, opts, now, only=path)
            verdict = next(v for v in report.checkpoints if os.path.normpath(v.path) == display(path))
            return VerifyResult(verdict, report)
    # Not a checkpoint of any run seen from its parent: let the layouts look inside it.
    if os.path.isdir(path):
        for run in discover(path, layout=layout, max_depth=0).runs:
            if os.path.normpath(run.root) == path and len(run.candidates) == 1:
                report = judge_run(run, opts, now)
                return VerifyResult(report.checkpoints[0], report)
    from ckptwatch.layouts.generic import Generic

    if os.path.isfile(path):
        run = RunFound(parent, Generic(), [Candidate(path, None, "generic")])
        report = judge_run(run, opts, now)
        return VerifyResult(report.checkpoints[0], report)
    raise UsageError(f"{display(path)} is not a checkpoint ckptwatch recognises (no known layout); "
                     f"try `ckptwatch once {display(parent)}` to see what is there")
