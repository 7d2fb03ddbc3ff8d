"""Start-up of the command line (issue 13): whole processes, each beside its yardstick, in one run.

    python -m bench.startup                 # about 1 minute (trains the Trainer template once if absent)
    python -m bench.startup --repeat 21     # more rounds; --workdir, --header-gb, --keep, --json FILE

A launcher runs ``ckptwatch latest RUN`` before every restart and a cluster runs it on thousands of nodes,
so what counts is the whole process: the interpreter, the imports, the parser and the check. Rows:

- ``ckptwatch latest RUN`` (a real 3-checkpoint Trainer run, 20 files each) against ``python -c pass``
  (target: floor <= 3x, goal <= 2x);
- ``ckptwatch verify FILE`` on a 10 GB sparse safetensors file (1,000 tensors) against a process that
  opens it with ``safetensors.safe_open(FILE, "np")`` and reads every tensor's shape (floor <= 1.0x);
- for context: ``ckptwatch --help`` and ``ckptwatch once RUN`` against ``python -c pass``.

Each ckptwatch row is run twice, through the ``ckptwatch`` console script of the venv (what users run)
and as ``python -m ckptwatch``. Method: every command once as a warm-up, then ``--repeat`` rounds, each
running every command once in turn (so load changes hit all of them alike); the median wall time of each,
from ``Popen`` to ``wait4``, stdout and stderr to /dev/null. Every process, the yardsticks included, runs
with the same interpreter, the same venv (its ``site`` and the editable-install finder) and
``PYTHONPATH`` = this repo, with bytecode cached in ``WORKDIR/pycache`` (``PYTHONPYCACHEPREFIX``), as an
installed package has its ``.pyc`` files: compiling the sources on every start would be measured
otherwise (``PYTHONDONTWRITEBYTECODE`` is removed for the children).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from bench.common import PY, REPO, child_env, hf_template, loadavg, log
from bench.run import build_tree, make_sparse_safetensors

SAFE_OPEN = ("import sys\nfrom safetensors import safe_open\n"
             "with safe_open(sys.argv[1], 'np') as f:\n"
             "    shapes = [f.get_slice(k).get_shape() for k in f.keys()]\n")
TARGETS = {"latest": ("python_pass", 3.0, 2.0), "verify": ("safe_open", 1.0, None)}


def _env(work: Path) -> dict[str, str]:
    env = child_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def cases(run: Path, big: Path) -> dict[str, list[str]]:
    """Row name -> argv. ``cs:`` rows run the console script, ``m:`` rows ``python -m ckptwatch``."""
    script = Path(PY).parent / "ckptwatch"
    out: dict[str, list[str]] = {"python_pass": [PY, "-c", "pass"],
                                 "safe_open": [PY, "-c", SAFE_OPEN, str(big)]}
    commands = {"help": ["--help"], "latest": ["latest", str(run)], "once": ["once", str(run)],
                "verify": ["verify", str(big)]}
    for name, args in commands.items():
        if script.is_file():
            out[f"cs:{name}"] = [str(script), *args]
        out[f"m:{name}"] = [PY, "-m", "ckptwatch", *args]
    return out


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds (user + system), peak RSS in KiB, exit code) of one process, started in
    the directory that holds the ckptwatch it runs (``python -m`` puts the working directory first)."""
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         cwd=env["PYTHONPATH"].split(os.pathsep)[0], env=env)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, p.returncode


