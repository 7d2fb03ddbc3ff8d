"""Plain torch.distributed.checkpoint directories (``.metadata`` + ``__<rank>_<n>.distcp``), §2.4.

``.metadata`` is written by the coordinator only after every rank's data files are done (tmp +
rename), so it is a strong commit marker; the format reader checks every storage entry it names. DCP
records no world size, so expected ranks come from the widest sibling checkpoint (every rank of stock
torch writes at least one file, possibly empty) or from config. Lightning's FSDP ``<name>.ckpt/`` dirs
are DCP dirs plus ``meta.pt``, written by rank 0 after the collective save: their commit marker.
"""

from __future__ import annotations

import os
import re

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

STEP_WORD = re.compile(r"(?:step|iter|iteration|global_step)[=_-]?(\d+)", re.IGNORECASE)
DIGITS = re.compile(r"(\d+)")


def step_from_name(name: str) -> int | None:
    """``step_100`` / ``epoch=1-step=200.ckpt`` / ``ckpt-300`` -> 100 / 200 / 300."""
    m = STEP_WORD.search(name)
    if m:
        return int(m.group(1))
    nums = DIGITS.findall(name)
    return int(nums[-1]) if nums else None


def looks_like_dcp(names: list[str]) -> bool:
    return (".metadata" in names or ".metadata.tmp" in names or any(n.endswith(".distcp") for n in names)
            or any(re.match(r"^__\d+\.metadata(\.tmp)?\Z", n) for n in names))


class DcpRun(NoRunFindings):
    name = "dcp"

    def find(self, directory: str, entries: list[Entry]) -> RunFound | None:
        if looks_like_dcp([e.name for e in entries]):  # pointed at one DCP dir itself
            return RunFound(os.path.dirname(directory) or directory, self,
                            [self._candidate(directory)], consumed=set())
        cands = [self._candidate(e.path) for e in entries
                 if e.is_dir and not e.is_symlink and looks_like_dcp(listdir_names(e.path)[0])]
        if not cands:
            return None
        return RunFound(directory, self, cands, consumed={c.path for c in cands})

    def _candidate(self, path: str) -> Candidate:
        name = os.path.basename(path)
        layout = "lightning" if name.endswith(".ckpt") else self.name
        return Candidate(path, step_from_name(name), layout)

    def judge(self, cand: Candidate, opts: CheckOptions) -> Judgement:
        from ckptwatch.formats.dcp import check_dcp_dir

        fc = check_dcp_dir(cand.path, deep=opts.deep)
        j = Judgement(list(fc.problems))
        ranks = fc.facts.get("ranks_in_names")
        if ranks is not None:
            j.present_ranks = tuple(ranks)
            j.rank_file = RankFile("__{r}_0.distcp")
        if cand.path.endswith(".ckpt"):
            meta = os.path.join(cand.path, "meta.pt")
            if os.path.exists(meta):
                j.problems.extend(check_file(meta, opts).problems)
            else:
                j.problems.append(Problem("no_commit_marker", display(meta), f"{display(meta)} is missing: "
                                          "Lightning writes it after the sharded save, so this save did not "
                                          "finish"))
        return j
