"""Loose weight files no framework layout claims: each file is its own checkpoint.

Only the file's own structure can be judged (safetensors header, torch zip or legacy file, MindSpore
protobuf); there are no ranks. The step is read from the name (``ckpt_step_20.pt`` -> 20).
"""

from __future__ import annotations

from ckptwatch.filecheck import check_file, sniff
from ckptwatch.layouts.base import Candidate, CheckOptions, Judgement, NoRunFindings, RunFound
from ckptwatch.layouts.dcp import step_from_name
from ckptwatch.model import Problem
from ckptwatch.scan import Entry, display

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


class Generic(NoRunFindings):
    name = "generic"

    def find(self, directory: str, entries: list[Entry]) -> RunFound | None:
        cands = [Candidate(e.path, step_from_name(e.name), self.name,
                           order=(step_from_name(e.name) or -1, e.name))
                 for e in entries if e.is_file and e.name.endswith(WEIGHT_SUFFIXES)]
        temps = [e for e in entries if e.is_file and _is_temp_of_weights(e.name)]
        if not cands and not temps:
            return None
        for t in temps:
            cands.append(Candidate(t.path, step_from_name(t.name), self.name,
                                   order=(step_from_name(t.name) or -1, t.name), data={"temp": True}))
        return RunFound(directory, self, cands)

    def judge(self, cand: Candidate, opts: CheckOptions) -> Judgement:
        if cand.data.get("temp"):
            return Judgement([Problem("in_progress", display(cand.path),
                                      f"{display(cand.path)} is a temp file of a save in progress")])
        kind, problem = sniff(cand.path)
        if problem:
            return Judgement([problem])
        return Judgement(list(check_file(cand.path, opts).problems))


def _is_temp_of_weights(name: str) -> bool:
    """``model.safetensors.tmpAbC123`` style siblings (safetensors 0.8 writes ``.tmpXXXXXX`` then renames)."""
    return name.startswith(".tmp") or any(f"{s}.tmp" in name for s in WEIGHT_SUFFIXES)
