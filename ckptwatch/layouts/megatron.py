"""Megatron-LM ``iter_<7 digits>/`` under a save dir with ``latest_checkpointed_iteration.txt`` (§3.3).

Two formats: legacy ``torch`` (one ``mp_rank_XX[_YYY]/model_optim_rng.pt`` per tensor x pipeline
rank) and ``torch_dist`` (a DCP dir plus ``metadata.json``, written by rank 0 after every rank saved:
the commit marker). The tracker is written after a barrier, so it is a reliable pointer; naming an
incomplete iteration is still a hazard we report with the iteration to use instead.
"""

from __future__ import annotations

import os
import re

from ckptwatch.filecheck import check_file
from ckptwatch.formats._io import open_regular_file
from ckptwatch.formats.jsonfile import read_json, read_text
from ckptwatch.layouts.base import (
    Candidate,
    CheckOptions,
    Judgement,
    RankFile,
    RunFound,
    listdir_names,
    missing,
    pickled_count,
    pickled_step,
    pointer_hazard,
)
from ckptwatch.model import Hazard, Problem, Verdict
from ckptwatch.scan import Entry, display
from ckptwatch.vocabulary import file_ok

ITER = re.compile(r"^iter_(\d{7})\Z")
MP_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?(?:_(\d{3}))?\Z")
TRACKER = "latest_checkpointed_iteration.txt"


class Megatron:
    name = "megatron"

    def find(self, directory: str, entries: list[Entry]) -> RunFound | None:
        cands = [Candidate(e.path, int(m.group(1)), self.name) for e in entries
                 if e.is_dir and not e.is_symlink and (m := ITER.match(e.name))]
        if not cands:
            return None  # MindFormers' iteration_XXXXXXXX dirs share the tracker name; they are not judged
        dist_runs = any(os.path.exists(os.path.join(c.path, "metadata.json")) for c in cands)
        for c in cands:
            c.data["run_uses_torch_dist"] = dist_runs
        return RunFound(directory, self, cands, consumed={c.path for c in cands})

    def judge(self, cand: Candidate, opts: CheckOptions) -> Judgement:
        names, problem = listdir_names(cand.path)
        if problem:
            return Judgement([problem])
        if any(n.endswith(".distcp") for n in names) or ".metadata" in names or "metadata.json" in names:
            return self._judge_dist(cand, names, opts)
        return self._judge_legacy(cand, names, opts)

    def _judge_dist(self, cand: Candidate, names: list[str], opts: CheckOptions) -> Judgement:
        from ckptwatch.formats.dcp import check_dcp_dir
        from ckptwatch.formats.pickle_stub import get

        fc = check_dcp_dir(cand.path, deep=opts.deep)
        j = Judgement(list(fc.problems))
        ranks = fc.facts.get("ranks_in_names")
        if ranks:
            # Megatron's async writer skips empty buckets, so file names give a lower bound only.
            j.present_ranks = tuple(ranks)
            j.rank_file = RankFile("__{r}_0.distcp")
        meta = os.path.join(cand.path, "metadata.json")
        if "metadata.json" in names:
            value, problem = read_json(meta)
            if problem:
                j.problems.append(problem)
            elif not isinstance(value, dict) or "sharded_backend" not in value:
                j.problems.append(Problem("bad_json", display(meta),
                                          f"{display(meta)} lacks sharded_backend"))
        elif cand.data.get("run_uses_torch_dist"):
            j.problems.append(Problem("no_commit_marker", display(meta), f"{display(meta)} is missing: "
                                      "Megatron's rank 0 writes it after all ranks saved, so this save did "
                                      "not finish"))
        if "common.pt" in names:
            fc = check_file(os.path.join(cand.path, "common.pt"), opts, need_object=True)
            j.problems.extend(fc.problems)
            world = pickled_count(get(fc.facts.get("object"), "args", "world_size"))
            if world is not None and j.present_ranks is not None:
                j.expected_ranks = world
        if "integrity.json" in names:
            j.problems.extend(_integrity(cand.path, deep=opts.deep))
        return j

    def _judge_legacy(self, cand: Candidate, names: list[str], opts: CheckOptions) -> Judgement:
        from ckptwatch.formats.pickle_stub import get

        j = Judgement()
        tp_size = pp_size = None
        present_cells: set[tuple[int, int]] = set()
        for n in names:
            m = MP_DIR.match(n)
            if not m:
                continue
            tp, pp = int(m.group(1)), int(m.group(2) or 0)
            f = os.path.join(cand.path, n, "model_optim_rng.pt")
            if not os.path.exists(f):
                j.problems.append(missing(f, f"model state of tensor rank {tp}, pipeline rank {pp}"))
                continue
            fc = check_file(f, opts, need_object=tp_size is None)
            j.problems.extend(fc.problems)
            if not file_ok(fc):
                continue
            present_cells.add((tp, pp))
            obj = fc.facts.get("object")
            if tp_size is None:
                t = pickled_count(get(obj, "args", "tensor_model_parallel_size"))
                p = pickled_count(get(obj, "args", "pipeline_model_parallel_size"))
                if t is not None and p is not None:
                    tp_size, pp_size = t, p
                it = pickled_step(get(obj, "iteration"))
                if it is not None and cand.step is not None and it != cand.step:
                    j.problems.append(Problem("step_mismatch", display(f), f"{display(f)} holds iteration "
                                              f"{it} but lives in iter_{cand.step:07d}"))
        if not present_cells and not j.problems:
            j.problems.append(Problem("no_weights", display(cand.path), f"{display(cand.path)} has no "
                                      "mp_rank_XX/model_optim_rng.pt"))
        width = tp_size or 1 + max((tp for tp, _ in present_cells), default=0)
        j.present_ranks = tuple(sorted(tp + pp * width for tp, pp in present_cells))
        j.expected_ranks = tp_size * pp_size if tp_size and pp_size else None
        pp_known = (pp_size or 1) > 1 or any(pp for _, pp in present_cells)
        j.rank_file = RankFile("mp_rank_{tp:02d}" + ("_{pp:03d}" if pp_known else "") + "/model_optim_rng.pt",
                               width)
        return j

    def run_findings(self, run: RunFound, verdicts: list[Verdict],
                     latest_resumable: Verdict | None) -> tuple[list[Problem], list[Hazard]]:
        tracker = os.path.join(run.root, TRACKER)
        it, problem = read_tracker(run.root)
        if problem is not None:
            return [problem], []
        if it is None:
            return [], []
        target = next((v for v in verdicts if v.step == it), None)
        h = pointer_hazard(tracker, f"iter_{it:07d}", target, latest_resumable)
        return [], [h] if h else []


