"""TensorBoard events files written by tensorboard's own writer (no TF, no torch): one writer per file,
read incrementally while the file grows."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from ckptwatch.losswatch.settings import LossSettings
from ckptwatch.losswatch.watcher import RunLossWatcher, analyse_run

S = LossSettings()


def _write(w: EventFileWriter, tag: str, steps, value, t0: float) -> None:
    for s in steps:
        summ = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value(s))])
        w.add_event(event_pb2.Event(wall_time=t0 + s, step=s, summary=summ))
    w.flush()


def test_growing_events_file_and_a_second_process(tmp_path: Path):
    """A growing events file is read incrementally (no re-read); a second events file starting at a step
    already seen is a resume, decided once 5 of its points exist."""
    logdir = tmp_path / "run" / "runs"
    logdir.mkdir(parents=True)
    t0 = time.time() - 10_000
    w1 = EventFileWriter(str(logdir), filename_suffix=".p1")
    _write(w1, "train/loss", range(1, 16), lambda s: 2.0 / s, t0)
    watcher = RunLossWatcher(str(tmp_path / "run"), S)
    assert watcher.poll() == []
    _write(w1, "train/loss", range(16, 26), lambda s: 0.1, t0)
    _write(w1, "eval/loss", [20], lambda s: 5.0, t0)  # another tag: ignored
    w1.close()
    assert watcher.poll() == []
    seg = watcher.report().segments[0]
    assert (seg.first_step, seg.last_step, seg.points) == (1, 25, 25)
    w2 = EventFileWriter(str(logdir), filename_suffix=".p2")
    _write(w2, "train/loss", range(21, 24), lambda s: 0.5, t0 + 1000)
    assert watcher.poll() == []
    _write(w2, "train/loss", range(24, 30), lambda s: 0.5, t0 + 1000)
    w2.close()
    (r,) = watcher.poll()
    assert (r.source, r.at_step, r.from_step, r.alert) == ("tensorboard", 21, 20, True)
    assert (r.before, r.after) == (pytest.approx(0.1), 0.5)  # float32 in the events file
    assert r.writer.endswith(".p2")


def test_concurrent_events_files_are_not_a_resume(tmp_path: Path):
    """Two events files whose wall times overlap (two runs logging into one dir) are not resumes."""
    logdir = tmp_path / "runs"
    logdir.mkdir()
    t0 = time.time() - 10_000
    a = EventFileWriter(str(logdir), filename_suffix=".a")
    b = EventFileWriter(str(logdir), filename_suffix=".b")
    _write(a, "train/loss", range(1, 31), lambda s: 0.1, t0)
    _write(b, "train/loss", range(1, 31), lambda s: 0.9, t0 + 3)
    a.close()
    b.close()
    assert analyse_run(str(tmp_path), S).resumes == ()
