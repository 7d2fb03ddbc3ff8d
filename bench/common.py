"""What every benchmark driver shares: where the repo is, the child environment, and timing whole processes.

A module of its own so that ``bench.run`` (the driver) and ``bench.service`` (the service benchmark it
runs) both import it instead of each other. Like ``bench.run`` it imports neither torch nor numpy.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TREE_TEMPLATE_SHARD = "3KB"  # tiny GPT-2 split so the checkpoint holds 20 files (12 shards)
OLD = 3600.0  # generated files are dated an hour back: no checkpoint is "settling" even at the default 60 s


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop("CKPTWATCH_DEBUG", None)
    return env


def run_once(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in KiB, exit code) of one process; stdout and stderr go to /dev/null."""
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                         env=env or child_env())
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss, p.returncode


def measure(argv: list[str], repeat: int, warmup: int = 1) -> dict:
    """Median wall time (and peak RSS) of ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        run_once(argv)
    walls, rss, codes = [], [], []
    for _ in range(repeat):
        w, r, c = run_once(argv)
        walls.append(w)
        rss.append(r)
        codes.append(c)
    return {"argv": " ".join(argv), "median": statistics.median(walls), "min": min(walls), "max": max(walls),
            "n": repeat, "all": walls, "peak_rss_kib": max(rss), "exit_codes": sorted(set(codes))}


def check_call(argv: list[str], what: str, timeout: float = 600) -> str:
    r = subprocess.run(argv, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout,
                       check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed ({r.returncode}): {' '.join(argv)}\n{r.stderr[-3000:]}")
    return r.stdout


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def hf_template(work: Path) -> Path:
    """One real Trainer checkpoint (20 files), trained once and kept in the workdir."""
    ckpt = work / "hf-template" / "checkpoint-2"
    if (ckpt / "trainer_state.json").is_file() and (ckpt / "model.safetensors.index.json").is_file():
        return ckpt
    log("training a tiny GPT-2 with the transformers Trainer for the checkpoint template (~15 s)")
    tmp = work / "hf-template.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    check_call([PY, "-m", "bench.make_hf", str(tmp), TREE_TEMPLATE_SHARD], "HF Trainer template", timeout=300)
    shutil.rmtree(work / "hf-template", ignore_errors=True)
    os.replace(tmp, work / "hf-template")
    return ckpt
