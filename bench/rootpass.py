"""The service's whole-root pass against ``find`` on the same tree (issue 13), cold and warm.

    python -m bench.run --only rootpass              # 100 runs x 100 checkpoints x 10 files (100,000 files)
    python -m bench.run --only rootpass --rootpass-big   # 10,000 runs x 10 x 10 (1,000,000 files)
    python -m bench.run --only rootpass --rootpass-baseline DIR   # also DIR/ckptwatch's service, interleaved

The tree is ``bench/service.py``'s (``build_tree``: real Trainer checkpoints, hard links, an hour old).
Each repetition runs, back to back: ``find ROOT -type f -printf '%s %T@\\n'`` (the yardstick), two fresh
interpreters (``python -m bench.rootpass child MODE``) and find again:

- ``service``: the service's first pass (``passes.Judge``, empty judgement cache), which fills the cache,
  then its rescan three times (median; every checkpoint cached): ``warm``, what the service does every
  ``rescan_seconds``, the pass issue 13 is about;
- ``cold``: ``check_root`` with no cache, what ``once`` does (every checkpoint listed, stat'ed, read).

Ratios are medians of wall times against find's median (both sides of every repetition). RSS is read
from ``/proc/self/statm`` (after a ``gc.collect()``) in the service child after imports and after the
passes: the difference is the cache and the service's per-root memory. Interpreter start-up and imports
are not in the pass times. The verdicts of the three passes are compared (a digest of every Verdict):
a faster pass that changes a verdict makes the row invalid.

``--rootpass-baseline DIR`` (a directory holding another ``ckptwatch/`` package, e.g. main's from
``git archive HEAD ckptwatch | tar -x -C DIR``) adds that code's service child to every repetition, in
alternating order with ours, so a before/after comparison shares its load; its verdicts must agree too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import PY, check_call, child_env, loadavg, log, run_once


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _taken(result: Any) -> Any:
    """A pass with its runs taken: the service judges a whole-root pass's runs as it delivers them, so the
    pass is timed with its runs taken, as the service's loop takes them."""
    from dataclasses import replace

    return replace(result, runs=tuple(result.runs))


def _verdicts_digest(runs: Any) -> str:
    import hashlib

    text = repr(sorted((v.path, repr(v)) for r in runs for v in r.checkpoints))
    return hashlib.sha256(text.encode()).hexdigest()


def child(args: argparse.Namespace) -> None:
    """One fresh interpreter, one mode: ``cold`` (``once``'s check_root, no cache) or ``service`` (the
    service's first pass, then its warm rescans); results to ``args.out``."""
    import gc

    import ckptwatch
    from ckptwatch.config import ServiceConfig, WatchConfig
    from ckptwatch.engine import check_root
    from ckptwatch.layouts.base import CheckOptions
    from ckptwatch.passes import Engine, Judge

    res: dict = {"rss_imports_mib": _rss_mib(), "code": os.path.realpath(ckptwatch.__file__)}
    now = time.time()
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()

    def timed(fn: Callable[[], Any], profiled: bool = False) -> tuple[float, float, Any]:
        if prof and profiled:
            prof.enable()
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        w, c = time.perf_counter() - w, time.process_time() - c
        if prof and profiled:
            prof.disable()
        return w, c, out

    if args.mode == "cold":
        opts = CheckOptions(settle_seconds=60, stale_after=1800, second_look=True)
        w, c, rep = timed(lambda: check_root(args.root, opts, now), profiled=True)
        res["cold"] = {"wall": w, "cpu": c}
        runs = rep.runs
    else:
        service = ServiceConfig(settle_seconds=60)
        watch = WatchConfig(path=args.root)
        judge = Judge(Engine.default(), service, changed_paths=lambda verdicts: set())
        w, c, out = timed(lambda: _taken(judge.judge(watch, None, now)))
        res["first"] = {"wall": w, "cpu": c}
        first = _verdicts_digest(out.runs)
        del out
        gc.collect()
        res["rss_first_mib"] = _rss_mib()
        warm = []
        for i in range(args.warm_repeat):
            w, c, out = timed(lambda: _taken(judge.judge(watch, None, now)), profiled=i == 0)
            warm.append({"wall": w, "cpu": c})
        res["warm"] = {"wall": statistics.median(x["wall"] for x in warm),
                       "cpu": statistics.median(x["cpu"] for x in warm), "n": len(warm)}
        runs = out.runs
        res["first_equals_warm"] = first == _verdicts_digest(runs)
        res["cache_entries"] = sum(len(c) for c in judge.caches.values())
        gc.collect()
        res["rss_warm_mib"] = _rss_mib()
    res["digest"] = _verdicts_digest(runs)
    res["checkpoints"] = sum(len(r.checkpoints) for r in runs)
    res["runs"] = len(runs)
    statuses = [v.status.value for r in runs for v in r.checkpoints]
    res["statuses"] = {s: statuses.count(s) for s in sorted(set(statuses))}
    if prof:
        import io
        import pstats

        text = []
        for sort in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(sort).print_stats(30)
            text.append(f"=== {args.mode} pass, by {sort}\n{buf.getvalue().strip()}")
        Path(args.profile).write_text("\n\n".join(text) + "\n")
    Path(args.out).write_text(json.dumps(res))


