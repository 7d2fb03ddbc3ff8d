"""Loss sources on real files: text patterns, JSON lines, CSV, trainer_state.json, tailing."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ckptwatch.losswatch.parse import BUILTIN_PATTERNS, parse_log_history, parse_text_chunk, patterns_for
from ckptwatch.losswatch.settings import LossSettings
from ckptwatch.losswatch.sources import SourceFile, discover
from ckptwatch.losswatch.tail import Tailer
from ckptwatch.losswatch.watcher import RunLossWatcher, analyse_run

S = LossSettings()


def _steps_values(pts):
    return [(p.step, p.value) for p in pts]


def test_text_patterns_builtin():
    """HF dicts (5.x quoted, 4.x bare, step key or ordinal), Epoch/Steps lines and MindSpore lines parse."""
    text = (b"{'loss': '0.0898', 'grad_norm': '0.5', 'learning_rate': '1e-05', 'epoch': '2', 'step': 70}\n"
            b"{'eval_loss': 0.5, 'epoch': 2.0}\n"
            b"{'loss': 0.0901, 'learning_rate': 1e-05, 'epoch': 2.0}\n"
            b"Epoch: 2, Steps: 70070, Batch: 21771, Loss: 0.0898\n"
            b"[INFO] { Epoch:[  2/  3], step:[   42/  100], loss: 2.31, per_step_time: 120ms }\n"
            b"{'loss': 'nan', 'epoch': '2', 'global_step': 71}\n"
            b"noise: Loss: not-a-number\n")
    pts, ordinal = parse_text_chunk(text, BUILTIN_PATTERNS, 0)
    got = _steps_values(pts)
    assert got[:4] == [(70, 0.0898), (2, 0.0901), (70070, 0.0898), (142, 2.31)]
    assert got[4][0] == 71 and math.isnan(got[4][1]) and len(got) == 5 and ordinal == 5


def test_text_lazy_parser_matches_eager():
    """The bulk (lazy) parser finds the same points as the eager one, including ordinals and a
    non-number that is dropped."""
    from ckptwatch.losswatch.parse import parse_text_chunk_lazy

    text = (b"{'loss': '1.5', 'epoch': '0.1'}\n{'loss': 'n/a', 'step': 3}\nEpoch: 1, Steps: 9, Batch: 2, "
            b"Loss: 0.5\n"
            b"{'loss': 1.25, 'step': 11}\n")
    eager, n1 = parse_text_chunk(text, BUILTIN_PATTERNS, 4)
    lazy, n2 = parse_text_chunk_lazy(text, BUILTIN_PATTERNS, 4)
    assert _steps_values(eager) == _steps_values(lazy) == [(5, 1.5), (9, 0.5), (11, 1.25)] and n1 == n2 == 7


def test_mindspore_epoch_steps_are_global():
    """MindFormers' per-epoch step becomes a global step, so a new epoch is not a resume."""
    log = "".join(f"{{ Epoch:[{e:3d}/  3], step:[{s:5d}/   10], loss: 0.5 }}\n" for e in (1, 2, 3)
                  for s in range(1, 11))
    pts, _ = parse_text_chunk(log.encode(), BUILTIN_PATTERNS, 0)
    assert [p.step for p in pts] == list(range(1, 31))


def test_text_custom_regex():
    """A configured regex with (?P<step>) and (?P<loss>) groups is used besides the built-ins."""
    pats = patterns_for(r"it=(?P<step>\d+) train_loss=(?P<loss>[\d.]+)")
    pts, _ = parse_text_chunk(b"it=5 train_loss=1.25\nit=6 train_loss=1.5\n", pats, 0)
    assert _steps_values(pts) == [(5, 1.25), (6, 1.5)]


def test_log_history_skips_eval_and_summary():
    """trainer_state.json log_history: train entries only; eval and the end-of-training summary skipped."""
    hist = [{"loss": 2.0, "step": 1}, {"eval_loss": 1.9, "step": 1}, {"loss": 1.5, "step": 2},
            {"train_runtime": 3.0, "train_loss": 1.7, "step": 2}]
    assert _steps_values(parse_log_history(hist, S.metric)) == [(1, 2.0), (2, 1.5)]


