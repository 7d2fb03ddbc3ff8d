"""Hugging Face Trainer ``checkpoint-<step>/`` directories (layouts.md §3.1, §3.6).

The Trainer itself resumes from the highest ``checkpoint-N`` with no completeness check at all
(``get_last_checkpoint``), so this module decides what a complete one holds: ``trainer_state.json``
(the last file rank 0 writes) agreeing with the directory's step, weights in one of the forms the
Trainer can load, optimizer/scheduler state unless ``save_only_model``, and one ``rng_state_<i>.pth``
per process. The world size comes from the pickled ``TrainingArguments`` (read by the stub unpickler).
"""

from __future__ import annotations

import os
import re
from typing import Any

from ckptwatch.filecheck import check_file, file_size
from ckptwatch.formats.jsonfile import read_json
from ckptwatch.layouts.base import (
    Candidate,
    CheckOptions,
    Judgement,
    NoRunFindings,
    RankFile,
    RunFound,
    listdir_names,
    missing,
    pickled_count,
)
from ckptwatch.model import FileCheck, Problem
from ckptwatch.scan import Entry, display, tree
from ckptwatch.vocabulary import file_ok

CKPT = re.compile(r"^checkpoint-(\d+)\Z")
STAGING = re.compile(r"^tmp-checkpoint-(.*)\Z")
RNG = re.compile(r"^rng_state(?:_(\d+))?\.pth\Z")
SHARD = re.compile(r"^(.+)-(\d{5})-of-(\d{5})\.(safetensors|bin)\Z")
FSDP_RANK = re.compile(r"^pytorch_model_fsdp_\d+_rank(\d+)\.bin\Z")
OPTIM_RANK = re.compile(r"^optimizer_\d+_rank(\d+)\.bin\Z")
FULL_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
FILE_SUFFIXES = (".json", ".safetensors", ".pt", ".pth", ".bin")  # the files this layout reads
MARKER_SKEW_SECONDS = 2.0  # NFS/Lustre mtime skew allowed by the commit-marker rule (§1.3)


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _is_dcp_dir(path: str) -> bool:
    names, _ = listdir_names(path)
    return ".metadata" in names or any(n.endswith(".distcp") for n in names)


def _deepspeed_tags(ckpt: str, sub_dirs: list[str]) -> set[str]:
    """The sub-directories that are DeepSpeed tag dirs. The DeepSpeed layout is imported only for a
    checkpoint that has sub-directories: most Trainer checkpoints have none (``latest``'s start-up)."""
    if not sub_dirs:
        return set()
    from ckptwatch.layouts.deepspeed import is_tag_dir

    return {n for n in sub_dirs if is_tag_dir(listdir_names(os.path.join(ckpt, n))[0])}


def _judge_tag_dir(path: str, opts: CheckOptions) -> Judgement:
    from ckptwatch.layouts.deepspeed import judge_tag_dir

    return judge_tag_dir(path, opts)


def check_index(ckpt: str, index_name: str, opts: CheckOptions,
                checked: dict[str, FileCheck]) -> list[Problem]:
    """A sharded-weights index: every shard present and holding the tensors the index maps to it."""
    path = os.path.join(ckpt, index_name)
    shown = display(path)
    index, problem = read_json(path)
    if problem:
        return [problem]
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        return [Problem("bad_json", shown, f"{shown} has no weight_map of tensor name -> shard file")]
    problems: list[Problem] = []
    shards = sorted(set(weight_map.values()))
    totals = {int(m.group(3)) for s in shards if (m := SHARD.match(s))}
    if len(totals) == 1:
        n = totals.pop()
        named = {int(m.group(2)) for s in shards if (m := SHARD.match(s))}
        for i in sorted(set(range(1, n + 1)) - named):
            problems.append(Problem("missing_shard", shown, f"{shown} maps no tensor to shard {i} of {n}"))
    data_bytes = 0
    for shard in shards:
        if "/" in shard or shard in ("", ".", ".."):
            problems.append(Problem("unsafe_path", shown,
                                    f"{shown} names shard {shard!r} outside the checkpoint"))
            continue
        spath = os.path.join(ckpt, shard)
        if not os.path.lexists(spath):  # a loop or dangling link is judged by check_file, precisely
            keys = [k for k, v in weight_map.items() if v == shard]
            problems.append(Problem("missing_shard", display(spath),
                                    f"{display(spath)} is missing; {shown} maps {len(keys)} tensors to it "
                                    f"(e.g. {keys[0]})"))
            continue
        fc = checked.get(spath) or check_file(spath, opts)
        checked[spath] = fc
        tensors = fc.facts.get("tensors")
        if tensors is None:
            continue
        data_bytes += sum(t.end - t.begin for t in tensors.values())
        absent = [k for k, v in weight_map.items() if v == shard and k not in tensors]
        if absent:
            problems.append(Problem("missing_tensor", display(spath), f"{display(spath)} lacks {len(absent)} "
                                    f"tensors that {shown} maps to it (e.g. {absent[0]})"))
    total = index.get("metadata", {}).get("total_size") if isinstance(index.get("metadata"), dict) else None
    if isinstance(total, int) and data_bytes and total != data_bytes and not problems:
        problems.append(Problem("size_total_mismatch", shown, f"{shown} says total_size {total} but the "
                                f"shards hold {data_bytes} bytes of tensors"))
    return problems


