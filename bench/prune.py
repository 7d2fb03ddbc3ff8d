"""Benchmark 6, second part: what deleting a big checkpoint costs the service's loop.

A run of two real Trainer checkpoints (the bench template); the older one also holds ``--prune-files``
files of ``--prune-gb`` GB in all, their blocks really allocated (``posix_fallocate``: the same extents to
free as written data, without writing 10 GB first). The retention sink (``keep_last = 1``) gets the run's
report as the loop would hand it: the time ``judged()`` takes is what the loop pays (the plan and a
``submit``); the worker then re-judges the run from the disk, renames the checkpoint into the trash and
removes it. Yardstick: ``rm -rf`` of an identical tree, timed in the same run.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import hf_template, log


def _payload(ckpt: Path, total_bytes: int, files: int) -> None:
    extra = ckpt / "extra_state"
    extra.mkdir(parents=True, exist_ok=True)
    each = max(1, total_bytes // files)
    for i in range(files):
        fd = os.open(extra / f"part-{i:05d}.dat", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, each)
        finally:
            os.close(fd)


def _build(work: Path, total_bytes: int, files: int) -> Path:
    template = hf_template(work)
    run = work / "prune" / "run"
    shutil.rmtree(run.parent, ignore_errors=True)
    run.mkdir(parents=True)
    for step in (1, 2):
        dest = run / f"checkpoint-{step}"
        shutil.copytree(template, dest)
        state = dest / "trainer_state.json"
        import json

        doc = json.loads(state.read_text())
        doc["global_step"] = step
        state.write_text(json.dumps(doc))
    _payload(run / "checkpoint-1", total_bytes, files)
    old = time.time() - 3600
    for p in (run / "checkpoint-1").rglob("*"):
        os.utime(p, (old, old))
    return run


class _Quiet:
    """Alerts and log sinks that drop everything (the bench times the sink, not structlog)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


def measure_delete(work: Path, total_bytes: int, files: int, repeat: int) -> dict:
    from ckptwatch.config import WatchConfig
    from ckptwatch.config.retention import RetentionConfig
    from ckptwatch.engine import check_root, check_run_dir
    from ckptwatch.layouts.base import CheckOptions
    from ckptwatch.retention.service import RetentionSink
    from ckptwatch.sinks.base import Background, FaultReporter

    loop_ms, worker_s, rm_s = [], [], []
    opts = CheckOptions(settle_seconds=0)
    for i in range(repeat):
        run = _build(work, total_bytes, files)
        watch = WatchConfig(path=str(run), retention=RetentionConfig(keep_last=1))
        (report,) = check_root(str(run), opts, time.time()).runs
        quiet = _Quiet()
        background = Background()

        def rejudge(w: WatchConfig, root: str, now: float) -> Any:
            return next(iter(check_run_dir(root, opts, now) or []), None)

        sink = RetentionSink(alerts=quiet, faults=FaultReporter(quiet, quiet, time.time),
                             background=background, rejudge=rejudge, log=quiet)
        sink._recovered.add(report.root)  # the first-sight trash look is not what is measured here
        t0 = time.perf_counter()
        sink.judged(watch, report, time.time())
        t1 = time.perf_counter()
        assert background.wait_idle(600)
        t2 = time.perf_counter()
        background.drain()
        background.close(1.0)
        gone = not (run / "checkpoint-1").exists() and (run / "checkpoint-2").exists()
        if not gone:
            raise RuntimeError("the retention sink did not delete checkpoint-1")
        loop_ms.append((t1 - t0) * 1e3)
        worker_s.append(t2 - t1)
        # the yardstick: rm -rf of the same tree, built the same way
        run = _build(work, total_bytes, files)
        t0 = time.perf_counter()
        subprocess.run(["rm", "-rf", str(run / "checkpoint-1")], check=True)
        rm_s.append(time.perf_counter() - t0)
        log(f"retention delete {i + 1}/{repeat}: loop {loop_ms[-1]:.2f} ms, worker {worker_s[-1]:.2f} s, "
            f"rm -rf {rm_s[-1]:.2f} s")
    shutil.rmtree(work / "prune", ignore_errors=True)
    return {"bytes": total_bytes, "files": files,
            "loop_ms": {"median": statistics.median(loop_ms), "max": max(loop_ms), "runs": loop_ms},
            "worker_s": {"median": statistics.median(worker_s), "runs": worker_s},
            "rm_rf_s": {"median": statistics.median(rm_s), "runs": rm_s}}