def test_tailer_partial_line_waits(tmp_path: Path):
    """An unfinished last line is held back until its newline arrives; nothing is read twice."""
    p = tmp_path / "train.log"
    p.write_bytes(b"{'loss': '1.0', 'step': 1}\n{'loss': '0.")
    t = Tailer()
    first = b"".join(c.data for c in t.read(str(p)))
    assert first == b"{'loss': '1.0', 'step': 1}\n"
    with open(p, "ab") as f:
        f.write(b"9', 'step': 2}\n")
    second = b"".join(c.data for c in t.read(str(p)))
    assert second == b"{'loss': '0.9', 'step': 2}\n"
    assert b"".join(c.data for c in t.read(str(p))) == b""


def test_tailer_truncation_and_rotation(tmp_path: Path):
    """A shorter file or a new inode at the path is read from the start as a new generation."""
    p = tmp_path / "a.log"
    p.write_bytes(b"x\n" * 10)
    t = Tailer()
    list(t.read(str(p)))
    p.write_bytes(b"y\n")  # truncated and rewritten
    chunks = list(t.read(str(p)))
    assert chunks[0].reset and chunks[0].generation == 1 and chunks[0].data == b"y\n"
    os.rename(p, tmp_path / "a.log.1")
    p.write_bytes(b"z\n" * 20)  # rotated: a new file, longer than the old offset
    chunks = list(t.read(str(p)))
    assert chunks[0].reset and chunks[0].generation == 2 and chunks[0].data == b"z\n" * 20


def test_tailer_bounded_chunks_and_long_line(tmp_path: Path):
    """Reads come in chunks of at most chunk_size (+ one carried line); an over-long line is dropped."""
    p = tmp_path / "big.log"
    p.write_bytes(b"a" * 5000 + b"\n" + b"{'loss': '1.0', 'step': 1}\n" * 100)
    t = Tailer(chunk_size=256, max_line=1000)
    chunks = list(t.read(str(p)))
    assert all(len(c.data) <= 256 + 1000 for c in chunks)
    data = b"".join(c.data for c in chunks)
    assert b"aaaa" not in data and data.count(b"'loss'") == 100


def _hf_lines(steps, f):
    return "".join(f"{{'loss': '{f(s):.4g}', 'epoch': '1', 'step': {s}}}\nINFO noise line {s}\n"
                   for s in steps)


def test_watcher_appended_log_resume_decided_after_window(tmp_path: Path):
    """An appended log whose step goes back is a resume; it is decided once `window` new points exist."""
    run = tmp_path / "run"
    run.mkdir()
    log = run / "train.log"
    log.write_text(_hf_lines(range(1, 26), lambda s: 2.0 / s + 0.08))
    w = RunLossWatcher(str(run), S)
    assert w.poll() == []
    with open(log, "a") as f:
        f.write(_hf_lines(range(21, 24), lambda s: 0.34))
    assert w.poll() == []  # 3 of 5 post-resume points: not yet
    assert w.poll() == []  # unchanged: still nothing
    with open(log, "a") as f:
        f.write(_hf_lines(range(24, 30), lambda s: 0.34))
    (r,) = w.poll()
    assert (r.at_step, r.from_step, r.alert, r.source) == (21, 20, True, "text")
    assert r.before == float(f"{2.0 / 18 + 0.08:.4g}") and r.after == 0.34  # the median of steps 16-20
    assert w.poll() == []  # reported once