def measure_all(argvs: dict[str, list[str]], envs: dict[str, dict[str, str]], repeat: int) -> dict[str, dict]:
    """Every argv once (warm-up: compiles the bytecode), then ``repeat`` rounds of every argv in turn.
    The CPU time is kept beside the wall time: on a loaded machine it shows what the process itself cost."""
    walls: dict[str, list[float]] = {k: [] for k in argvs}
    cpus: dict[str, list[float]] = {k: [] for k in argvs}
    codes: dict[str, set[int]] = {k: set() for k in argvs}
    rss: dict[str, int] = dict.fromkeys(argvs, 0)
    for name, argv in argvs.items():
        run_once(argv, envs[name])
    names = list(argvs)
    for i in range(repeat):
        for name in names[i % len(names):] + names[:i % len(names)]:  # a different first command each round
            wall, cpu, peak, code = run_once(argvs[name], envs[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
            codes[name].add(code)
            rss[name] = max(rss[name], peak)
    return {k: {"argv": " ".join(argvs[k]), "median": statistics.median(w), "min": min(w), "max": max(w),
                "cpu_median": statistics.median(cpus[k]), "n": len(w), "exit_codes": sorted(codes[k]),
                "peak_rss_kib": rss[k]} for k, w in walls.items()}


def imported(argv: list[str], env: dict[str, str]) -> list[str]:
    """The modules ``argv`` (a ckptwatch command) imports, from ``-X importtime``, in import order."""
    r = subprocess.run(argv, cwd=env["PYTHONPATH"].split(os.pathsep)[0], capture_output=True, text=True,
                       env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, check=False)
    return [line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines()
            if line.startswith("import time:") and not line.rstrip().endswith("imported package")]


def table(res: dict[str, dict]) -> list[str]:
    rows = [f"{'command':<14} {'median':>9} {'min':>8} {'cpu':>8} {'yardstick':<12} {'ratio':>6} "
            f"{'cpu ratio':>9}  target (on the wall-time ratio)"]
    for name, r in res.items():
        base = name.split(":", 1)[-1]
        ref, floor, goal = TARGETS.get(base, ("python_pass" if ":" in name else None, None, None))
        ratio = r["median"] / res[ref]["median"] if ref else None
        cpu_ratio = r["cpu_median"] / res[ref]["cpu_median"] if ref else None
        target = ""
        if floor is not None and ratio is not None:
            met = "goal met" if goal and ratio <= goal else ("floor met" if ratio <= floor else "NOT met")
            target = f"floor <= {floor:g}x" + (f", goal <= {goal:g}x" if goal else "") + f": {met}"
        shown = "" if ratio is None else f"{ratio:5.2f}x"
        cpu_shown = "" if cpu_ratio is None else f"{cpu_ratio:5.2f}x"
        rows.append(f"{name:<14} {r['median'] * 1e3:7.1f}ms {r['min'] * 1e3:6.1f}ms "
                    f"{r['cpu_median'] * 1e3:6.1f}ms {ref or '':<12} {shown:>6} {cpu_shown:>9}  {target}"
                    + ("" if r["exit_codes"] == [0] else f"  exit {r['exit_codes']}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=15, help="rounds (default 15; at least 11)")
    ap.add_argument("--workdir", default="/tmp/ckptwatch-bench",
                    help="shares the Trainer template with bench.run; the rest goes to WORKDIR/startup")
    ap.add_argument("--header-gb", type=float, default=10.0, help="the sparse safetensors file's data size")
    ap.add_argument("--json", default=str(REPO / "bench" / "out" / "startup.json"),
                    help="where the results go")
    ap.add_argument("--keep", action="store_true", help="keep the run dir and the big file")
    ap.add_argument("--baseline", metavar="DIR",
                    help="also run `python -m ckptwatch` from DIR (a directory holding another version's "
                         "ckptwatch/, e.g. `git archive BASE ckptwatch | tar -x -C DIR`): rows base:*, for a "
                         "before/after in one run")
    args = ap.parse_args(argv)
    if args.repeat < 11:
        ap.error("--repeat must be 11 or more (a median of fewer runs of a 30 ms process is noise)")
    work = Path(args.workdir)
    base = work / "startup"
    shutil.rmtree(base, ignore_errors=True)
    run = build_tree(hf_template(work), base / "tree", 3, copy=True) / "run"
    big = make_sparse_safetensors(base / "header" / "model.safetensors", int(args.header_gb * 1e9), 1000,
                                  write_tail=True)
    env = _env(base)
    argvs = cases(run, Path(big["path"]))
    envs = dict.fromkeys(argvs, env)
    if args.baseline:
        old = {**env, "PYTHONPATH": str(Path(args.baseline).resolve()),
               "PYTHONPYCACHEPREFIX": str(base / "pycache-baseline")}
        for name in ("help", "latest", "once", "verify"):
            argvs[f"base:{name}"] = argvs[f"m:{name}"]
            envs[f"base:{name}"] = old
    load_before = loadavg()
    log(f"startup: {len(argvs)} commands x {args.repeat} rounds, load {load_before}")
    t = time.perf_counter()
    res = measure_all(argvs, envs, args.repeat)
    out = {"results": res, "loadavg_before": load_before, "loadavg_after": loadavg(), "file": big,
           "run": str(run), "seconds": time.perf_counter() - t,
           "imports": {k: imported(argvs[k], envs[k]) for k in argvs if k.startswith(("m:", "base:"))}}
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    print("\n".join(table(res)))
    print(f"load average before {load_before}, after {out['loadavg_after']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    bad = [k for k, r in res.items() if r["exit_codes"] != [0]]
    if bad:
        log(f"startup: WARNING non-zero exit codes: {bad} (a command that fails early is not a measurement)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
