"""The service's settle and debounce rules, in-process, on real Trainer checkpoints.

Per-run debounce (an event in one run re-judges that run only), the second look (files that change
while they are read are in_progress), the judgement cache keyed on inode and ctime as well as size
and mtime, and inotify queue overflow (reported by watchdog only through its logger).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ckptwatch.daemon import Daemon
from ckptwatch.engine import check_root
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.watch import OVERFLOW_LIMIT, DirtyScopes, scope_of
from tests.helpers import make_daemon, two_trainer_runs, verdicts_by_name

pytestmark = pytest.mark.slow


def _daemon(tmp_path: Path, root: Path, observer: str = "inotify") -> Daemon:
    return make_daemon(tmp_path / "state", root, observer=observer)


def _break_header(f: Path) -> None:
    """Corrupt a safetensors header in place, keeping size and mtime (what a bad copy -p leaves)."""
    st, dir_st = f.stat(), f.parent.stat()
    data = bytearray(f.read_bytes())
    data[8] = ord("x")  # the header's opening brace
    tmp = f.with_name(f.name + ".new")
    tmp.write_bytes(bytes(data))
    os.chmod(tmp, st.st_mode)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, f)  # a new inode, same size and mtime
    os.utime(f.parent, ns=(dir_st.st_atime_ns, dir_st.st_mtime_ns))  # and the directory's mtime restored


def _stored_status(d: Daemon) -> dict[str, str]:
    return {f"{os.path.basename(r['run'])}/{os.path.basename(c['checkpoint'])}": c["status"]
            for r in d.state.runs() for c in r["open"]} | {
        f"{os.path.basename(r['run'])}/*": ",".join(f"{k}={v}" for k, v in sorted(r["counts"].items()))
        for r in d.state.runs()}


@pytest.mark.parametrize(("path", "expected"), [
    ("/r/run-a/checkpoint-6/model.safetensors", "/r/run-a"),
    ("/r/run-a", "/r/run-a"),
    ("/r/run-a/checkpoint-8", "/r/run-a"),
    ("/r/run-c/checkpoint-2/x", "/r"),  # a run the index does not know: the whole root
    ("/r/notes.txt", "/r"),
    ("/r", "/r"),
    ("/r/run-ab/x", "/r"),  # a prefix of a run's name is not inside the run
])
def test_scope_of_maps_event_paths_to_known_runs(path: str, expected: str) -> None:
    """An event inside a known run names that run; anything else names the whole watched root."""
    assert scope_of(path, "/r", frozenset({"/r/run-a", "/r/run-b"})) == expected


def test_whole_root_scope_absorbs_its_run_scopes() -> None:
    """When the whole root is due, its due runs are judged by that pass, not again one by one."""
    dirty = DirtyScopes(quiet=5.0)
    dirty.touch("/r", 10.0, "/r/run-a")
    dirty.touch("/r", 11.0)
    dirty.touch("/s", 10.0, "/s/run-x")
    dirty.touch("/r", 30.0, "/r/run-b")  # still settling
    assert sorted(dirty.take_due(20.0)) == [("/r", "/r"), ("/s", "/s/run-x")]
    assert dirty.take_due(40.0) == [("/r", "/r/run-b")]
    assert dirty.next_due() is None


def test_a_run_that_never_goes_quiet_is_still_judged() -> None:
    """Due settle_seconds after the first event: a log appended every second cannot starve a run."""
    dirty = DirtyScopes(quiet=5.0)
    for t in range(100, 110):  # an event every second
        dirty.touch("/r", float(t), "/r/run-a")
        assert dirty.take_due(float(t)) == ([("/r", "/r/run-a")] if t == 105 else [])
    assert dirty.take_due(111.0) == [("/r", "/r/run-a")]
    dirty.schedule("/r", "/r/run-a", 200.0)
    dirty.touch("/r", 150.0, "/r/run-a")  # an event sooner than the schedule wins
    assert dirty.next_due() == 155.0


def test_event_in_one_run_makes_only_that_run_due(artefact, tmp_path: Path) -> None:
    """A real inotify event inside run-a marks run-a due, not the root: one run is listed, not all."""
    root = two_trainer_runs(artefact, tmp_path)
    d = _daemon(tmp_path, root)
    d.observers.start(d.config.watches, d.judge.run_index)
    try:
        d.judge_watch(d.config.watches[0])  # indexes the runs
        assert d.dirty.take_due(time.time() + 1e6) == []
        (root / "run-a" / "checkpoint-6" / "note.txt").write_text("x")
        deadline = time.monotonic() + 10
        due: list = []
        while not due and time.monotonic() < deadline:
            time.sleep(0.1)
            due = d.dirty.take_due(time.time() + 1)
        assert due == [(str(root), str(root / "run-a"))]
        (root / "run-c").mkdir()
        deadline = time.monotonic() + 10
        due = []
        while not due and time.monotonic() < deadline:
            time.sleep(0.1)
            due = d.dirty.take_due(time.time() + 1)
        assert due == [(str(root), str(root))]
    finally:
        for w in d.observers.watchers.values():
            w.stop()
        d.close()


def test_run_pass_judges_that_run_and_root_pass_judges_all(artefact, tmp_path: Path) -> None:
    """A per-run pass sees the damage in its run only; the next whole-root pass sees the rest."""
    root = two_trainer_runs(artefact, tmp_path)
    d = _daemon(tmp_path, root)
    w = d.config.watches[0]
    d.judge_watch(w)
    assert _stored_status(d)["run-a/*"] == _stored_status(d)["run-b/*"] == "complete=3"
    for run in ("run-a", "run-b"):
        _break_header(root / run / "checkpoint-6" / "model.safetensors")
    d.judge_watch(w, str(root / "run-a"))
    status = _stored_status(d)
    assert status["run-a/checkpoint-6"] == "corrupt" and status["run-b/*"] == "complete=3"
    d.judge_watch(w)
    assert _stored_status(d)["run-b/checkpoint-6"] == "corrupt"
    shutil.rmtree(root / "run-a")
    with capture_logs() as logs:
        d.judge_watch(w, str(root / "run-a"))  # the run is gone: the whole root is judged instead
    assert not [e for e in logs if e["event"] == "service_error"]
    d.close()


def test_cache_sees_a_file_replaced_with_same_size_and_mtime(artefact, tmp_path: Path) -> None:
    """The judgement cache keys on inode and ctime too: a same-size, same-mtime replacement is re-read."""
    run = artefact("hf_full")
    opts = CheckOptions(settle_seconds=0)
    cache: dict = {}
    first = check_root(str(run), opts, time.time(), cache=cache)
    assert verdicts_by_name(first.runs[0])["checkpoint-6"].status.value == "complete"
    _break_header(run / "checkpoint-6" / "model.safetensors")
    again = check_root(str(run), opts, time.time(), cache=cache)
    assert verdicts_by_name(again.runs[0])["checkpoint-6"].status.value == "corrupt"


def test_second_look_catches_a_write_during_the_read(artefact, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Files that change between the listing and the end of the read make the checkpoint in_progress."""
    from ckptwatch.layouts import hf_trainer

    run = artefact("hf_full")
    target = run / "checkpoint-6" / "trainer_state.json"
    real_judge = hf_trainer.HfTrainer.judge

    def judge_while_a_writer_appends(self, cand, opts):
        if cand.path.endswith("checkpoint-6"):
            with open(target, "a") as f:
                f.write(" ")
        return real_judge(self, cand, opts)

    monkeypatch.setattr(hf_trainer.HfTrainer, "judge", judge_while_a_writer_appends)
    old = time.time() - 3600
    for f in (run / "checkpoint-6").iterdir():
        os.utime(f, (old, old))

    looked_twice = check_root(str(run), CheckOptions(settle_seconds=0, second_look=True), time.time())
    v = verdicts_by_name(looked_twice.runs[0])["checkpoint-6"]
    assert v.status.value == "in_progress"
    assert "changed while it was being checked (" in v.problems[0].message
    assert "trainer_state.json" in v.problems[0].message
    looked_once = check_root(str(run), CheckOptions(settle_seconds=0), time.time())
    assert verdicts_by_name(looked_once.runs[0])["checkpoint-6"].status.value == "complete"


