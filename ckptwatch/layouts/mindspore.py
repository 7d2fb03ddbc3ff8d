"""MindSpore / MindFormers per-rank checkpoints: ``rank_<r>/{prefix}_rank_<r>-<epoch>_<step>.ckpt`` (§3.5).

This is the rule the whole product generalises: MindFormers resumes from the newest (epoch, step)
that *every* rank has, falling back when a rank's newest file is missing or corrupt. A checkpoint
here is one (prefix, epoch, step) key across all ``rank_*`` dirs; the number of rank dirs is the
world size, as MindFormers itself counts it. A protobuf file cut exactly at a message boundary parses
as a valid shorter file, so each rank's parameter list is also compared with its other checkpoints.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

from ckptwatch.filecheck import check_file
from ckptwatch.formats.jsonfile import read_json
from ckptwatch.layouts.base import Candidate, CheckOptions, Judgement, RankFile, RunFound, listdir_names
from ckptwatch.model import Hazard, Problem, Verdict
from ckptwatch.scan import Entry, display
from ckptwatch.vocabulary import file_ok

RANK_DIR = re.compile(r"^rank_(\d+)\Z")
CKPT_FILE = re.compile(r"^(?P<prefix>.*?)(?:_rank_\d+)?-(?P<epoch>\d+)_(?P<step>\d+)"
                       r"\.(?P<ext>ckpt|safetensors)\Z")
RESUME_KEYS = {"last_epoch", "last_step", "last_ckpt_file"}  # what MindFormers' resume reads from meta.json


class MindSpore:
    name = "mindspore"

    def find(self, directory: str, entries: list[Entry]) -> RunFound | None:
        rank_dirs = {int(m.group(1)): e.path for e in entries
                     if e.is_dir and not e.is_symlink and (m := RANK_DIR.match(e.name))}
        if not rank_dirs:
            return None
        keys: dict[tuple[str, int, int, str], dict[int, str]] = defaultdict(dict)
        temps: dict[int, list[str]] = defaultdict(list)
        for rank, path in rank_dirs.items():
            names, _ = listdir_names(path)
            for n in names:
                if n.endswith(".tmp"):
                    temps[rank].append(os.path.join(path, n))
                m = CKPT_FILE.match(n)
                if m and "-network-" not in n and "-trainable_params-" not in n:
                    key = (m.group("prefix"), int(m.group("epoch")), int(m.group("step")), m.group("ext"))
                    keys[key][rank] = os.path.join(path, n)
        if not keys and not temps:
            return None
        cache: dict[str, object] = {}
        cands = []
        for (prefix, epoch, step, ext), files in sorted(keys.items(), key=lambda kv: (kv[0][1], kv[0][2])):
            pattern = os.path.join(directory, "rank_*", f"{prefix}_rank_*-{epoch}_{step}.{ext}")
            stems = {os.path.splitext(f)[0] for f in files.values()}
            members = (*files.values(),
                       *(t for ts in temps.values() for t in ts if os.path.splitext(t)[0] in stems))
            cands.append(Candidate(pattern, step, self.name, order=(epoch, step),
                                   members=tuple(sorted(members)),
                                   data={"files": files, "ranks": sorted(rank_dirs), "key": (epoch, step),
                                         "temps": temps, "cache": cache, "rank_dirs": rank_dirs}))
        return RunFound(directory, self, cands, consumed=set(rank_dirs.values()))

    def judge(self, cand: Candidate, opts: CheckOptions) -> Judgement:
        files: dict[int, str] = cand.data["files"]
        j = Judgement(present_ranks=tuple(sorted(files)), expected_ranks=len(cand.data["ranks"]))
        j.rank_file = RankFile(os.path.basename(cand.path).replace("{", "{{").replace("}", "}}")
                               .replace("_rank_*", "_rank_{r}"))
        cache = cand.data["cache"]
        for rank, path in sorted(files.items()):
            stem = os.path.splitext(path)[0]
            for t in cand.data["temps"].get(rank, []):
                if os.path.splitext(t)[0] == stem:
                    j.problems.append(Problem("in_progress", display(t), f"{display(t)} is being written "
                                              "(MindSpore writes <name>.tmp, then renames it)"))
            fc = check_file(path, opts)
            cache[path] = fc
            j.problems.extend(fc.problems)
            params = fc.facts.get("params")
            if params is not None and file_ok(fc):
                j.problems.extend(self._compare_with_siblings(rank, path, set(params), cand))
            gs = fc.facts.get("step")
            if isinstance(gs, int) and j.step is None:
                j.step = gs
        return j

    @staticmethod
    def _compare_with_siblings(rank: int, path: str, tags: set[str], cand: Candidate) -> list[Problem]:
        """A file with fewer parameters than the rank's other checkpoints was cut at a record boundary."""
        cache = cand.data["cache"]
        rank_dir = cand.data["rank_dirs"][rank]
        names, _ = listdir_names(rank_dir)
        for n in reversed(names):
            other = os.path.join(rank_dir, n)
            if other == path or not CKPT_FILE.match(n) or not n.endswith(os.path.splitext(path)[1]):
                continue
            if other not in cache:
                cache[other] = check_file(other, CheckOptions())
            ofc = cache[other]
            if not file_ok(ofc) or ofc.facts.get("params") is None:
                continue
            lacking = set(ofc.facts["params"]) - tags
            if lacking:
                example = sorted(lacking)[0]
                return [Problem("truncated", display(path), f"{display(path)} lacks {len(lacking)} "
                                f"parameters that {display(other)} holds (e.g. {example}): the file was cut "
                                "at a record boundary")]
            return []
        return []

    def run_findings(self, run: RunFound, verdicts: list[Verdict],
                     latest_resumable: Verdict | None) -> tuple[list[Problem], list[Hazard]]:
        problems = []
        first = run.candidates[0] if run.candidates else None
        rank_dirs = first.data["rank_dirs"] if first else {}
        for rank, d in sorted(rank_dirs.items()):
            meta = os.path.join(d, "meta.json")
            if not os.path.exists(meta):
                continue
            value, problem = read_json(meta)
            if problem:
                problems.append(problem)
            elif not isinstance(value, dict) or not RESUME_KEYS <= set(value):
                problems.append(Problem("bad_json", display(meta), f"{display(meta)} lacks "
                                        "last_epoch/last_step/last_ckpt_file; MindFormers' resume reads all "
                                        "three"))
        return problems, []
