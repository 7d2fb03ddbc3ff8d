"""The loss watch inside a long-running service: polled again and again on files that grow, rotate and
repeat. Log files are written by the test in the HF console format the Trainer's printer uses."""

from __future__ import annotations

import os
from pathlib import Path

from ckptwatch.losswatch import LossSettings, RunLossWatcher, analyse_run


def _append(log: Path, steps, loss: float) -> None:
    with open(log, "a") as f:
        for i in steps:
            f.write(f"{{'loss': {loss}, 'step': {i}}}\n")


def test_second_resume_from_the_same_checkpoint_is_reported(tmp_path: Path) -> None:
    """A crash loop resumes twice from checkpoint-20: the good resume and then the broken one are both
    reported (the second once), by the incremental watcher and by once."""
    ck = [(20, str(tmp_path / "checkpoint-20"))]
    log = tmp_path / "train.log"
    w = RunLossWatcher(str(tmp_path), LossSettings())
    _append(log, range(1, 36), 0.5)
    assert w.poll(ck) == []
    _append(log, range(21, 36), 0.5)
    assert [(r.at_step, r.alert) for r in w.poll(ck)] == [(21, False)]
    _append(log, range(21, 36), 5.0)
    assert [(r.at_step, r.alert, round(r.ratio, 1)) for r in w.poll(ck)] == [(21, True, 10.0)]
    assert w.poll(ck, final=True) == []
    once = analyse_run(str(tmp_path), LossSettings(), ck)
    assert [(r.at_step, r.alert) for r in once.resumes] == [(21, False), (21, True)]


def test_rotated_logs_do_not_accumulate_readers(tmp_path: Path) -> None:
    """A logger that rotates to a new file and deletes the old one: the watcher keeps one reader and one
    open segment, not one per file ever seen, and reports growth only when it read something."""
    w = RunLossWatcher(str(tmp_path), LossSettings())
    step = 0
    for h in range(120):
        for old in tmp_path.iterdir():
            os.remove(old)
        with open(tmp_path / f"train-{h:04d}.log", "w") as f:
            for _ in range(20):
                step += 1
                f.write(f"{{'loss': 0.5, 'step': {step}}}\n")
        w.poll()
        assert w.grew == (h > 0)  # the first poll reads the history: not growth
    assert len(w.readers) == 1 and len(w.tailer._files) == 1 and len(w.families["text"].current) == 1
    w.poll()
    assert not w.grew


def test_csv_rewritten_in_place_still_shows_the_resume(tmp_path: Path) -> None:
    """Lightning's CSVLogger rewrites metrics.csv when a column appears; the resumed process's rows (from
    step 20, below the last step read) are read, not skipped as already seen."""
    csv_path = tmp_path / "lightning_logs" / "version_0" / "metrics.csv"
    csv_path.parent.mkdir(parents=True)
    csv_path.write_text("epoch,step,train_loss\n" + "".join(f"0,{i},0.5\n" for i in range(36)))
    ck = [(20, str(tmp_path / "checkpoints" / "step=20.ckpt"))]
    w = RunLossWatcher(str(tmp_path), LossSettings())
    assert w.poll(ck) == []
    rows = [f"0,{i},0.5," for i in range(36)] + [f"0,{i},5.0,0.1" for i in range(20, 36)]
    with open(csv_path, "r+") as f:  # in place, as the logger does: same inode, a new header
        f.write("epoch,step,train_loss,lr\n" + "\n".join(rows) + "\n")
    assert [(r.at_step, r.alert, round(r.ratio, 1)) for r in w.poll(ck)] == [(20, True, 10.0)]
