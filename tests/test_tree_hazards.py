"""Hostile trees: symlink loops and escapes, non-UTF-8 names, unreadable files, dirs deleted mid-scan.

Each must give a clear finding and a finished scan: never a traceback, a hang, or a followed link.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ckptwatch.engine import check_root
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.layouts.hf_trainer import HfTrainer
from ckptwatch.model import Status
from tests.helpers import run_cli

SETTLED = CheckOptions(settle_seconds=0)


def _weights(dir_: Path, name: str = "model_step_10.safetensors") -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    path = dir_ / name
    save_file({"w": torch.ones(4, 4)}, str(path))
    return path


def test_symlink_loop_is_reported_and_scan_finishes(tmp_path: Path) -> None:
    """A directory symlink loop is not followed; the scan finishes and still judges real files."""
    root = tmp_path / "out"
    _weights(root / "run")
    (root / "run" / "loop").symlink_to(root / "run")
    (root / "self").symlink_to("self")
    report = check_root(str(root), SETTLED, time.time())
    assert [v.status for r in report.runs for v in r.checkpoints] == [Status.COMPLETE]
    kinds = {p.kind for p in report.problems} | {p.kind for r in report.runs for p in r.problems}
    assert "symlink_loop" in kinds


def test_symlink_outside_root_not_followed(tmp_path: Path) -> None:
    """A link to a directory outside the watched root is reported and its contents are not judged."""
    outside = tmp_path / "elsewhere"
    _weights(outside)
    root = tmp_path / "out"
    _weights(root / "run")
    (root / "escape").symlink_to(outside)
    report = check_root(str(root), SETTLED, time.time())
    judged = [v.path for r in report.runs for v in r.checkpoints]
    assert all(str(outside) not in p and "escape" not in p for p in judged)
    assert any(p.kind == "symlink_outside_root" and "escape" in p.file for p in report.problems)


def test_non_utf8_name_reported_and_json_serialisable(tmp_path: Path) -> None:
    """A non-UTF-8 file name is a bad_name warning; the JSON report still encodes (escaped)."""
    root = tmp_path / "out"
    good = _weights(root / "run")
    bad = os.path.join(os.fsencode(root / "run"), b"weird-\xff-step_20.safetensors")
    shutil.copyfile(good, bad)
    out = run_cli("once", "--settle", "0", "--json", str(root))
    assert out.returncode in (0, 1), out.stderr
    doc = json.loads(out.stdout)
    problems = [p for r in doc["runs"] for p in r["problems"]] + doc["problems"]
    assert any(p["kind"] == "bad_name" and "\\xff" in p["file"] for p in problems)
    assert "Traceback" not in out.stderr


def test_directory_deleted_mid_scan(artefact, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint rotated away between listing and judging is in_progress/deleted, not corrupt."""
    root = artefact("hf_full")
    real = HfTrainer.judge

    def rotate_then_judge(self, cand, opts):
        if cand.path.endswith("checkpoint-2"):
            shutil.rmtree(cand.path)
        return real(self, cand, opts)

    monkeypatch.setattr(HfTrainer, "judge", rotate_then_judge)
    run = check_root(str(root), SETTLED, time.time()).runs[0]
    v = run.checkpoints[0]
    assert v.path.endswith("checkpoint-2")
    assert v.status is Status.IN_PROGRESS
    assert {p.kind for p in v.problems} == {"deleted"}
    assert run.latest_resumable.endswith("checkpoint-6")