def test_watcher_nan_decided_at_once(tmp_path: Path):
    """A NaN loss right after a resume is decided without waiting for the window."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "a.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.5}) + "\n" for s in range(1, 31)))
    w = RunLossWatcher(str(run), S)
    w.poll()
    (run / "b.jsonl").write_text('{"step": 21, "loss": NaN}\n')
    (r,) = w.poll()
    assert r.nonfinite and r.alert and r.kind == "loss_nonfinite" and r.at_step == 21
    assert "not finite" in r.reason


def test_two_runs_in_one_root(tmp_path: Path):
    """Two runs under one root, logs appended concurrently and polled with one shared tailer: each
    watcher reports only its own run's resume."""
    root = tmp_path / "root"
    a, b = root / "run-a", root / "run-b"
    a.mkdir(parents=True)
    b.mkdir()
    shared = Tailer()
    wa, wb = RunLossWatcher(str(a), S, tailer=shared), RunLossWatcher(str(b), S, tailer=shared)
    for lo, hi in ((1, 11), (11, 21), (21, 31)):
        with open(a / "train.log", "a") as f:
            f.write(_hf_lines(range(lo, hi), lambda s: 0.3))
        with open(b / "train.log", "a") as f:
            f.write(_hf_lines(range(lo, hi), lambda s: 0.3))
        assert wa.poll() == [] and wb.poll() == []
    with open(b / "train.log", "a") as f:
        f.write(_hf_lines(range(21, 30), lambda s: 0.9))
    with open(a / "train.log", "a") as f:
        f.write(_hf_lines(range(31, 40), lambda s: 0.3))
    assert wa.poll() == []
    (r,) = wb.poll()
    assert r.alert and r.at_step == 21 and str(b) in r.writer


def test_rotated_log_is_not_a_resume(tmp_path: Path):
    """A rotated log (new file, steps continuing above every step seen) is a new writer, not a resume."""
    run = tmp_path / "run"
    run.mkdir()
    log = run / "train.log"
    log.write_text(_hf_lines(range(1, 21), lambda s: 0.3))
    w = RunLossWatcher(str(run), S)
    w.poll()
    os.rename(log, run / "train.log.1")
    log.write_text(_hf_lines(range(21, 40), lambda s: 0.3))
    assert w.poll(final=True) == []
    assert len(w.report().segments) == 2


def test_truncated_log_restarting_is_a_resume(tmp_path: Path):
    """A log truncated and rewritten by a resumed process (``>`` not ``>>``) is a new writer whose
    earlier steps make it a resume."""
    run = tmp_path / "run"
    run.mkdir()
    log = run / "train.log"
    log.write_text(_hf_lines(range(1, 41), lambda s: 0.1))
    w = RunLossWatcher(str(run), S)
    w.poll()
    log.write_text(_hf_lines(range(31, 37), lambda s: 0.5))
    (r,) = w.poll()
    assert r.alert and r.at_step == 31 and "generation 1" in r.writer


def test_concurrent_writers_by_wall_time_are_not_resumes(tmp_path: Path):
    """Two JSONL writers whose wall times overlap are concurrent (two runs in one dir), not a resume."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "a.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.1, "time": 1000 + s}) + "\n"
                                         for s in range(1, 31)))
    (run / "b.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.9, "time": 1005 + s}) + "\n"
                                         for s in range(1, 31)))
    assert analyse_run(str(run), S).resumes == ()


def test_discover_skips_checkpoint_dirs(tmp_path: Path):
    """Auto-detection finds events, metrics.csv, jsonl and logs, but not inside checkpoint dirs."""
    for rel in ("runs/x/events.out.tfevents.1.h.1.0", "lightning_logs/version_0/metrics.csv", "m.jsonl",
                "train.log", "checkpoint-10/some.log", "README.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    got = {(s.kind, os.path.relpath(s.path, tmp_path)) for s in discover(str(tmp_path), S)}
    assert got == {("tensorboard", "runs/x/events.out.tfevents.1.h.1.0"),
                   ("csv", "lightning_logs/version_0/metrics.csv"), ("jsonl", "m.jsonl"),
                   ("text", "train.log")}
    assert isinstance(next(iter(discover(str(tmp_path), S))), SourceFile)


def test_trainer_state_divergence_between_checkpoints(tmp_path: Path):
    """An older checkpoint whose history after step 20 differs from a newer one's: a resume at 21."""
    def ckpt(step, hist):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": hist}))

    first = [{"loss": 1.0 / s, "step": s} for s in range(1, 31)]
    ckpt(20, first[:20])
    ckpt(30, first)
    ckpt(40, first[:20] + [{"loss": 0.9, "step": s} for s in range(21, 41)])
    (r,) = analyse_run(str(tmp_path), S).resumes
    assert (r.at_step, r.from_step, r.source, r.alert) == (21, 20, "trainer_state", True)
    assert r.from_checkpoint == str(tmp_path / "checkpoint-20")


