"""Loss-watch text reader throughput: ``python -m bench.loss [--size-mb N] [--repeat R] [--keep]``.

Writes a realistic training log (Hugging Face console dicts, one in ``1/LOSS_EVERY`` lines, among INFO /
WARNING / progress-bar noise; a resume midway, where the step goes back) of ``--size-mb`` (default 1024),
then times in the same run, after one warm-up read so all three read from the page cache:

- ours: ``RunLossWatcher(dir).poll(final=True)`` in a fresh child interpreter (the real code path: tailer,
  chunked bytes regex, segments, the rule), its peak RSS from ``os.wait4``;
- ``cat FILE > /dev/null`` (the floor: reading the bytes);
- ``grep -c loss FILE`` (the usual way to look at a log).

Target: ours >= 100 MB/s with memory that does not grow with the file. Prints a table and writes
``bench/out/loss.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
LOSS_EVERY = 4  # one loss line in four: logging_steps=1 with a noisy logger


def make_log(path: Path, size_mb: int, seed: int = 0) -> tuple[int, int]:
    """Write the log; return (loss lines, resume step)."""
    rnd = random.Random(seed)
    target = size_mb << 20
    noise = [
        "INFO 2026-11-25 20:01:{s:02d} trainer.py:2311 >> Saving model checkpoint to out/checkpoint-{n}",
        "WARNING 2026-11-25 20:01:{s:02d} torch/utils/checkpoint.py:91: None of the inputs have "
        "requires_grad=True",
        " {p:3d}%|#########5| {n}/400000 [1:02:{s:02d}<3:11:02, 11.32it/s]",
        "DEBUG dataloader worker 3: fetched batch {n} in 0.0{s:02d}s (queue depth 4)",
        "[rank0]: step_time={s}.{p:03d}ms tokens_per_second={n}",
    ]
    step, lines, written = 0, 0, 0
    resume_at = None
    buf: list[str] = []
    with open(path, "w") as f:
        while written < target:
            buf.clear()
            for _ in range(4096):
                if rnd.random() < 1 / LOSS_EVERY:
                    step += 1
                    loss = 2.0 / (1 + step / 2000) + rnd.random() * 0.01
                    buf.append(f"{{'loss': '{loss:.4g}', 'grad_norm': '{rnd.random() * 3:.4g}', "
                               f"'learning_rate': '{1e-4 * (1 - step / 10**6):.4g}', 'epoch': "
                               f"'{step / 3000:.4g}', 'step': {step}}}")
                    lines += 1
                else:
                    buf.append(rnd.choice(noise).format(s=rnd.randrange(60), n=step, p=rnd.randrange(100)))
            block = "\n".join(buf) + "\n"
            f.write(block)
            written += len(block)
            if resume_at is None and written >= target // 2:
                resume_at = step - 500 if step > 1000 else step // 2
                step = resume_at  # the resumed process logs from the checkpoint's step again
    return lines, resume_at or 0


CHILD = r"""
import json, os, sys, time
from ckptwatch.losswatch import LossSettings
from ckptwatch.losswatch.watcher import RunLossWatcher
t = time.perf_counter()
w = RunLossWatcher(sys.argv[1], LossSettings(sources=("text",)))
w.poll(final=True)
dt = time.perf_counter() - t
rep = w.report()
print(json.dumps({"seconds": dt, "points": sum(s.points for s in rep.segments),
                  "resumes": [r.to_json() for r in rep.resumes]}))
"""


def run_proc(argv: list[str], stdout: int = subprocess.DEVNULL) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB) and stdout of one process."""
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, cwd=REPO, text=True)
    out = p.stdout.read() if p.stdout else ""
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t
    err = p.stderr.read() if p.stderr else ""
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise RuntimeError(f"{argv[0]} failed: {err[-2000:]}")
    p.returncode = os.waitstatus_to_exitcode(status)
    return dt, ru.ru_maxrss, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/ckptwatch-bench-loss")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    run = work / "run"
    run.mkdir(parents=True, exist_ok=True)
    log = run / "train.log"
    if not log.exists() or log.stat().st_size < (args.size_mb << 20):
        t = time.perf_counter()
        loss_lines, resume_at = make_log(log, args.size_mb)
        print(f"wrote {log} ({log.stat().st_size / 2**20:.0f} MiB, {loss_lines} loss lines, resume at step "
              f"{resume_at}) in {time.perf_counter() - t:.1f}s", flush=True)
    size_mb = log.stat().st_size / 2**20
    run_proc(["cat", str(log)])  # warm the page cache
    results: dict[str, list[float]] = {"ours": [], "cat": [], "grep -c loss": []}
    rss: list[int] = []
    detail: dict = {}
    inner_s: list[float] = []
    for _ in range(args.repeat):
        dt, maxrss, out = run_proc([sys.executable, "-c", CHILD, str(run)], stdout=subprocess.PIPE)
        inner = json.loads(out)
        detail = inner
        inner_s.append(inner["seconds"])
        results["ours"].append(dt)
        rss.append(maxrss)
        results["cat"].append(run_proc(["cat", str(log)])[0])
        # stdout must not be /dev/null: GNU grep then stops at the first match
        results["grep -c loss"].append(run_proc(["grep", "-c", "loss", str(log)], stdout=subprocess.PIPE)[0])
    py_start = run_proc([sys.executable, "-c", "import ckptwatch.losswatch.watcher"])[0]
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nfile: {size_mb:.0f} MiB, {detail['points']} loss points, resumes found: "
          f"{[(r['at_step'], r['from_step']) for r in detail['resumes']]}")
    print(f"{'reader':14} {'median s':>9} {'MiB/s':>8}  vs ours")
    for k, v in med.items():
        print(f"{k:14} {v:9.2f} {size_mb / v:8.0f}  {v / med['ours']:.2f}x")
    print(f"ours in-process (without interpreter start {py_start:.2f}s): "
          f"{size_mb / statistics.median(inner_s):.0f} MiB/s")
    print(f"ours peak RSS: {max(rss) / 1024:.0f} MiB (max of {len(rss)} runs); target >= 100 MiB/s: "
          f"{'met' if size_mb / med['ours'] >= 100 else 'NOT met'}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "loss.json").write_text(json.dumps({"size_mib": size_mb, "median_seconds": med, "runs": results,
                                               "peak_rss_kib": rss, "detail": detail,
                                               "loadavg": os.getloadavg()}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
