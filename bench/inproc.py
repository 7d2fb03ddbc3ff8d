"""Child process: the in-process measurements, one fresh interpreter per benchmark.

``bench/run.py`` runs ``python -m bench.inproc MODE ARGS... --out RESULT.json``; the result goes to a
file (never stdout) so that ckptwatch's own output can be sent to /dev/null. A fresh interpreter per
mode keeps one benchmark's heap, imports and caches out of the next one, and lets the ``header`` mode
prove that the ckptwatch path never imports torch.

Timing method (perf-baselines.md section 2): ``time.perf_counter`` around the call, one warm-up, then
the median of ``--repeat`` runs, with min and max. Interpreter start-up and imports are not included
(they are measured separately, as whole processes, by run.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

HEAVY = ("torch", "numpy", "safetensors", "transformers", "pandas")


def _timed(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> tuple[list[float], Any]:
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return times, result


def _stats(times: list[float]) -> dict:
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times),
            "all": times}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Send fd 1 (and sys.stdout) to /dev/null: ckptwatch's report goes nowhere, as with ``> /dev/null``."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _profile(fn: Callable[[], object], top: int, sort: str) -> str:
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(sort).print_stats(top)
    return buf.getvalue().strip()


# --------------------------------------------------------------------------------------------------
# 1. structural pass over a tree of Trainer checkpoints


def mode_tree(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    from ckptwatch.engine import check_root
    from ckptwatch.filecheck import check_file
    from ckptwatch.layouts.base import CheckOptions

    import_s = time.perf_counter() - t0
    opts = CheckOptions(settle_seconds=0, deep=False)
    times, report = _timed(lambda: check_root(args.path, opts, now=time.time()), args.repeat)
    runs = report.runs
    verdicts = [v for r in runs for v in r.checkpoints]
    statuses: dict[str, int] = {}
    for v in verdicts:
        statuses[v.status.value] = statuses.get(v.status.value, 0) + 1
    problems = sorted({p.kind for v in verdicts for p in v.problems})
    out = {
        "import_s": import_s,
        "check_root_s": _stats(times),
        "runs": len(runs),
        "checkpoints": len(verdicts),
        "statuses": statuses,
        "problem_kinds": problems,
        "latest_resumable": runs[0].latest_resumable if runs else None,
        "heavy_modules": [m for m in HEAVY if m in sys.modules],
    }
    del report, runs, verdicts
    if args.profile:
        out["profile_cumtime"] = _profile(lambda: check_root(args.path, opts, now=time.time()), 15,
                                          "cumulative")
        out["profile_tottime"] = _profile(lambda: check_root(args.path, opts, now=time.time()), 15, "tottime")
    # Cost of each file of one checkpoint, checked alone (median of 30, warm): where the time goes.
    first = args.sample
    per_file = []
    for name in sorted(os.listdir(first)):
        p = os.path.join(first, name)
        ts, _ = _timed(lambda p=p: check_file(p, opts), 30, warmup=2)
        per_file.append({"file": name, "bytes": os.path.getsize(p), "us": statistics.median(ts) * 1e6})
    out["per_file_us"] = per_file
    return out


# --------------------------------------------------------------------------------------------------
# 2. header check of one big safetensors file


def mode_header(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    from ckptwatch import cli
    from ckptwatch.formats.safetensors import check_safetensors

    import_s = time.perf_counter() - t0
    times, fc = _timed(lambda: check_safetensors(args.path), args.repeat)
    # The whole `verify` command in-process (argument parsing, discovery, judging, report to /dev/null).
    codes = []

    def verify() -> None:
        with _quiet():
            codes.append(cli.main(["verify", "--settle", "0", args.path]))

    vtimes, _ = _timed(verify, args.repeat)
    out = {
        "import_s": import_s,
        "check_safetensors_s": _stats(times),
        "cli_main_verify_s": _stats(vtimes),
        "cli_exit_codes": sorted(set(codes)),
        "problems": [{"kind": p.kind, "message": p.message} for p in fc.problems],
        "tensors": len(fc.facts.get("tensors") or {}),
        "heavy_modules": [m for m in HEAVY if m in sys.modules],
        "torch_imported": "torch" in sys.modules,
    }
    if args.profile:
        out["profile_tottime"] = _profile(lambda: check_safetensors(args.path), 12, "tottime")
    return out


def mode_safe_open(args: argparse.Namespace) -> dict:
    """Yardstick: the safetensors library's own header parse (numpy framework: no torch)."""
    t0 = time.perf_counter()
    from safetensors import safe_open

    import_s = time.perf_counter() - t0

    def parse() -> int:
        with safe_open(args.path, framework="numpy") as f:
            n = 0
            for k in f.keys():  # noqa: SIM118 - a safe_open handle is not a dict
                s = f.get_slice(k)
                s.get_shape()
                s.get_dtype()
                n += 1
            return n

    times, n = _timed(parse, args.repeat)
    return {"import_s": import_s, "safe_open_s": _stats(times), "tensors": n,
            "heavy_modules": [m for m in HEAVY if m in sys.modules]}


# --------------------------------------------------------------------------------------------------
# 3. --deep pass over big real files


