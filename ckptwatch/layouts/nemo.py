"""NeMo 2 checkpoints: ``<name>/weights/`` (Megatron torch_dist) + ``<name>/context/`` (§3.3).

NeMo's commit protocol is a marker *file* beside the checkpoint, ``<name>-unfinished``, created by
rank 0 before the save (and before a deletion) and removed once every rank finished. A checkpoint is
complete iff that marker is absent and ``weights/`` passes the torch_dist rule.
"""

from __future__ import annotations

import os
import re

from ckptwatch.formats.jsonfile import read_json
from ckptwatch.layouts.base import (
    Candidate,
    CheckOptions,
    Judgement,
    NoRunFindings,
    RankFile,
    RunFound,
    listdir_names,
)
from ckptwatch.model import Problem
from ckptwatch.scan import Entry, display

STEP = re.compile(r"step=(\d+)")
UNFINISHED = "-unfinished"


class Nemo(NoRunFindings):
    name = "nemo"

    def find(self, directory: str, entries: list[Entry]) -> RunFound | None:
        markers = {e.name[: -len(UNFINISHED)] for e in entries if e.is_file and e.name.endswith(UNFINISHED)}
        cands = []
        for e in entries:
            if not e.is_dir or e.is_symlink:
                continue
            names, _ = listdir_names(e.path)
            base = e.name[:-5] if e.name.endswith(".ckpt") else e.name
            has_marker = base in markers or e.name in markers
            if ("weights" in names and "context" in names) or has_marker:
                m = STEP.search(e.name)
                cands.append(Candidate(e.path, int(m.group(1)) if m else None, self.name,
                                       order=(int(m.group(1)) if m else -1, e.name.endswith("-last"), e.name),
                                       data={"marker": os.path.join(directory, base + UNFINISHED)
                                             if has_marker else None}))
        if not cands:
            return None
        return RunFound(directory, self, cands, consumed={c.path for c in cands})

    def judge(self, cand: Candidate, opts: CheckOptions) -> Judgement:
        from ckptwatch.formats.dcp import check_dcp_dir

        j = Judgement()
        marker = cand.data.get("marker")
        if marker and os.path.exists(marker):
            j.problems.append(Problem("in_progress", display(marker), f"{display(marker)} exists: NeMo is "
                                      f"saving (or deleting) {display(cand.path)}"))
            return j
        weights = os.path.join(cand.path, "weights")
        names, problem = listdir_names(weights)
        if problem:
            j.problems.append(Problem("no_weights", display(weights), f"{display(weights)} is missing"))
            return j
        fc = check_dcp_dir(weights, deep=opts.deep)
        j.problems.extend(fc.problems)
        ranks = fc.facts.get("ranks_in_names")
        if ranks:
            j.present_ranks = tuple(ranks)
            j.rank_file = RankFile("weights/__{r}_0.distcp")
        meta = os.path.join(weights, "metadata.json")
        if "metadata.json" not in names:
            j.problems.append(Problem("no_commit_marker", display(meta), f"{display(meta)} is missing: "
                                      "written after all ranks saved, so this save did not finish"))
        else:
            _, problem = read_json(meta)
            if problem:
                j.problems.append(problem)
        context = os.path.join(cand.path, "context")
        if not os.path.isdir(context):
            j.problems.append(Problem("missing_file", display(context), f"{display(context)} is missing "
                                      "(NeMo needs io.json and the model config to restore the model)"))
        return j
