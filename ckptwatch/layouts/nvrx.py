"""NVIDIA Resiliency Extension local checkpoints: ``<root>/<rank>/iter_<7 digits>_<rank>_local.pt``.

Each rank writes ``iter_..._local.dirty.pt`` and renames it to ``iter_..._local.pt`` when
``torch.save`` returned; an iteration is complete iff every rank holds its file
(``BaseCheckpointManager.find_latest``). A rank dir may also hold other ranks' replicas, so a rank
counts as present when its own file exists in any rank dir. Sources: docs/layouts-notes.md §3.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

from ckptwatch.filecheck import check_file
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

LOCAL = re.compile(r"^iter_(\d+)_(\d+)_local\.pt\Z")
DIRTY = re.compile(r"^iter_(\d+)_(\d+)_local\.dirty\.pt\Z")
RANK_DIR = re.compile(r"^\d+\Z")


class NvrxLocal(NoRunFindings):
    name = "nvrx-local"

    def find(self, directory: str, entries: list[Entry]) -> RunFound | None:
        files: dict[int, dict[int, str]] = defaultdict(dict)
        dirty: dict[int, dict[int, str]] = defaultdict(dict)
        rank_dirs = []
        for e in entries:
            if not (e.is_dir and not e.is_symlink and RANK_DIR.match(e.name)):
                continue
            names, _ = listdir_names(e.path)
            hits = False
            for n in names:
                if m := LOCAL.match(n):
                    files[int(m.group(1))].setdefault(int(m.group(2)), os.path.join(e.path, n))
                    hits = True
                elif m := DIRTY.match(n):
                    dirty[int(m.group(1))][int(m.group(2))] = os.path.join(e.path, n)
                    hits = True
            if hits:
                rank_dirs.append(e.path)
        if not rank_dirs:
            return None
        cands = [Candidate(os.path.join(directory, "*", f"iter_{it:07d}_*_local.pt"), it, self.name,
                           data={"files": files.get(it, {}), "dirty": dirty.get(it, {})},
                           members=tuple(sorted([*files.get(it, {}).values(), *dirty.get(it, {}).values()])))
                 for it in sorted(set(files) | set(dirty))]
        return RunFound(directory, self, cands, consumed=set(rank_dirs))

    def judge(self, cand: Candidate, opts: CheckOptions) -> Judgement:
        files: dict[int, str] = cand.data["files"]
        j = Judgement(present_ranks=tuple(sorted(files)))
        j.rank_file = RankFile("{r}/iter_" + f"{cand.step:07d}" + "_{r}_local.pt")
        for rank, marker in sorted(cand.data["dirty"].items()):
            j.problems.append(Problem("in_progress", display(marker), f"{display(marker)}: rank {rank} is "
                                      "writing this iteration (renamed to _local.pt when done)"))
        for _, path in sorted(files.items()):
            j.problems.extend(check_file(path, opts).problems)
        return j