def test_inotify_overflow_rejudges_root_and_repeated_overflow_moves_it_to_polling(tmp_path: Path) -> None:
    """watchdog's overflow warning marks the root due; overflowing again and again switches to polling."""
    from ckptwatch.watch import install_overflow_log

    root = tmp_path / "root"
    root.mkdir()
    d = _daemon(tmp_path, root)
    handler = install_overflow_log(d.observers.on_overflow)
    d.observers.start(d.config.watches, d.judge.run_index)
    try:
        inotify_log = logging.getLogger("watchdog.observers.inotify")
        inotify_log.warning("Inotify queue overflowed; reconciling recursive watches below %r", str(root))
        assert d.dirty.take_due(time.time() + 1) == [(str(root), str(root))]
        with capture_logs() as logs:
            d.observers.handle_overflows()
        assert [e["event"] for e in logs] == ["inotify_overflow"]
        assert d.observers.watchers[str(root)].kind == "inotify"
        for _ in range(OVERFLOW_LIMIT - 1):
            inotify_log.warning("Inotify queue overflowed; reconciling recursive watches below %r", str(root))
        with capture_logs() as logs:
            d.observers.handle_overflows()
        assert [e["event"] for e in logs] == ["inotify_overflow", "observer_fallback"]
        assert "max_queued_events" in logs[1]["action"]
        assert d.observers.watchers[str(root)].kind == "polling" and d.observers.watchers[str(root)].alive()
    finally:
        for name in ("watchdog.observers.inotify", "watchdog.observers.inotify_c"):
            logging.getLogger(name).removeHandler(handler)
        for w in d.observers.watchers.values():
            w.stop()
        d.close()
