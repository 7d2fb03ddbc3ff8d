"""What the mirror sink keeps in the state store, on real Trainer output and a real local target: a restart
asks the target nothing for copies it recorded; a copy removed from the target is copied again (found by
retention's re-check, or by the slow re-verification); ``ckptwatch status`` and the metrics show the lag.

The service is driven in-process (``Daemon.judge_watch``, its background worker, ``Daemon.tick`` with an
injected clock); the target is wrapped to count what the sink asks it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import time
import urllib.request
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ckptwatch.mirror.lag import Lag, Mark, mirror_lag
from ckptwatch.mirror.restore import verify_copy
from ckptwatch.mirror.service import REVERIFY_EVERY
from ckptwatch.mirror.target import LocalTarget
from ckptwatch.mirror.targets import target_for
from ckptwatch.state import SCHEMA_VERSION, StateStore
from tests.helpers import cli_in_process, make_daemon, two_trainer_runs

pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")  # apprise's
CHECKPOINTS = ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


class Counting:
    """A target that counts every call the sink makes on it (list, stat, read, write, remove)."""

    def __init__(self, inner, calls: list[str]) -> None:
        self.inner, self.calls, self.url = inner, calls, inner.url

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name == "describe" or not callable(attr):
            return attr
        self.calls.append(name)
        return attr


def _counting(d, calls: list[str]) -> None:
    d.sink("mirror").make_target = lambda config: Counting(target_for(config.to), calls)


def _pass(d) -> None:
    d.judge_watch(d.config.watches[0])
    assert d.background.wait_idle(60)
    d.background.drain()


def _events(logs: list[dict], name: str) -> list[dict]:
    return [e for e in logs if e["event"] == name]


def _names(events: list[dict]) -> list[tuple[str, str]]:
    return sorted((Path(e["run"]).name, Path(e["checkpoint"]).name) for e in events)


def _rows(state: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(state / "state.sqlite")
    try:
        rows = db.execute("SELECT run, checkpoint FROM mirrored").fetchall()
        return sorted((Path(r).name, Path(c).name) for r, c in rows)
    finally:
        db.close()


ALL = sorted((r, c) for r in ("run-a", "run-b") for c in CHECKPOINTS)


def test_a_restart_trusts_the_store_and_asks_the_target_nothing(artefact, tmp_path):
    """Every copy committed and recorded; after a restart no job runs and the target is not asked once.
    A checkpoint whose newest mtime moved since its copy is not trusted: only that one is checked (up to
    date: its bytes are the same), and recorded again."""
    root = two_trainer_runs(artefact, tmp_path)
    backup, state = tmp_path / "backup", tmp_path / "state"
    d = make_daemon(state, root, watch={"mirror": {"to": str(backup)}})
    try:
        with capture_logs() as logs:
            _pass(d)
        assert _names(_events(logs, "mirror_committed")) == ALL
    finally:
        d.close()
    assert _rows(state) == ALL

    calls: list[str] = []
    d = make_daemon(state, root, watch={"mirror": {"to": str(backup)}})
    try:
        _counting(d, calls)
        with capture_logs() as logs:
            d.judge_watch(d.config.watches[0])
            assert d.background.wait_idle(60) and d.background.drain() == 0  # no job was submitted
        assert calls == [] and not [e for e in logs if e["event"].startswith("mirror_")]
        assert all(d.sink("mirror").is_committed(str(root / r), str(root / r / c)) for r, c in ALL)
    finally:
        d.close()

    touched = root / "run-a" / "checkpoint-4" / "trainer_state.json"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, a newer mtime
    calls.clear()
    d = make_daemon(state, root, watch={"mirror": {"to": str(backup)}})
    try:
        _counting(d, calls)
        with capture_logs() as logs:
            _pass(d)
        assert calls, "the untrusted checkpoint was checked on the target"
        assert not _events(logs, "mirror_committed") and not _events(logs, "mirror_failed")
        assert d.sink("mirror").is_committed(str(root / "run-a"), str(root / "run-a" / "checkpoint-4"))
        calls.clear()
        _pass(d)
        assert calls == []  # recorded again with its new mtime: trusted from now on
    finally:
        d.close()


def test_a_copy_removed_from_the_target_is_copied_again(artefact, tmp_path):
    """keep_last 1: run-a's copies removed after their commit. Retention's re-check (it asks the target
    about every checkpoint of its fresh plan) finds them missing: they are forgotten (memory and store),
    copied again at the next pass, and then the old ones deleted. run-b's newest copy, removed when
    nothing is left to delete there, is found by the re-verification REVERIFY_EVERY later."""
    root = two_trainer_runs(artefact, tmp_path)
    backup, state = tmp_path / "backup", tmp_path / "state"
    now = [time.time()]
    d = make_daemon(state, root, watch={"mirror": {"to": str(backup)}, "retention": {"keep_last": 1}},
                    clock=lambda: now[0])
    run_a, run_b = root / "run-a", root / "run-b"
    run_a_all = [("run-a", c) for c in CHECKPOINTS]
    try:
        _pass(d)
        shutil.rmtree(backup / "run-a")
        with capture_logs() as logs:
            _pass(d)  # run-b's old checkpoints go; run-a's re-check refuses (the copies are gone)
            d.tick(now[0])  # the loop's next turn: the sink takes what the re-check found
        lost = _events(logs, "mirror_lost")
        assert _names(lost) == run_a_all
        assert all(e["action"] == "copied again at the next pass" and e["why"] for e in lost)
        assert not any(r == "run-a" for r, _ in _rows(state))
        assert sorted(p.name for p in run_a.iterdir() if p.name.startswith("checkpoint-")) == CHECKPOINTS
        assert _names(_events(logs, "checkpoint_deleted")) == [("run-b", "checkpoint-2"),
                                                              ("run-b", "checkpoint-4")]
        with capture_logs() as logs:
            _pass(d)  # copied again
            _pass(d)  # now committed and verified: keep_last 1 deletes the old ones
        assert _names(_events(logs, "mirror_committed")) == run_a_all
        assert _names(_events(logs, "checkpoint_deleted")) == [("run-a", "checkpoint-2"),
                                                              ("run-a", "checkpoint-4")]
        assert ("run-a", "checkpoint-6") in _rows(state)

        shutil.rmtree(backup / "run-b" / "checkpoint-6")
        with capture_logs() as logs:
            _pass(d)  # nothing to delete in run-b: nobody asks its target
            d.tick(now[0] + REVERIFY_EVERY - 60)  # not due yet
            assert d.background.wait_idle(60) and d.background.drain() == 0
        assert not _events(logs, "mirror_lost")
        with capture_logs() as logs:
            now[0] += REVERIFY_EVERY + 1
            d.tick(now[0])
            assert d.background.wait_idle(60) and d.background.drain() == 2  # one re-check job per run
        assert _names(_events(logs, "mirror_lost")) == [("run-b", "checkpoint-6")]
        assert not d.sink("mirror").is_committed(str(run_b), str(run_b / "checkpoint-6"))
        assert ("run-b", "checkpoint-6") not in _rows(state)
        due = d.dirty.next_due()
        assert due is not None and due <= now[0]  # the run is judged again at once
        with capture_logs() as logs:
            _pass(d)
        assert _names(_events(logs, "mirror_committed")) == [("run-b", "checkpoint-6")]
        manifest, findings = verify_copy(LocalTarget(str(backup)), "run-b/checkpoint-6")
        assert manifest is not None and findings == []
        assert ("run-b", "checkpoint-6") in _rows(state)
    finally:
        d.close()


def _move_newest_aside(root: Path, tmp_path: Path) -> None:
    aside = tmp_path / "aside"
    aside.mkdir()
    for run in ("run-a", "run-b"):
        os.rename(root / run / "checkpoint-6", aside / run)


def _put_newest_back(root: Path, tmp_path: Path) -> None:
    for run in ("run-a", "run-b"):
        os.rename(tmp_path / "aside" / run, root / run / "checkpoint-6")


def test_status_and_metrics_show_the_mirror_lag(artefact, tmp_path):
    """checkpoint-2 and -4 committed, checkpoint-6's copy blocked (a file where its copy's directory
    belongs): 2 steps behind, and the seconds since checkpoint-6 was written. Once it commits: 0 and 0.
    The same numbers in `status --json`, its text and the Prometheus endpoint. keep_last 1 deletes the
    mirrored checkpoint-2 and -4 meanwhile: a copy of a deleted checkpoint still counts, and the re-check
    of checkpoint-6 (never committed) is no lost copy."""
    root = two_trainer_runs(artefact, tmp_path)
    backup, state = tmp_path / "backup", tmp_path / "state"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[service]\nstate_dir = "{state}"\n')
    _move_newest_aside(root, tmp_path)
    d = make_daemon(state, root, watch={"mirror": {"to": str(backup)}, "retention": {"keep_last": 1}},
                    metrics_port=port)
    try:
        d._start_sinks()
        _pass(d)
        _put_newest_back(root, tmp_path)
        (backup / "run-a" / "checkpoint-6").write_text("in the way\n")
        (backup / "run-b" / "checkpoint-6").write_text("in the way\n")
        with capture_logs() as logs:
            _pass(d)
            d.tick(time.time())
        assert len(_events(logs, "mirror_failed")) == 2
        assert len(_events(logs, "checkpoint_deleted")) == 4 and not _events(logs, "mirror_lost")
        written = max(p.stat().st_mtime for p in (root / "run-a" / "checkpoint-6").rglob("*") if p.is_file())

        code, out, err = cli_in_process(["status", "--config", str(cfg), "--json"])
        assert code == 0, err
        runs = {Path(r["run"]).name: r for r in json.loads(out)["runs"]}
        mirror = runs["run-a"]["mirror"]
        assert mirror["to"] == str(backup)
        assert Path(mirror["newest_committed"]["path"]).name == "checkpoint-4"
        assert mirror["lag_steps"] == 2
        assert time.time() - written - 60 <= mirror["lag_seconds"] <= time.time() - written + 1
        code, text, _ = cli_in_process(["status", "--config", str(cfg)])
        assert f"mirror: newest committed checkpoint-4 to {backup}, behind by 2 steps" in text, text

        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        run = str(root / "run-a")
        assert f'ckptwatch_mirror_lag_steps{{run="{run}"}} 2.0' in body
        assert f'ckptwatch_mirror_newest_committed_step{{run="{run}"}} 4.0' in body
        seconds = next(line for line in body.splitlines()
                       if line.startswith(f'ckptwatch_mirror_lag_seconds{{run="{run}"}}'))
        assert float(seconds.split()[-1]) >= mirror["lag_seconds"]

        for run_name in ("run-a", "run-b"):
            (backup / run_name / "checkpoint-6").unlink()
        d.sink("mirror")._retry_at.clear()  # the backoff is tested elsewhere: retry now
        _pass(d)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert f'ckptwatch_mirror_lag_steps{{run="{run}"}} 0.0' in body
        assert f'ckptwatch_mirror_lag_seconds{{run="{run}"}} 0.0' in body
        assert f'ckptwatch_mirror_newest_committed_step{{run="{run}"}} 6.0' in body
        code, out, _ = cli_in_process(["status", "--config", str(cfg), "--json"])
        mirror = {Path(r["run"]).name: r for r in json.loads(out)["runs"]}["run-b"]["mirror"]
        assert (mirror["lag_steps"], mirror["lag_seconds"]) == (0, 0.0)
        code, text, _ = cli_in_process(["status", "--config", str(cfg)])
        assert f"mirror: newest committed checkpoint-6 to {backup}, up to date" in text, text
    finally:
        d.close()


def test_status_without_a_mirror_shows_none(artefact, tmp_path):
    root = two_trainer_runs(artefact, tmp_path)
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[service]\nstate_dir = "{state}"\n')
    d = make_daemon(state, root)
    try:
        _pass(d)
    finally:
        d.close()
    code, out, err = cli_in_process(["status", "--config", str(cfg), "--json"])
    assert code == 0, err
    assert [r["mirror"] for r in json.loads(out)["runs"]] == [None, None]
    assert "mirror:" not in cli_in_process(["status", "--config", str(cfg)])[1]


V1_SCHEMA = """
CREATE TABLE checkpoints (path TEXT PRIMARY KEY, run TEXT NOT NULL, layout TEXT NOT NULL, step INTEGER,
    status TEXT NOT NULL, fingerprint TEXT NOT NULL, problems TEXT NOT NULL, hazards TEXT NOT NULL,
    first_seen REAL NOT NULL, judged_at REAL NOT NULL);