def _child_run(root: str, mode: str, profile: str | None = None, code: str | None = None) -> dict:
    """One child; with ``code``, its ``ckptwatch`` package is the one in that directory (this repo's
    ``bench`` still runs it: the child's working directory is ``code``, first on its ``sys.path``)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tf:
        out = tf.name
    try:
        argv = [PY, "-m", "bench.rootpass", "child", mode, root, "--out", out]
        if profile:
            argv += ["--profile", profile]
        if code is None:
            check_call(argv, f"rootpass {mode} child", timeout=7200)
        else:
            env = child_env()
            env["PYTHONPATH"] = os.pathsep.join((code, env["PYTHONPATH"]))
            r = subprocess.run(argv, cwd=code, env=env, capture_output=True, text=True, timeout=7200,
                               check=False)
            if r.returncode != 0:
                raise RuntimeError(f"rootpass {mode} child of {code} failed ({r.returncode}):\n"
                                   f"{r.stderr[-3000:]}")
        res = json.loads(Path(out).read_text())
        if code is not None and not res.get("code", "").startswith(os.path.realpath(code)):
            raise RuntimeError(f"the baseline child imported ckptwatch from {res.get('code')}, not {code}")
        return res
    finally:
        os.unlink(out)


def _find(root: str) -> dict:
    """find's wall and CPU (user + sys) seconds, output to /dev/null."""
    t = time.perf_counter()
    p = subprocess.Popen(["find", root, "-type", "f", "-printf", "%s %T@\n"], stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    return {"wall": time.perf_counter() - t, "cpu": ru.ru_utime + ru.ru_stime,
            "exit": os.waitstatus_to_exitcode(status)}


def make_tree(work: Path, runs: int, per_run: int) -> tuple[Path, dict]:
    """service.py's tree, reused when a kept one (``--keep``) has this shape: 1,000,000 files build slowly."""
    from bench.common import hf_template
    from bench.service import LINKS_PER_TEMPLATE, CkptWriter, build_big_tree, build_tree, make_template

    base = work / f"rootpass-{runs}x{per_run}"
    root = base / "root"
    stamp = base / "shape.json"
    if stamp.is_file() and len(os.listdir(root)) == runs:
        return root, json.loads(stamp.read_text())
    writer = CkptWriter(hf_template(work))
    try:
        template = make_template(base, writer)
    finally:
        writer.close()
    t = time.perf_counter()
    if runs <= LINKS_PER_TEMPLATE // per_run:
        shape = build_tree(template, root, runs, per_run)
    else:
        shape = build_big_tree(template, root, runs, per_run)
    shape["build_s"] = time.perf_counter() - t
    stamp.write_text(json.dumps(shape))
    return root, shape


def bench_rootpass(args: argparse.Namespace, work: Path, prof_dir: Path) -> dict:
    runs = 10_000 if args.rootpass_big else args.rootpass_runs
    root, shape = make_tree(work, runs, 10 if args.rootpass_big else 100)  # big: issue 13's 1,000,000 files
    log(f"rootpass: tree {shape}")
    res: dict = {"tree": shape, "root": str(root), "loadavg_before": loadavg(), "rows": []}
    run_once(["find", str(root), "-type", "f"])  # warm the dentry/inode caches for both sides
    base = getattr(args, "rootpass_baseline", None)
    if base:
        base = os.path.realpath(base)
        if not os.path.isfile(os.path.join(base, "ckptwatch", "__init__.py")):
            raise SystemExit(f"--rootpass-baseline {base}: no ckptwatch/__init__.py there; extract one with "
                             f"git archive HEAD ckptwatch | tar -x -C {base}")
        res["baseline"] = base
    for i in range(args.repeat):
        f = _find(str(root))
        if base and i % 2:
            svc_base = _child_run(str(root), "service", code=base)
        svc = _child_run(str(root), "service")
        if base and not i % 2:
            svc_base = _child_run(str(root), "service", code=base)
        cold = _child_run(str(root), "cold")
        f2 = _find(str(root))
        row = {"find": f, "find_after": f2, "service": svc, "cold": cold, "load": loadavg()[0]}
        if base:
            row["service_base"] = svc_base
        res["rows"].append(row)
        log(f"rootpass {i + 1}/{args.repeat}: find {f['wall']:.2f}/{f2['wall']:.2f} s, cold "
            f"{cold['cold']['wall']:.2f} s, first {svc['first']['wall']:.2f} s, "
            f"warm {svc['warm']['wall']:.2f} s (cpu {svc['warm']['cpu']:.2f} s)"
            + (f", baseline warm {svc_base['warm']['wall']:.2f} s (cpu {svc_base['warm']['cpu']:.2f} s)"
               if base else "")
            + f", RSS {svc['rss_imports_mib']:.0f} -> {svc['rss_warm_mib']:.0f} MiB, load {row['load']:.2f}")
    res["loadavg_after"] = loadavg()
    if args.rootpass_profile:
        for mode in ("service", "cold"):
            _child_run(str(root), mode, str(prof_dir / f"profile-rootpass-{mode}.txt"))
    med = statistics.median
    find_wall = med([x for r in res["rows"] for x in (r["find"]["wall"], r["find_after"]["wall"])])
    res["find_wall"] = find_wall
    res["find_cpu"] = med([x for r in res["rows"] for x in (r["find"]["cpu"], r["find_after"]["cpu"])])
    for k, side in (("cold", "cold"), ("first", "service"), ("warm", "service")):
        res[f"{k}_wall"] = med(r[side][k]["wall"] for r in res["rows"])
        res[f"{k}_cpu"] = med(r[side][k]["cpu"] for r in res["rows"])
        res[f"{k}_ratio"] = res[f"{k}_wall"] / find_wall
    if base:
        for k in ("first", "warm"):
            res[f"base_{k}_wall"] = med(r["service_base"][k]["wall"] for r in res["rows"])
            res[f"base_{k}_cpu"] = med(r["service_base"][k]["cpu"] for r in res["rows"])
            res[f"base_{k}_ratio"] = res[f"base_{k}_wall"] / find_wall
        res["base_rss_warm_mib"] = med(r["service_base"]["rss_warm_mib"] for r in res["rows"])
    for k in ("rss_imports_mib", "rss_first_mib", "rss_warm_mib"):
        res[k] = med(r["service"][k] for r in res["rows"])
    res["cache_entries"] = res["rows"][0]["service"]["cache_entries"]
    res["cache_rss_per_checkpoint_bytes"] = ((res["rss_warm_mib"] - res["rss_imports_mib"]) * 2**20
                                             / max(1, res["cache_entries"]))
    last = res["rows"][-1]
    res["valid"] = (all(r["service"]["first_equals_warm"] and r["service"]["digest"] == r["cold"]["digest"]
                        for r in res["rows"])
                    and last["cold"]["statuses"] == {"complete": shape["checkpoints"]}
                    and all(r["find"]["exit"] == 0 for r in res["rows"])
                    and all(r["service_base"]["first_equals_warm"] and r["service_base"]["digest"]
                            == r["cold"]["digest"] for r in res["rows"] if base))
    res["verdicts_digest"] = last["cold"]["digest"]
    log(f"rootpass: find {find_wall:.2f} s (cpu {res['find_cpu']:.2f} s); cold x{res['cold_ratio']:.2f}, "
        f"first x{res['first_ratio']:.2f}, warm x{res['warm_ratio']:.2f} (cpu {res['warm_cpu']:.2f} s)"
        + (f", baseline warm x{res['base_warm_ratio']:.2f} (cpu {res['base_warm_cpu']:.2f} s)"
           if base else "")
        + f"; valid {res['valid']} (verdicts {res['verdicts_digest'][:12]})")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rootpass")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("child", help="(internal) one interpreter's passes over ROOT")
    c.add_argument("mode", choices=("cold", "service"))
    c.add_argument("root")
    c.add_argument("--out", required=True)
    c.add_argument("--profile", default=None, help="cProfile tables of the cold (or first warm) pass")
    c.add_argument("--warm-repeat", type=int, default=3)
    args = ap.parse_args(argv)
    child(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