def mode_deep(args: argparse.Namespace) -> dict:
    from ckptwatch.formats import _stream
    from ckptwatch.formats.safetensors import check_safetensors
    from ckptwatch.formats.torchzip import check_torch_file

    fn = check_safetensors if args.kind == "safetensors" else check_torch_file
    times, fc = _timed(lambda: fn(args.path, deep=True), args.repeat)
    size = os.path.getsize(args.path)
    out = {
        "bytes": size,
        "deep_s": _stats(times),
        "mb_per_s": size / statistics.median(times) / 1e6,
        "problems": [p.kind for p in fc.problems],
        "crc_impl": _stream.CRC_IMPL,
        "heavy_modules": [m for m in HEAVY if m in sys.modules],
    }
    if args.profile:
        out["profile_tottime"] = _profile(lambda: fn(args.path, deep=True), 8, "tottime")
    return out


# --------------------------------------------------------------------------------------------------
# 6. retention: planning a run of N checkpoints (pure; no disk)


def _retention_run(n: int) -> tuple[list, Any, float, Any]:
    """A realistic run of ``n`` checkpoints (seeded): one every 6 minutes, 2 GB each, an eval metric every
    5th, 2 % crashed saves and 0.5 % corrupt, the newest still being written, a few pins, framework
    pointers on the newest complete, the three newest not yet mirrored. The policy sets every rule, and
    ``min_free`` asks for 100 checkpoints more than the rules free, so the pressure path runs too."""
    import dataclasses
    import random

    from ckptwatch.config.retention import FreeSpace, RetentionConfig
    from ckptwatch.model import Status
    from ckptwatch.retention.policy import Candidate, DiskSpace, plan_run

    rng = random.Random(20261204)
    start = 1_795_000_000.0
    cands = []
    for k in range(n):
        roll = rng.random()
        status = (Status.IN_PROGRESS if k == n - 1 else Status.INCOMPLETE if roll < 0.02
                  else Status.CORRUPT if roll < 0.025 else Status.COMPLETE)
        cands.append(Candidate(
            path=f"/data/runs/llm-7b/checkpoint-{(k + 1) * 100}", step=(k + 1) * 100, status=status,
            mtime=start + k * 360.0 + rng.random(), bytes=2 * 10**9 + rng.randrange(10**6),
            metric=rng.uniform(0.2, 2.0) if k % 5 == 4 else None,
            pinned="release candidate" if k in (1234, 4321, 7777) else None,
            mirrored=k < n - 4))
    newest = max(k for k, c in enumerate(cands) if c.status is Status.COMPLETE)
    cands[newest] = dataclasses.replace(cands[newest], pointed_by=("DeepSpeed latest", "ckptwatch-latest"))
    best = min((k for k, c in enumerate(cands) if c.metric is not None), key=lambda k: cands[k].metric)
    cands[best] = dataclasses.replace(cands[best], best=True)
    now = start + n * 360.0 + 600.0
    rules = RetentionConfig(keep_last=5, keep_every_steps=10_000, keep_best=3, metric="eval_loss",
                            keep_within=86400.0, keep_interval=7 * 86400.0,
                            delete_incomplete_after=6 * 3600.0)
    disk = DiskSpace(total=n * 3 * 10**9, free=100 * 10**9)
    freed = plan_run(cands, rules, now, disk).bytes_freed
    policy = dataclasses.replace(rules, min_free=FreeSpace(bytes=disk.free + freed + 100 * 2 * 10**9))
    return cands, policy, now, disk


def mode_retention(args: argparse.Namespace) -> dict:
    from ckptwatch.retention.guards import recency, violations
    from ckptwatch.retention.policy import plan_run

    cands, policy, now, disk = _retention_run(args.checkpoints)
    times, plan = _timed(lambda: plan_run(cands, policy, now, disk), args.repeat)
    # Yardstick: the one sort every plan needs (keep_last, pressure: the run by step, then mtime), over the
    # same records with the same key, in the same interpreter.
    stimes, _ = _timed(lambda: sorted(cands, key=recency), args.repeat)
    vtimes, found = _timed(lambda: violations(plan, cands, policy), args.repeat)
    pressure = sum(1 for d in plan.deletions if d.reasons[0].startswith("disk below min_free"))
    out = {
        "checkpoints": len(cands),
        "plan_s": _stats(times),
        "sort_s": _stats(stimes),
        "violations_s": _stats(vtimes),
        "kept": sum(d.keep for d in plan.decisions),
        "protected": sum(d.protected for d in plan.decisions),
        "deleted_by_rules": len(plan.deletions) - pressure,
        "deleted_by_pressure": pressure,
        "shortfall": plan.shortfall,
        "violations": found,
        "policy": str(policy),
        "heavy_modules": [m for m in HEAVY if m in sys.modules],
    }
    if args.profile:
        out["profile_tottime"] = _profile(lambda: plan_run(cands, policy, now, disk), 12, "tottime")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.inproc")
    ap.add_argument("mode", choices=("tree", "header", "safe_open", "deep", "retention"))
    ap.add_argument("path", help="the tree, file or checkpoint (retention: unused, give -)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--sample", help="tree: one checkpoint dir for the per-file breakdown")
    ap.add_argument("--kind", choices=("safetensors", "torch"), help="deep: which checker")
    ap.add_argument("--checkpoints", type=int, default=10_000, help="retention: checkpoints in the run")
    args = ap.parse_args()
    result = {"tree": mode_tree, "header": mode_header, "safe_open": mode_safe_open,
              "deep": mode_deep, "retention": mode_retention}[args.mode](args)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
