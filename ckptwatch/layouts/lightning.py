"""PyTorch Lightning ``.ckpt`` files and ``last.ckpt`` (§3.4).

A plain ``.ckpt`` has no commit marker: it is complete when it is a whole torch zip (the central
directory is written last) whose pickle holds the Lightning keys. ``last.ckpt`` may be a relative
symlink to the newest top-k file (``save_last="link"``): it is a pointer, judged through its target.
Lightning resumes ``ckpt_path="last"`` from the newest ``last*.ckpt`` with no integrity check.
"""

from __future__ import annotations

import os
import re

from ckptwatch.filecheck import check_file, sniff
from ckptwatch.formats._show import show_int
from ckptwatch.layouts.base import Candidate, CheckOptions, Judgement, RunFound, pickled_step, pointer_hazard
from ckptwatch.layouts.dcp import step_from_name
from ckptwatch.model import Hazard, Problem, Verdict
from ckptwatch.scan import Entry, display
from ckptwatch.vocabulary import file_ok

STEP_IN_NAME = re.compile(r"step=(\d+)")
LAST = re.compile(r"^last(-v?\d+)?\.ckpt\Z|-last\.ckpt\Z")


class Lightning:
    name = "lightning"

    def find(self, directory: str, entries: list[Entry]) -> RunFound | None:
        cands: list[Candidate] = []
        links: list[str] = []
        for e in entries:
            if not e.name.endswith(".ckpt"):
                continue
            if e.is_symlink:
                links.append(e.path)
                continue
            if e.is_file and sniff(e.path)[0] in ("torch", "empty"):
                step = _step(e.name)
                cands.append(Candidate(e.path, step, self.name, order=(step if step is not None else -1,
                                                                         not LAST.search(e.name), e.name)))
        if not cands and not links:
            return None
        return RunFound(directory, self, cands, data={"links": links})

    def judge(self, cand: Candidate, opts: CheckOptions) -> Judgement:
        from ckptwatch.formats.pickle_stub import get

        fc = check_file(cand.path, opts, need_object=True)
        j = Judgement(list(fc.problems))
        obj = fc.facts.get("object")
        if obj is None or not file_ok(fc):
            return j
        shown = display(cand.path)
        if get(obj, "state_dict") is None:
            j.problems.append(Problem("no_weights", shown, f"{shown} holds no state_dict"))
        raw_gs = get(obj, "global_step")
        gs = pickled_step(raw_gs)
        if isinstance(raw_gs, int) and not isinstance(raw_gs, bool) and gs is None:
            j.problems.append(Problem("bad_pickle", shown, f"{shown} holds global_step {show_int(raw_gs)}, "
                                      "not a step a trainer writes"))
        elif gs is not None:
            j.step = gs
            named = STEP_IN_NAME.search(os.path.basename(cand.path))
            if named and int(named.group(1)) != gs:
                j.problems.append(Problem("step_mismatch", shown, f"{shown} is named step={named.group(1)} "
                                          f"but holds global_step {gs}"))
        return j

    def run_findings(self, run: RunFound, verdicts: list[Verdict],
                     latest_resumable: Verdict | None) -> tuple[list[Problem], list[Hazard]]:
        hazards: list[Hazard] = []
        by_path = {os.path.realpath(v.path): v for v in verdicts}
        for link in run.data.get("links", []):
            target = os.path.realpath(link)
            if not os.path.exists(target):
                continue  # the scan reports dangling links
            h = pointer_hazard(link, os.readlink(link), by_path.get(target), latest_resumable)
            if h and by_path.get(target) is not None:
                hazards.append(h)
        return [], hazards


def _step(name: str) -> int | None:
    m = STEP_IN_NAME.search(name)
    if m:
        return int(m.group(1))
    return None if LAST.search(name) else step_from_name(name)

