"""Orbax (JAX) ``CheckpointManager`` step dirs (see docs/layouts-notes.md for the sources).

Orbax writes a step into ``<step>.orbax-checkpoint-tmp-<timestamp>`` and renames it to ``<step>``
when every process finished (atomic rename); on filesystems without atomic rename it writes
``commit_success.txt`` last instead. ``_CHECKPOINT_METADATA`` sits in finalized step dirs.
"""

from __future__ import annotations

import os
import re

from ckptwatch.formats.jsonfile import read_json
from ckptwatch.layouts.base import Candidate, CheckOptions, Judgement, NoRunFindings, RunFound, listdir_names
from ckptwatch.model import Problem
from ckptwatch.scan import Entry, display

TMP = re.compile(r"^(?:.*?_)?(\d+)\.orbax-checkpoint-tmp(?:-.*)?\Z")
STEP_DIR = re.compile(r"^(?:.*?_)?(\d+)\Z")
META = "_CHECKPOINT_METADATA"
COMMIT = "commit_success.txt"


class Orbax(NoRunFindings):
    name = "orbax"

    def find(self, directory: str, entries: list[Entry]) -> RunFound | None:
        cands: list[Candidate] = []
        uses_commit_file = False
        for e in entries:
            if not e.is_dir or e.is_symlink:
                continue
            if m := TMP.match(e.name):
                cands.append(Candidate(e.path, int(m.group(1)), self.name, order=(int(m.group(1)), 1),
                                       data={"tmp": True}))
            elif m := STEP_DIR.match(e.name):
                names, _ = listdir_names(e.path)
                if META in names or COMMIT in names or any(n.endswith(".orbax-checkpoint-tmp") or
                                                           ".orbax-checkpoint-tmp-" in n for n in names):
                    uses_commit_file |= COMMIT in names
                    cands.append(Candidate(e.path, int(m.group(1)), self.name, order=(int(m.group(1)), 0)))
        if not cands:
            return None
        for c in cands:
            c.data["commit_file"] = uses_commit_file
        return RunFound(directory, self, cands, consumed={c.path for c in cands})

    def judge(self, cand: Candidate, opts: CheckOptions) -> Judgement:
        shown = display(cand.path)
        if cand.data.get("tmp"):
            return Judgement([Problem("in_progress", shown, f"{shown} is an Orbax staging dir; it is renamed "
                                      "to its step when every process finished")])
        names, problem = listdir_names(cand.path)
        j = Judgement([problem] if problem else [])
        tmp_items = [n for n in names if ".orbax-checkpoint-tmp" in n]
        for n in tmp_items:
            item = display(os.path.join(cand.path, n))
            j.problems.append(Problem("in_progress", item, f"{item} is an item still being written"))
        if cand.data.get("commit_file") and COMMIT not in names:
            j.problems.append(Problem("no_commit_marker", display(os.path.join(cand.path, COMMIT)),
                                      f"{display(os.path.join(cand.path, COMMIT))} is missing: Orbax writes "
                                      "it last on filesystems without atomic rename"))
        if META in names:
            _, problem = read_json(os.path.join(cand.path, META))
            if problem:
                j.problems.append(problem)
        elif not tmp_items:
            j.problems.append(Problem("no_commit_marker", display(os.path.join(cand.path, META)),
                                      f"{display(os.path.join(cand.path, META))} is missing: the step was "
                                      "not finalized"))
        for n in names:
            item = os.path.join(cand.path, n)
            if os.path.isdir(item) and ".orbax-checkpoint-tmp" not in n:
                inner, _ = listdir_names(item)
                if "_METADATA" in inner:
                    _, problem = read_json(os.path.join(item, "_METADATA"))
                    if problem:
                        j.problems.append(problem)
        return j