CREATE TABLE runs (run TEXT PRIMARY KEY, layout TEXT NOT NULL, newest_complete TEXT,
    newest_complete_step INTEGER, newest_resumable TEXT, newest_resumable_step INTEGER,
    judged_at REAL NOT NULL);
INSERT INTO checkpoints VALUES ('/r/checkpoint-2', '/r', 'hf-trainer', 2, 'complete', '[]', '[]', '[]', 1, 1);
INSERT INTO runs VALUES ('/r', 'hf-trainer', '/r/checkpoint-2', 2, '/r/checkpoint-2', 2, 1);
PRAGMA user_version=1;
"""


def test_a_version_1_state_file_is_migrated_in_place_and_read_before(tmp_path):
    """status reads a file the service has not upgraded yet (no mirror columns, no mirrored table); the
    service's store adds them, keeps every row, and records mirrored copies from then on."""
    path = tmp_path / "state.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.close()
    old = StateStore(str(path), read_only=True)
    try:
        (run,) = old.runs()
        assert run["mirror"] is None
        assert old.mirrored("/r", "/backup") == [] and old.newest_mirrored("/r", "/backup") is None
    finally:
        old.close()
    store = StateStore(str(path))
    try:
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        (run,) = store.runs()
        assert run["newest_complete"] == {"path": "/r/checkpoint-2", "step": 2}
        from ckptwatch.state import MirroredCopy

        store.record_mirrored([MirroredCopy("/r", "/r/checkpoint-2", "/backup", "/backup/r/checkpoint-2", 2,
                                            10, 5.0, 6.0, 6.0)])
        assert [c.checkpoint for c in store.mirrored("/r", "/backup")] == ["/r/checkpoint-2"]
        assert store.mirrored("/r", "/elsewhere") == []
        store.drop_mirrored("/backup", "/r/checkpoint-2")
        assert store.mirrored("/r", "/backup") == []
    finally:
        store.close()
    StateStore(str(path)).close()  # a second open of a migrated file changes nothing


@pytest.mark.parametrize(("complete", "committed", "lag"), [
    (None, None, None),  # nothing complete: nothing to mirror
    (Mark("/r/c-6", 6, 100.0), None, Lag(6, 900.0)),  # nothing committed: everything since step 0
    (Mark("/r/c-6", 6, 100.0), Mark("/r/c-4", 4, 50.0), Lag(2, 900.0)),
    (Mark("/r/c-6", 6, 100.0), Mark("/r/c-6", 6, 100.0), Lag(0, 0.0)),
    (Mark("/r/a", None, 100.0), Mark("/r/b", None, 50.0), Lag(None, 900.0)),  # no steps: seconds only
    (Mark("/r/c-6", 6, 2000.0), Mark("/r/c-4", 4, 50.0), Lag(2, 0.0)),  # a clock behind the mtime
    (Mark("/r/c-6", 6, None), Mark("/r/c-4", 4, None), Lag(2, None)),  # an old state file: no mtime
])
def test_lag(complete, committed, lag):
    assert mirror_lag(complete, committed, 1000.0) == lag
