"""NVIDIA Resiliency Extension local checkpoints: ``iter_<n>_<rank>_local.pt`` per rank.

Each rank writes its own file into node-local storage; a ``.dirty`` marker exists while a file is
being written (see docs/layouts-notes.md). An iteration is complete when every rank's file is present
and whole and no dirty marker remains.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

from ckptwatch.filecheck import check_file
from ckptwatch.layouts.base import CheckOptions, Candidate, Judgement, NoRunFindings, RunFound
from ckptwatch.model import Problem
from ckptwatch.scan import Entry, display

LOCAL = re.compile(r"^iter_(\d+)_(\d+)_local\.pt$")
DIRTY = re.compile(r"^iter_(\d+)_(\d+)_local\.pt\.dirty$")


class NvrxLocal(NoRunFindings):
    name = "nvrx-local"

    def find(self, directory: str, entries: list[Entry]) -> RunFound | None:
        files: dict[int, dict[int, str]] = defaultdict(dict)
        dirty: dict[int, dict[int, str]] = defaultdict(dict)
        for e in entries:
            if m := LOCAL.match(e.name):
                files[int(m.group(1))][int(m.group(2))] = e.path
            elif m := DIRTY.match(e.name):
                dirty[int(m.group(1))][int(m.group(2))] = e.path
        if not files and not dirty:
            return None
        cands = [Candidate(os.path.join(directory, f"iter_{it:07d}_*_local.pt"), it, self.name,
                           data={"files": files.get(it, {}), "dirty": dirty.get(it, {})},
                           members=tuple(sorted([*files.get(it, {}).values(), *dirty.get(it, {}).values()])))
                 for it in sorted(set(files) | set(dirty))]
        return RunFound(directory, self, cands)

    def judge(self, cand: Candidate, opts: CheckOptions) -> Judgement:
        files: dict[int, str] = cand.data["files"]
        j = Judgement(present_ranks=tuple(sorted(r for r in files if r not in cand.data["dirty"])))
        j.facts["describe_rank"] = lambda r: os.path.basename(cand.path).replace("*", str(r))
        for rank, marker in sorted(cand.data["dirty"].items()):
            j.problems.append(Problem("in_progress", display(marker), f"{display(marker)} marks rank {rank}'s file "
                                      "as being written"))
        for rank, path in sorted(files.items()):
            j.problems.extend(check_file(path, opts).problems)
        return j
