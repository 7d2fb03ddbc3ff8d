"""Progress: byte counters around a target, percent steps, ``mirror_progress`` in the service's log, and the
CLI's bars (mirror, restore, verify of a copy, verify --deep) on real checkpoints.

The bars are seen two ways: in-process with a recording ``Bar`` (what each bar was fed, against its
total), and once end to end on a real pseudo-terminal, where tqdm draws (and a pipe or --json gets none).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest
from structlog.testing import capture_logs

from ckptwatch import progressbar
from ckptwatch.config.mirror import MirrorConfig
from ckptwatch.engine import check_root
from ckptwatch.formats import _stream
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.mirror import service
from ckptwatch.mirror.manifest import OURS
from ckptwatch.mirror.progress import CountingTarget, PercentSteps
from ckptwatch.mirror.target import LocalTarget
from tests.helpers import REPO, cli_in_process, make_daemon, run_cli, two_trainer_runs

pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")  # apprise's


def test_percent_steps_every_ten_percent_at_most():
    seen: list[tuple[int, int]] = []
    steps = PercentSteps(1000, lambda p, b: seen.append((p, b)))
    for _ in range(34):
        steps.add(30)  # 3 % at a time: each multiple of 10 once, when crossed
    assert seen == [(10, 120), (20, 210), (30, 300), (40, 420), (50, 510), (60, 600), (70, 720), (80, 810),
                    (90, 900), (100, 1000)]
    seen.clear()
    steps = PercentSteps(1000, lambda p, b: seen.append((p, b)))
    steps.add(459)  # a jump over several steps: one event, the highest reached
    steps.add(5000)  # past the total (journal, manifest): 100 once, bytes clamped to the total
    steps.add(10)
    assert seen == [(40, 459), (100, 1000)]
    seen.clear()
    PercentSteps(0, lambda p, b: seen.append((p, b))).add(7)
    assert seen == [(100, 0)]


def test_percent_steps_from_many_threads_stay_in_order():
    seen: list[int] = []
    steps = PercentSteps(8000, lambda p, b: seen.append(p))
    threads = [threading.Thread(target=lambda: [steps.add(1) for _ in range(1000)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == list(range(10, 101, 10)) and steps.done == 8000


def test_counting_target_keeps_the_upload_protocol(tmp_path):
    """Writes are counted once written, reads with reads=True; commit and abort pass through; names the
    predicate refuses are not counted."""
    counts: list[int] = []
    target = CountingTarget(LocalTarget(str(tmp_path)), counts.append, reads=True,
                            counted=lambda name: not name.endswith(".json"))
    up = target.open_write("a/b.bin")
    up.write(b"x" * 10)
    up.write(memoryview(b"y" * 5))
    up.commit(1_000_000_000)
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"x" * 10 + b"y" * 5
    assert os.stat(tmp_path / "a" / "b.bin").st_mtime_ns == 1_000_000_000
    up = target.open_write("a/c.bin")
    up.write(b"z")
    up.abort()
    assert target.list("a") == {"b.bin": 15}  # the aborted temp file is gone
    meta = target.open_write("a/m.json")
    meta.write(b"{}")
    meta.commit()
    assert counts == [10, 5, 1]
    with target.open_read("a/b.bin") as f:
        buf = bytearray(8)
        assert f.readinto(buf) == 8 and f.read() == b"xxyyyyy"
    with target.open_read("a/m.json") as f:
        assert f.read() == b"{}"
    assert counts == [10, 5, 1, 8, 7]


def _report(run):
    [report] = check_root(str(run), CheckOptions(settle_seconds=0), time.time()).runs
    return report


class ListLog:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def info(self, event: str, **kw) -> None:
        self.events.append({"event": event, **kw})


def _check_progress(events: list[dict], report, backup) -> None:
    by_ckpt: dict[str, list[dict]] = {}
    for e in events:
        assert e["event"] == "mirror_progress" and e["run"] == report.root and str(backup) in e["target"]
        by_ckpt.setdefault(e["checkpoint"], []).append(e)
    assert sorted(by_ckpt) == sorted(v.path for v in report.checkpoints)
    for v in report.checkpoints:
        mine = by_ckpt[v.path]
        percents = [e["percent"] for e in mine]
        assert percents == sorted(set(percents)) and all(p % 10 == 0 for p in percents), percents
        assert percents[-1] == 100 and len(percents) >= 2  # a fresh copy writes every byte
        assert all(e["of_bytes"] == v.bytes and e["bytes"] <= v.bytes for e in mine)
        assert [e["bytes"] for e in mine] == sorted(e["bytes"] for e in mine) and mine[-1]["bytes"] == v.bytes


@pytest.mark.parametrize("parallel", [1, 3])
def test_run_job_logs_mirror_progress_for_large_copies(artefact, tmp_path, monkeypatch, parallel):
    """Above PROGRESS_MIN_BYTES (lowered to 1 byte here: the real Trainer checkpoints are 420 KB), each
    checkpoint logs percent steps up to 100 with its bytes; below it (the 1 GiB default), nothing."""
    report = _report(artefact("hf_full"))
    todo = list(reversed(report.checkpoints))
    log = ListLog()
    done = service.run_job(todo, report.root, MirrorConfig(to=str(tmp_path / "quiet"), parallel=parallel),
                           time.time(), log)
    assert [a.outcome.result for a in done] == ["committed"] * 3 and log.events == []
    monkeypatch.setattr(service, "PROGRESS_MIN_BYTES", 1)
    backup = tmp_path / "backup"
    config = MirrorConfig(to=str(backup), parallel=parallel)
    done = service.run_job(todo, report.root, config, time.time(), log)
    assert [a.outcome.result for a in done] == ["committed"] * 3
    _check_progress(log.events, report, backup)


def test_a_failing_progress_line_does_not_fail_the_copy(artefact, tmp_path, monkeypatch):
    """stdout gone (journald restarted): mirror_progress cannot be written, the copies still commit."""

    class BrokenLog:
        calls = 0

        def info(self, event: str, **kw) -> None:
            BrokenLog.calls += 1
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(service, "PROGRESS_MIN_BYTES", 1)
    report = _report(artefact("hf_full"))
    done = service.run_job(list(reversed(report.checkpoints)), report.root,
                           MirrorConfig(to=str(tmp_path / "backup")), time.time(), BrokenLog())
    assert [a.outcome.result for a in done] == ["committed"] * 3 and BrokenLog.calls >= 6


def test_the_service_logs_mirror_progress_through_its_logger(artefact, tmp_path, monkeypatch):
    """In the service, the worker's events reach the service's structlog logger."""
    monkeypatch.setattr(service, "PROGRESS_MIN_BYTES", 1)
    root = two_trainer_runs(artefact, tmp_path)
    backup = tmp_path / "backup"
    d = make_daemon(tmp_path / "state", root, watch={"mirror": {"to": str(backup)}})
    try:
        with capture_logs() as logs:
            d.judge_watch(d.config.watches[0])
            assert d.background.wait_idle(60)
            d.background.drain()
        progress = [e for e in logs if e["event"] == "mirror_progress"]
        assert {e["log_level"] for e in progress} == {"info"}
        for run in ("run-a", "run-b"):
            mine = [{k: v for k, v in e.items() if k != "log_level"} for e in progress
                    if e["run"] == str(root / run)]
            _check_progress(mine, _report(root / run), backup)
        assert len([e for e in logs if e["event"] == "mirror_committed"]) == 6
    finally:
        d.close()


class RecordingBar(progressbar.Bar):
    made: list[RecordingBar] = []

    def __init__(self, total: int, desc: str, **kw) -> None:
        super().__init__(total, desc, **kw)
        self.desc, self.closed = desc, False
        RecordingBar.made.append(self)

    def close(self) -> None:
        self.closed = True
        super().close()


@pytest.fixture
def bars(monkeypatch):
    """Bars drawn as on a terminal (into the redirected stderr), each recorded."""
    RecordingBar.made = []
    monkeypatch.setattr(progressbar, "wanted", lambda *, json, stream=None: not json)
    monkeypatch.setattr(progressbar, "Bar", RecordingBar)
    return RecordingBar.made


def test_mirror_restore_and_verify_bars_count_every_byte(artefact, tmp_path, bars):
    """mirror: one bar per checkpoint, fed every byte of its files; restore and verify of a copy: one bar,
    fed every byte the manifest lists; --json: no bar."""
    run = artefact("hf_full")
    report = _report(run)
    to = tmp_path / "backup"
    code, out, _ = cli_in_process(["mirror", str(run), "--to", str(to), "--settle", "0"])
    assert code == 0 and out.count("committed") == 3
    assert [(b.desc, b.total) for b in bars] == [(os.path.basename(v.path), v.bytes)
                                                 for v in reversed(report.checkpoints)]
    assert all(b.done == b.total > 0 and b.closed for b in bars)
    bars.clear()
    copy = to / "hf_full" / "checkpoint-6"
    code, out, err = cli_in_process(["restore", str(copy), str(tmp_path / "restored")])
    assert code == 0, err
    data = sum(p.stat().st_size for p in copy.iterdir() if p.name not in OURS)
    [b] = bars
    assert (b.desc, b.total, b.done, b.closed) == ("checkpoint-6", data, data, True)
    bars.clear()
    code, out, err = cli_in_process(["verify", str(copy)])
    assert code == 0, out + err
    [b] = bars
    assert (b.total, b.done, b.closed) == (data, data, True)
    bars.clear()
    for argv in (["mirror", str(run), "--to", str(tmp_path / "b2"), "--settle", "0", "--json"],
                 ["restore", str(copy), str(tmp_path / "r2"), "--json"], ["verify", str(copy), "--json"]):
        code, out, err = cli_in_process(argv)
        assert code == 0 and json.loads(out), err
    assert bars == []


def test_verify_deep_bar_counts_the_readers_streamed_bytes(artefact, bars):
    """verify --deep: one bar whose total is the checkpoint's bytes, fed by the format readers' streaming
    reads (safetensors in full, the torch zips' records); the hook is removed afterwards. Without --deep,
    no bar."""
    run = artefact("hf_full")
    ckpt = run / "checkpoint-6"
    total = sum(p.stat().st_size for p in ckpt.iterdir())
    code, out, err = cli_in_process(["verify", str(ckpt), "--deep", "--settle", "0"])
    assert code == 0, out + err
    [b] = bars
    assert (b.desc, b.total, b.closed) == ("checkpoint-6", total, True)
    big = (ckpt / "model.safetensors").stat().st_size + (ckpt / "optimizer.pt").stat().st_size
    assert big * 0.9 <= b.done <= total
    assert _stream._on_read is None
    bars.clear()
    code, out, err = cli_in_process(["verify", str(ckpt), "--settle", "0"])
    assert code == 0 and bars == []
    code, out, err = cli_in_process(["verify", str(ckpt / "model.safetensors"), "--deep", "--settle", "0"])
    assert code == 0, out + err
    [b] = bars
    assert b.total == (ckpt / "model.safetensors").stat().st_size and b.done == b.total


def _on_a_terminal(*args: str) -> tuple[int, str, str]:
    """``ckptwatch ARGS`` with stderr on a pseudo-terminal and stdout on a pipe: (code, stdout, terminal)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty has 0 columns
    proc = subprocess.Popen([sys.executable, "-m", "ckptwatch", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            proc.kill()
            raise AssertionError(f"no output for 60 s; so far {seen!r}")
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every holder of the terminal's other end is gone
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    out = proc.stdout.read().decode()
    return proc.wait(60), out, seen.decode(errors="replace")


def test_a_bar_on_a_terminal_and_none_on_a_pipe_or_with_json(artefact, tmp_path):
    """End to end, with the real tqdm: a mirror slowed by --max-rate to about two seconds draws a bar on a
    terminal's stderr; the same on a pipe, or with --json on a terminal, writes no bar."""
    run = artefact("hf_full")
    for name in ("checkpoint-2", "checkpoint-4"):
        shutil.rmtree(run / name)
    size = _report(run).checkpoints[-1].bytes
    rate = str(size // 3)  # the bucket's one second of burst, then two seconds of copying
    code, out, terminal = _on_a_terminal("mirror", str(run), "--to", str(tmp_path / "a"), "--max-rate", rate,
                                         "--settle", "0")
    assert code == 0 and "committed   checkpoint-6" in out, terminal
    assert "checkpoint-6:" in terminal and "%|" in terminal and "B/s" in terminal, terminal
    r = run_cli("mirror", str(run), "--to", str(tmp_path / "b"), "--max-rate", rate, "--settle", "0")
    assert r.returncode == 0 and "committed   checkpoint-6" in r.stdout
    assert r.stderr == ""
    code, out, terminal = _on_a_terminal("mirror", str(run), "--to", str(tmp_path / "c"), "--max-rate", rate,
                                         "--settle", "0", "--json")
    assert code == 0 and json.loads(out)["runs"][0]["mirror"]["checkpoints"][0]["result"] == "committed"
    assert terminal == ""