class HfTrainer(NoRunFindings):
    """``output_dir/checkpoint-<step>/`` written by ``transformers.Trainer``."""

    name = "hf-trainer"

    def find(self, directory: str, entries: list[Entry]) -> RunFound | None:
        cands = []
        for e in entries:
            if not e.is_dir or e.is_symlink:
                continue
            if m := CKPT.match(e.name):
                cands.append(Candidate(e.path, int(m.group(1)), self.name))
            elif m := STAGING.match(e.name):
                step = int(m.group(1)) if m.group(1).isdigit() else None
                cands.append(Candidate(e.path, step, self.name, data={"staging": True}))
        if not cands:
            return None
        return RunFound(directory, self, cands, consumed={c.path for c in cands})

    def judge(self, cand: Candidate, opts: CheckOptions) -> Judgement:
        from ckptwatch.formats.pickle_stub import get

        ckpt = cand.path
        shown = display(ckpt)
        if cand.data.get("staging"):
            return Judgement([Problem("in_progress", shown, f"{shown} is a Trainer staging dir (transformers "
                                      "4.36-4.38 saved into tmp-checkpoint-* and renamed it when done)")])
        names, problem = listdir_names(ckpt)
        j = Judgement()
        if problem:
            j.problems.append(problem)
            return j
        nameset = set(names)
        checked: dict[str, FileCheck] = {}
        sub_dirs = [n for n in names if os.path.isdir(os.path.join(ckpt, n))]
        dcp_dirs = {n for n in sub_dirs if _is_dcp_dir(os.path.join(ckpt, n))}
        ds_tags = _deepspeed_tags(ckpt, sub_dirs)

        # Every file we can read, once: JSON parses, torch zips and safetensors are structurally sound.
        stat = cand.data.get("tree")
        files = stat.files if stat is not None else tree(ckpt, ckpt).files
        for entry in files:
            top = entry.path[len(ckpt) + 1:].split(os.sep, 1)[0]
            if top in dcp_dirs or top in ds_tags:
                continue  # judged by their own rules below
            if entry.name.endswith(FILE_SUFFIXES):
                fc = check_file(entry.path, opts, need_object=entry.name == "training_args.bin")
                checked[entry.path] = fc
                j.problems.extend(fc.problems)
        # Names of checkpoint files the listing did not show as regular files (a FIFO, a directory or a
        # symlink loop named model.safetensors; trainer_state.json written after the listing): the
        # reader says what each is, and never blocks on it.
        for n in names:
            path = os.path.join(ckpt, n)
            if n.endswith(FILE_SUFFIXES) and path not in checked and n not in dcp_dirs and n not in ds_tags:
                fc = check_file(path, opts, need_object=n == "training_args.bin")
                checked[path] = fc
                j.problems.extend(fc.problems)

        # trainer_state.json: the commit marker and the step.
        state_path = os.path.join(ckpt, "trainer_state.json")
        state: Any = None
        if "trainer_state.json" not in nameset:
            j.problems.append(Problem("no_commit_marker", display(state_path), f"{display(state_path)} is "
                                      "missing: the Trainer writes it last, so this save did not finish"))
        else:
            state = checked[state_path].facts.get("json") if state_path in checked else None
            if isinstance(state, dict):
                gs = state.get("global_step")
                if not isinstance(gs, int):
                    j.problems.append(Problem("bad_json", display(state_path),
                                              f"{display(state_path)} has no integer global_step"))
                elif cand.step is not None and gs != cand.step:
                    j.problems.append(Problem("step_mismatch", display(state_path),
                                              f"{display(state_path)} says global_step {gs} but the "
                                              f"directory is checkpoint-{cand.step}"))
            elif state is not None:
                j.problems.append(Problem("bad_json", display(state_path),
                                          f"{display(state_path)} is not a JSON object"))

        # training_args.bin: world size and save_only_model, without executing the pickle.
        args_obj = None
        args_path = os.path.join(ckpt, "training_args.bin")
        if args_path in checked:
            args_obj = checked[args_path].facts.get("object")
        world = pickled_count(get(args_obj, "distributed_state", "num_processes"))
        save_only_model = get(args_obj, "save_only_model") is True if args_obj is not None else False

        # Weights, in any form the Trainer (or DeepSpeed/FSDP) can resume from.
        adapters = self._adapters(ckpt, names, sub_dirs, checked)
        j.problems.extend(self.adapter_problems(ckpt, adapters))
        full = [(os.path.join(ckpt, n), file_size(os.path.join(ckpt, n)) or 0)
                for n in FULL_WEIGHTS if n in nameset]
        indexes = [n for n in INDEXES if n in nameset]
        for idx in indexes:
            j.problems.extend(check_index(ckpt, idx, opts, checked))
        fsdp_dirs = sorted(n for n in dcp_dirs if n.startswith("pytorch_model_fsdp"))
        optim_dirs = sorted(n for n in dcp_dirs if n.startswith("optimizer"))
        for n in sorted(dcp_dirs):
            from ckptwatch.formats.dcp import check_dcp_dir

            j.problems.extend(check_dcp_dir(os.path.join(ckpt, n), deep=opts.deep).problems)
        fsdp_rank_files = {int(m.group(1)) for n in names if (m := FSDP_RANK.match(n))}
        ds_judgements = {t: _judge_tag_dir(os.path.join(ckpt, t), opts) for t in sorted(ds_tags)}
        for tag, dj in ds_judgements.items():
            j.problems.extend(dj.problems)
            if dj.expected_ranks and dj.present_ranks is not None:
                describe = dj.rank_file or RankFile("rank {r}")
                for r in sorted(set(range(dj.expected_ranks)) - set(dj.present_ranks)):
                    f = os.path.join(ckpt, tag, describe(r))
                    j.problems.append(Problem("missing_rank", display(f), f"{display(f)} is missing: "
                                              f"DeepSpeed data-parallel rank {r} of {dj.expected_ranks} did "
                                              "not save"))
        has_weights = bool(full or indexes or adapters or fsdp_dirs or fsdp_rank_files or ds_tags
                           or "pytorch_model_fsdp.bin" in nameset)
        if not has_weights:
            j.problems.append(Problem("no_weights", shown, f"{shown} holds no model weights (no "
                                      "model.safetensors, pytorch_model.bin, index + shards, adapter, FSDP "
                                      "or DeepSpeed state)"))
        if (full or indexes) and not fsdp_dirs and "training_args.bin" not in nameset:
            j.problems.append(missing(args_path, "the Trainer saves it with the weights"))

        # Optimizer and scheduler state, unless the run saves only the model.
        deepspeed = bool(ds_tags)
        if not save_only_model:
            has_optim = bool({"optimizer.pt", "optimizer.bin"} & nameset or optim_dirs or deepspeed
                             or any(OPTIM_RANK.match(n) for n in names))
            if not has_optim:
                j.problems.append(missing(os.path.join(ckpt, "optimizer.pt"),
                                          "optimizer state; the run does not save_only_model"))
            if not deepspeed and "scheduler.pt" not in nameset:
                j.problems.append(missing(os.path.join(ckpt, "scheduler.pt"),
                                          "scheduler state; the run does not save_only_model"))

        # Ranks: one rng_state_<i>.pth per process (rng_state.pth for a single process).
        rng = {n: m.group(1) for n in names if (m := RNG.match(n))}
        if rng or not save_only_model:
            present = sorted({0 if idx is None else int(idx) for idx in rng.values()})
            if "rng_state.pth" in rng and len(rng) > 1:
                present = sorted(set(present))
            j.present_ranks = tuple(present)
            j.expected_ranks = world
            j.rank_file = RankFile("rng_state.pth" if world == 1 else "rng_state_{r}.pth")
            if world is not None and world > 1 and "rng_state.pth" in rng:
                j.problems.append(Problem("step_mismatch", display(os.path.join(ckpt, "rng_state.pth")),
                                          f"{shown} has rng_state.pth (one process) but training_args.bin "
                                          f"says {world} processes"))

        # Commit-marker rule: trainer_state.json must not be older than the files it covers. Other ranks'
        # rng_state_<i>.pth are written without a barrier and may land after it (layouts.md §3.1).
        marker_mtime = _mtime(state_path) if "trainer_state.json" in nameset else None
        if marker_mtime is not None:
            covered = [e for e in files
                       if e.path != state_path
                       and not (RNG.match(e.name) and RNG.match(e.name).group(1) not in (None, "0"))]
            newer = [e for e in covered if e.mtime > marker_mtime + MARKER_SKEW_SECONDS]
            if newer:
                worst = max(newer, key=lambda e: e.mtime)
                j.problems.append(Problem("stale_commit_marker", display(state_path),
                                          f"{display(state_path)} is {worst.mtime - marker_mtime:.0f} s "
                                          f"older than {display(worst.path)}: a later save rewrote files "
                                          "here and did not finish"))

        j.facts["adapters"] = adapters
        j.facts["full_weights"] = full
        return j

    @staticmethod
    def _adapters(ckpt: str, names: list[str], sub_dirs: list[str],
                  checked: dict[str, FileCheck]) -> dict[str, dict[str, Any]]:
        """PEFT adapters: the default one at the top level, others in sub-dirs (§3.6)."""
        found: dict[str, dict[str, Any]] = {}
        places = [("", ckpt, names)] + [(d, os.path.join(ckpt, d), listdir_names(os.path.join(ckpt, d))[0])
                                        for d in sub_dirs]
        for label, where, files in places:
            weights = [w for w in ADAPTER_WEIGHTS if w in files]
            if not weights and "adapter_config.json" not in files:
                continue
            info: dict[str, Any] = {"dir": where, "config": None, "weights": None, "size": None,
                                    "tensors": None}
            cfg_path = os.path.join(where, "adapter_config.json")
            if "adapter_config.json" in files:
                fc = checked.get(cfg_path)
                info["config"] = fc.facts.get("json") if fc else None
            if weights:
                wpath = os.path.join(where, weights[0])
                info["weights"] = wpath
                try:
                    info["size"] = os.path.getsize(wpath)
                except OSError:
                    info["size"] = None
                fc = checked.get(wpath)
                info["tensors"] = fc.facts.get("tensors") if fc else None
                info["data_start"] = fc.facts.get("data_start") if fc else None
                if (info["tensors"] is not None and info["data_start"] is not None and fc is not None
                        and file_ok(fc)):
                    from ckptwatch.adapters import lora_b_all_zero, tensor_digest

                    info["b_all_zero"] = lora_b_all_zero(wpath, info["tensors"], info["data_start"])
                    info["digest"] = tensor_digest(wpath, info["data_start"])
            found[label] = info
        return found

    @staticmethod
    def adapter_problems(ckpt: str, adapters: dict[str, dict[str, Any]]) -> list[Problem]:
        problems = []
        for label, info in adapters.items():
            if info["weights"] is None:
                problems.append(missing(os.path.join(info["dir"], "adapter_model.safetensors"),
                                        "adapter weights beside adapter_config.json"))
            if info["config"] is None and info["weights"] is not None:
                problems.append(missing(os.path.join(info["dir"], "adapter_config.json"),
                                        "PEFT cannot load adapter weights without it"))
        return problems