def test_trainer_state_rewritten_checkpoint_seen_by_watcher(tmp_path: Path):
    """The daemon saw checkpoint-30's history; a resumed process rewrote checkpoint-30 differently."""
    d = tmp_path / "checkpoint-30"
    d.mkdir()
    state = d / "trainer_state.json"
    state.write_text(json.dumps({"log_history": [{"loss": 0.1, "step": s} for s in range(1, 31)]}))
    w = RunLossWatcher(str(tmp_path), S)
    assert w.poll([(30, str(d))]) == []
    state.write_text(json.dumps({"log_history": [{"loss": 0.1, "step": s} for s in range(1, 21)]
                                 + [{"loss": 0.5, "step": s} for s in range(21, 31)]}))
    os.utime(state, ns=(1, 1))
    (r,) = w.poll([(20, str(tmp_path / "checkpoint-20")), (30, str(d))])
    assert r.at_step == 21 and r.alert and r.from_step == 20


def _epoch_lines(steps, loss, epoch=2):
    return "".join(f"Epoch: {epoch}, Steps: {s}, Batch: {s - 48300}, Loss: {loss(s):.4f}\n"
                   f"  lr: 0.0001 | mem 21.3G\n" for s in steps)


def test_seed_report_4_in_two_log_files(tmp_path: Path):
    """Seed report 4's shape: the first process logs to 70030 at ~0.088; a second log starts again at 70010
    with ~0.34. A loss_jump (about 3.9x) naming both numbers, not "from scratch" (the run's first losses
    in this log are already low)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_1.log").write_text(_epoch_lines(range(69900, 70031), lambda s: 0.088 + (s % 3) * 0.001))
    (run / "train_2.log").write_text(_epoch_lines(range(70010, 70040), lambda s: 0.34 + (s % 2) * 0.002,
                                                  epoch=0))
    os.utime(run / "train_1.log", (1_000_000, 1_000_000))  # the first process's log is the older one
    report = analyse_run(str(run), S, [(70000, str(run / "checkpoint-70000"))])
    (r,) = report.resumes
    assert (r.at_step, r.from_step, r.from_checkpoint) == (70010, 70000, str(run / "checkpoint-70000"))
    assert r.alert and not r.scratch and r.before == 0.089 and r.after == 0.34 and 3.7 < r.ratio < 3.9
    assert "0.089" in r.reason and "0.34" in r.reason and "checkpoint-70000" in r.reason


def test_custom_regex_source_file(tmp_path: Path):
    """A configured regex reads a format no built-in knows; a source path limits reading to that file."""
    run = tmp_path / "run"
    run.mkdir()
    lines = [f"[trainer] it {s:6d} | lr 1e-4 | train_loss={0.2:.3f}" for s in range(1, 41)]
    lines += [f"[trainer] it {s:6d} | lr 1e-4 | train_loss={0.7:.3f}" for s in range(31, 41)]
    (run / "job.out").write_text("\n".join(lines) + "\n")
    (run / "other.log").write_text("{'loss': '9.0', 'step': 1}\n")
    s = LossSettings(sources=("job.out",), regex=r"it +(?P<step>\d+) .*train_loss=(?P<loss>[\d.]+)")
    report = analyse_run(str(run), s)
    (r,) = report.resumes
    assert r.at_step == 31 and r.alert and r.before == 0.2 and r.after == 0.7
    assert [x.writer for x in report.segments] == [str(run / "job.out"),
                                                   str(run / "job.out") + " (segment 1)"]
