"""DeepSpeed ``save_checkpoint(save_dir, tag)``: ``latest`` plus one tag dir of per-rank files.

Why every rank file is checked: ``latest`` is written by global rank 0 before the final barrier, so
it does not prove that the other ranks finished their ZeRO shards (layouts.md §3.2). Expected ranks
come from the checkpoint's own metadata (``dp_world_size`` in the model states, ``partition_count``
in the optimizer states), the same numbers ``zero_to_fp32.py`` checks.
"""

from __future__ import annotations

import os
import re

from ckptwatch.filecheck import check_file
from ckptwatch.formats.jsonfile import read_text
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

MODEL_MP = re.compile(r"^mp_rank_(\d+)_model_states\.pt\Z")
MODEL_ZERO3 = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_(\d+)_model_states\.pt\Z")
OPTIM = re.compile(r"^(bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_?optim_states\.pt\Z")
LAYER = re.compile(r"^layer_(\d+)-model_(\d+)-model_states\.pt\Z")
TAG_STEP = re.compile(r"^global_step(\d+)\Z")
POINTERS = ("latest", "latest_universal")


def _int_or_max(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        return max(value)
    return None


def is_tag_dir(names: list[str]) -> bool:
    return any(MODEL_MP.match(n) or MODEL_ZERO3.match(n) or OPTIM.match(n) or LAYER.match(n) for n in names)


def judge_tag_dir(tag_dir: str, opts: CheckOptions) -> Judgement:
    """Completeness of one DeepSpeed tag dir: model states per mp rank, ZeRO shards per dp rank."""
    from ckptwatch.formats.pickle_stub import get

    names, problem = listdir_names(tag_dir)
    j = Judgement()
    if problem:
        j.problems.append(problem)
        return j
    shown = display(tag_dir)
    model_mp = {int(m.group(1)): n for n in names if (m := MODEL_MP.match(n))}
    model_z3 = {(int(m.group(1)), int(m.group(2))): n for n in names if (m := MODEL_ZERO3.match(n))}
    optim = {(int(m.group(2)), int(m.group(3))): (m.group(1) or "", n) for n in names
             if (m := OPTIM.match(n))}
    if not (model_mp or model_z3 or optim or any(LAYER.match(n) for n in names)):
        j.problems.append(Problem("no_weights", shown,
                                  f"{shown} holds no DeepSpeed model or optimizer states"))
        return j

    facts: dict[str, int] = {}
    for name in sorted(names):
        path = os.path.join(tag_dir, name)
        if not name.endswith(".pt"):
            continue
        wants = (("dp_world_size" not in facts and bool(MODEL_MP.match(name) or MODEL_ZERO3.match(name)))
                 or ("partition_count" not in facts and bool(OPTIM.match(name))))
        fc = check_file(path, opts, need_object=wants)
        j.problems.extend(fc.problems)
        obj = fc.facts.get("object")
        if obj is None:
            continue
        if "dp_world_size" not in facts and (MODEL_MP.match(name) or MODEL_ZERO3.match(name)):
            for key in ("dp_world_size", "mp_world_size", "global_steps"):
                raw = _int_or_max(get(obj, key))
                v = pickled_step(raw) if key == "global_steps" else pickled_count(raw)
                if v is not None:
                    facts[key] = v
        if "partition_count" not in facts and OPTIM.match(name):
            v = pickled_count(_int_or_max(get(obj, "optimizer_state_dict", "partition_count")))
            if v is not None:
                facts["partition_count"] = v
            z = get(obj, "optimizer_state_dict", "zero_stage")
            if isinstance(z, int):
                facts["zero_stage"] = z

    prefixes = {p for p, _ in optim.values()}
    if len(prefixes) > 1:
        j.problems.append(Problem("bad_header", shown, f"{shown} mixes bf16_ and plain optimizer state "
                                  "files; they come from two different saves into the same tag"))

    mp_world = facts.get("mp_world_size") or (1 + max([*model_mp, *(m for _, m in model_z3),
                                                       *(m for _, m in optim)], default=0))
    if model_mp or not model_z3:
        for m in range(mp_world):
            if m not in model_mp and not any(LAYER.match(n) for n in names):
                j.problems.append(missing(os.path.join(tag_dir, f"mp_rank_{m:02d}_model_states.pt"),
                                          f"model states of model-parallel rank {m} of {mp_world}"))

    dp_expected = facts.get("partition_count") or facts.get("dp_world_size")
    if optim or model_z3:
        # The rank unit is the data-parallel rank of model-parallel rank 0: one ZeRO shard each.
        dp_present = sorted({d for d, m in optim if m == 0} | {d for d, m in model_z3 if m == 0})
        if model_z3 and optim:
            dp_present = sorted({d for d, m in optim if m == 0} & {d for d, m in model_z3 if m == 0})
            for d, m in sorted(set(optim) ^ set(model_z3)):
                have = "optimizer" if (d, m) in optim else "model"
                j.problems.append(Problem("missing_rank", shown, f"{shown}: dp rank {d} (mp {m}) has its "
                                          f"ZeRO-3 {have} states but not the other half"))
        j.present_ranks = tuple(dp_present)
        j.expected_ranks = dp_expected
        prefix = next(iter(prefixes), "")
        j.rank_file = RankFile(prefix + "zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
        if dp_expected is not None and optim:
            total = len(optim)
            want = dp_expected * mp_world
            if total > want:
                j.problems.append(Problem("unreferenced_file", shown, f"{shown} holds {total} optimizer "
                                          f"state files but partition_count x mp = {want}: leftovers of a "
                                          "larger run?"))
    if "global_steps" in facts:
        j.step = facts["global_steps"]
    j.facts.update(facts)
    return j


class DeepSpeed:
    """A DeepSpeed save dir: ``latest`` pointer and ``global_step<N>`` (or custom tag) dirs."""

    name = "deepspeed"

    def find(self, directory: str, entries: list[Entry]) -> RunFound | None:
        has_pointer = any(e.is_file and e.name in POINTERS for e in entries)
        cands: list[Candidate] = []
        for e in entries:
            if not e.is_dir or e.is_symlink:
                continue
            names, _ = listdir_names(e.path)
            if TAG_STEP.match(e.name) or (has_pointer and is_tag_dir(names)) or is_tag_dir(names):
                m = TAG_STEP.match(e.name)
                cands.append(Candidate(e.path, int(m.group(1)) if m else None, self.name))
        if not cands or not (has_pointer or any(TAG_STEP.match(os.path.basename(c.path)) for c in cands)):
            return None
        return RunFound(directory, self, cands, consumed={c.path for c in cands})

    def judge(self, cand: Candidate, opts: CheckOptions) -> Judgement:
        return judge_tag_dir(cand.path, opts)

    def run_findings(self, run: RunFound, verdicts: list[Verdict],
                     latest_resumable: Verdict | None) -> tuple[list[Problem], list[Hazard]]:
        return deepspeed_pointer_findings(run.root, verdicts, latest_resumable)


def deepspeed_pointer_findings(save_dir: str, verdicts: list[Verdict],
                               latest_resumable: Verdict | None) -> tuple[list[Problem], list[Hazard]]:
    problems: list[Problem] = []
    hazards: list[Hazard] = []
    by_path = {os.path.normpath(v.path): v for v in verdicts}
    for path, tag, problem in read_pointers(save_dir):
        if problem is not None or tag is None:
            if problem is not None:
                problems.append(problem)
            continue
        target = by_path.get(os.path.normpath(os.path.join(save_dir, tag)))
        if target is None and os.path.isdir(os.path.join(save_dir, tag)):
            continue  # a tag we did not judge (e.g. universal checkpoint dir): nothing to say
        h = pointer_hazard(path, tag, target, latest_resumable)
        if h:
            hazards.append(h)
    return problems, hazards


def read_pointers(save_dir: str) -> list[tuple[str, str | None, Problem | None]]:
    """Each DeepSpeed pointer file in ``save_dir`` (``latest``, ``latest_universal``): its path, the tag
    it names (a dir of ``save_dir``) and the problem reading it. One reader, so the pointer findings and
    retention (which must never delete a pointer's target) agree on what a pointer names."""
    out: list[tuple[str, str | None, Problem | None]] = []
    for pointer in POINTERS:
        path = os.path.join(save_dir, pointer)
        if not os.path.isfile(path):
            continue
        tag, problem = read_text(path)
        if problem or not tag:
            out.append((path, None, problem
                        or Problem("pointer_unreadable", display(path), f"{display(path)} is empty")))
        else:
            out.append((path, tag, None))
    return out