def read_tracker(save_dir: str) -> tuple[int | None, Problem | None]:
    """The iteration ``latest_checkpointed_iteration.txt`` in ``save_dir`` names (its dir is
    ``iter_<7 digits>``): (iteration, None); (None, None) without a tracker or for ``release``;
    (None, problem) when it cannot be read. One reader for the pointer findings and retention."""
    tracker = os.path.join(save_dir, TRACKER)
    if not os.path.isfile(tracker):
        return None, None
    text, problem = read_text(tracker)
    if problem:
        return None, problem
    if text == "release":
        return None, None
    if not text or not text.isdigit():
        return None, Problem("pointer_unreadable", display(tracker), f"{display(tracker)} holds {text!r}, "
                             "not an iteration number")
    return int(text), None


def _integrity(directory: str, *, deep: bool) -> list[Problem]:
    """Megatron ``integrity.json``: every listed file exists; with --deep, its SHA-256 matches."""
    path = os.path.join(directory, "integrity.json")
    value, problem = read_json(path)
    if problem:
        return [problem]
    files = value.get("files") if isinstance(value, dict) else None
    if not isinstance(files, dict):
        return [Problem("bad_json", display(path), f"{display(path)} has no files table")]
    problems = []
    for name, digest in sorted(files.items()):
        f = os.path.join(directory, name)
        if "/" in name or name.startswith(".."):
            problems.append(Problem("unsafe_path", display(path), f"{display(path)} lists {name!r}"))
        elif not os.path.exists(f):
            problems.append(Problem("missing_file", display(f),
                                    f"{display(f)} is listed in integrity.json but absent"))
        elif deep:
            import hashlib

            h = hashlib.sha256()
            try:
                with open_regular_file(f) as fh:
                    while block := fh.read(4 * 1024 * 1024):
                        h.update(block)
            except OSError as exc:
                from ckptwatch.formats._io import problem_from_oserror

                problems.append(problem_from_oserror(display(f), exc))
                continue
            if h.hexdigest() != digest:
                problems.append(Problem("hash_mismatch", display(f), f"{display(f)} SHA-256 "
                                        f"{h.hexdigest()[:16]}... differs from integrity.json's "
                                        f"{str(digest)[:16]}..."))
    return problems