def test_file_deleted_mid_scan(artefact, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file vanishing between listing and reading (rotation) gives `deleted`, never a traceback."""
    import ckptwatch.layouts.hf_trainer as hf

    root = artefact("hf_full")
    real = hf.check_file

    def vanish(path, opts, **kw):
        if path.endswith("checkpoint-4/optimizer.pt"):
            os.unlink(path)
        return real(path, opts, **kw)

    monkeypatch.setattr(hf, "check_file", vanish)
    run = check_root(str(root), SETTLED, time.time()).runs[0]
    v = next(v for v in run.checkpoints if v.path.endswith("checkpoint-4"))
    assert v.status is Status.IN_PROGRESS
    assert any(p.kind == "deleted" and p.file.endswith("optimizer.pt") for p in v.problems)


def test_unreadable_file_is_not_corruption(tmp_path: Path) -> None:
    """A file ckptwatch cannot read is `unreadable` (incomplete), never `corrupt`; the message names the mode.

    Tests run as root, which reads anything; so the CLI runs under setpriv with the DAC override
    capabilities dropped, as an unprivileged service user would be.
    """
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and util-linux setpriv to run ckptwatch without read permission")
    root = tmp_path / "out"
    w = _weights(root / "run")
    os.chmod(w, 0o000)
    import subprocess
    import sys

    from tests.helpers import REPO

    out = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", sys.executable, "-m",
                          "ckptwatch", "once", "--settle", "0", "--json", str(root)],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert "Traceback" not in out.stderr, out.stderr
    doc = json.loads(out.stdout)
    (ck,) = doc["runs"][0]["checkpoints"]
    assert ck["status"] == "incomplete"
    (p,) = ck["problems"]
    assert p["kind"] == "unreadable" and "0000" in p["message"] and "read access" in p["message"]


def test_missing_path_is_usage_error(tmp_path: Path) -> None:
    """A root that does not exist is exit 2 with one clear line, no traceback."""
    out = run_cli("once", str(tmp_path / "nope"))
    assert out.returncode == 2
    assert "no such file or directory" in out.stderr and "Traceback" not in out.stderr


def test_empty_dir_has_no_checkpoints(tmp_path: Path) -> None:
    """An empty output dir: nothing found, exit 0 for once, exit 1 for latest."""
    assert run_cli("once", str(tmp_path)).returncode == 0
    out = run_cli("latest", str(tmp_path))
    assert out.returncode == 1 and "no checkpoints found" in out.stderr


def test_verify_looks_only_at_the_parent_dir(tmp_path: Path) -> None:
    """verify FILE judges the file with its own directory as context, without walking sibling trees."""
    from ckptwatch.discover import discover

    target = _weights(tmp_path / "out", "model_step_10.safetensors")
    _weights(tmp_path / "out" / "deep" / "run", "other_step_5.safetensors")
    runs = discover(str(tmp_path / "out"), max_depth=0).runs
    assert [os.path.basename(c.path) for r in runs for c in r.candidates] == ["model_step_10.safetensors"]
    out = run_cli("verify", "--settle", "0", "--json", str(target))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["checkpoint"]["status"] == "complete"


def test_large_run_judged_in_workers_matches_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run of hundreds of checkpoints judged by forked workers gives exactly the serial verdicts."""
    import threading

    import ckptwatch.engine as engine

    if (os.cpu_count() or 1) < 2 or threading.active_count() > 1:
        pytest.skip("the worker path needs 2 cores and a single-threaded process")
    root = tmp_path / "many"
    root.mkdir()
    first = _weights(root, "ckpt_step_0.safetensors")
    for i in range(1, 240):
        shutil.copyfile(first, root / f"ckpt_step_{i}.safetensors")
    for i in (17, 101, 239):
        p = root / f"ckpt_step_{i}.safetensors"
        os.truncate(p, p.stat().st_size - 3)
    now = time.time()
    parallel = check_root(str(root), SETTLED, now)
    monkeypatch.setattr(engine, "PARALLEL_MIN_CHECKPOINTS", 10**9)
    serial = check_root(str(root), SETTLED, now)
    assert parallel == serial
    bad = [v.step for v in parallel.runs[0].checkpoints if v.status is Status.CORRUPT]
    assert bad == [17, 101, 239]
    assert parallel.runs[0].latest_resumable.endswith("ckpt_step_238.safetensors")


def test_judgement_cache_reuses_unchanged_and_rereads_changed(artefact,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """With a cache, an unchanged checkpoint is not re-read; a changed one is, and its new verdict shows."""
    root = artefact("hf_full")
    cache: dict = {}
    first = check_root(str(root), SETTLED, time.time(), cache=cache)
    assert len(cache) == 3
    calls: list[str] = []
    real = HfTrainer.judge

    def counting(self, cand, opts):
        calls.append(os.path.basename(cand.path))
        return real(self, cand, opts)

    monkeypatch.setattr(HfTrainer, "judge", counting)
    again = check_root(str(root), SETTLED, time.time(), cache=cache)
    assert calls == [] and again.runs[0].checkpoints == first.runs[0].checkpoints
    weights = root / "checkpoint-4" / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 1)
    third = check_root(str(root), SETTLED, time.time(), cache=cache)
    assert calls == ["checkpoint-4"]
    assert [v.status for v in third.runs[0].checkpoints] == [Status.COMPLETE, Status.CORRUPT, Status.COMPLETE]
    shutil.rmtree(root / "checkpoint-2")
    check_root(str(root), SETTLED, time.time(), cache=cache)
    assert sorted(os.path.basename(p) for p in cache) == ["checkpoint-4", "checkpoint-6"]
