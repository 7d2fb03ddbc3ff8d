"""The mirror sink in the service, on real Trainer output: copies off the loop, failures retried with
backoff and alerted once, and retention's guard (nothing without a committed copy is deleted).

The service is driven in-process (``Daemon.judge_watch``, then its background worker); the target is a
real local directory; alerts go to a webhook on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror.restore import verify_copy
from ckptwatch.mirror.target import LocalTarget
from tests.helpers import make_daemon, two_trainer_runs
from tests.servers import WebhookServer

pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")  # apprise's
CHECKPOINTS = ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
WAIT = 30.0


def _pass(d) -> None:
    """One whole-root pass, then the worker's jobs finished and their results handed to the loop."""
    d.judge_watch(d.config.watches[0])
    assert d.background.wait_idle(60)
    d.background.drain()


def _names(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint-"))


def _events(logs: list[dict], name: str) -> list[dict]:
    return [e for e in logs if e["event"] == name]


def test_every_complete_checkpoint_is_mirrored_newest_first_and_logged(artefact, tmp_path):
    root = two_trainer_runs(artefact, tmp_path)
    backup = tmp_path / "backup"
    d = make_daemon(tmp_path / "state", root, watch={"mirror": {"to": str(backup)}})
    try:
        with capture_logs() as logs:
            _pass(d)
        target = LocalTarget(str(backup))
        for run in ("run-a", "run-b"):
            for name in CHECKPOINTS:
                manifest, findings = verify_copy(target, f"{run}/{name}")  # every hash re-read
                assert manifest is not None and findings == [], (run, name, findings)
                assert manifest.source_path == str(root / run / name)
        committed = _events(logs, "mirror_committed")
        for run in ("run-a", "run-b"):
            mine = [e for e in committed if Path(e["run"]).name == run]
            assert [Path(e["checkpoint"]).name for e in mine] == CHECKPOINTS[::-1]  # newest first
        assert all(e["bytes"] > 0 and e["seconds"] >= 0 and str(backup) in e["target"] for e in committed)
        assert not _events(logs, "mirror_failed") and not _events(logs, "service_error")
        # the next pass asks the target nothing and copies nothing: the sink remembers what is committed
        with capture_logs() as again:
            d.judge_watch(d.config.watches[0])
            assert d.background.drain() == 0 and d.background.wait_idle(1)
        assert not [e for e in again if e["event"].startswith("mirror_")]
        assert d.sink("mirror").remembered() == {str(root / "run-a"), str(root / "run-b")}
        shutil.rmtree(root / "run-b")  # a run that vanishes is forgotten by the next whole pass
        _pass(d)
        assert d.sink("mirror").remembered() == {str(root / "run-a")}
    finally:
        d.close()


def test_a_target_that_cannot_be_written_fails_once_retries_with_backoff_and_recovers(artefact, tmp_path):
    """A file where the target dir should be: one mirror_failed (event and alert) per run, no retry before
    the backoff, the service keeps judging; once the target works, the copy commits and the alert clears."""
    root = two_trainer_runs(artefact, tmp_path)
    backup = tmp_path / "backup"
    backup.write_text("not a directory\n")
    now = [time.time()]
    with WebhookServer() as hook:
        d = make_daemon(tmp_path / "state", root, watch={"mirror": {"to": str(backup)}},
                        alerts={"urls": [hook.url()]}, clock=lambda: now[0])
        try:
            with capture_logs() as logs:
                _pass(d)
                _pass(d)  # within the backoff: no new attempt
            failed = _events(logs, "mirror_failed")
            assert sorted(Path(e["run"]).name for e in failed) == ["run-a", "run-b"]
            assert all(Path(e["checkpoint"]).name == "checkpoint-6" and e["error"] for e in failed)
            assert all(str(backup) in e["error"] for e in failed), [e["error"] for e in failed]
            assert not _events(logs, "mirror_committed") and not _events(logs, "service_error")
            assert set(d.runs) == {str(root / "run-a"), str(root / "run-b")}  # still judged
            due = d.dirty.next_due()
            assert due is not None and now[0] + 59 <= due <= now[0] + 61  # the retry, 60 s on
            assert d.alerts.flush(WAIT)
            titles = [p["title"] for p in hook.posts]
            assert sorted(t for t in titles if "mirror to" in t) == [
                f"[ckptwatch] run-a: mirror to {backup}/run-a/checkpoint-6 failed",
                f"[ckptwatch] run-b: mirror to {backup}/run-b/checkpoint-6 failed"]

            now[0] += 61  # past the first backoff: one more attempt each, then 120 s
            assert len(d.dirty.take_due(now[0])) == 2  # what the loop would take: the two retries
            with capture_logs() as logs:
                _pass(d)
            assert len(_events(logs, "mirror_failed")) == 2
            assert d.dirty.next_due() >= now[0] + 119
            assert d.alerts.flush(WAIT) and len(hook.posts) == len(titles)  # the same fault: no new alert

            backup.unlink()  # the target is fixed
            now[0] += 121
            with capture_logs() as logs:
                _pass(d)
            assert len(_events(logs, "mirror_committed")) == 6 and not _events(logs, "mirror_failed")
            assert d.alerts.flush(WAIT)
            resolved = [p["title"] for p in hook.posts if "RESOLVED" in p["title"]]
            assert sorted(resolved) == ["[ckptwatch] RESOLVED run-a: mirror failed cleared",
                                        "[ckptwatch] RESOLVED run-b: mirror failed cleared"]
        finally:
            d.close()


def test_retention_deletes_nothing_without_a_committed_copy(artefact, tmp_path):
    """keep_last 1 with a mirror: while nothing is mirrored, nothing is deleted; once run-b's copies are
    committed its old checkpoints go; run-a's copies removed from the target (the sink still remembers
    them) stop its deletions at the worker's re-check against the target."""
    root = two_trainer_runs(artefact, tmp_path)
    backup = tmp_path / "backup"
    d = make_daemon(tmp_path / "state", root,
                    watch={"mirror": {"to": str(backup)}, "retention": {"keep_last": 1}})
    try:
        with capture_logs() as logs:
            _pass(d)  # retention plans before the copies commit: every checkpoint is unmirrored then
        planned = _events(logs, "retention_planned")
        assert len(planned) == 2 and all(e["delete"] == [] for e in planned)
        assert all("not yet mirrored and verified" in e["reasons"][str(root / r / "checkpoint-2")]
                   for e, r in zip(sorted(planned, key=lambda e: e["run"]), ("run-a", "run-b"), strict=True))
        assert len(_events(logs, "mirror_committed")) == 6
        for run in ("run-a", "run-b"):
            assert _names(root / run) == CHECKPOINTS
        shutil.rmtree(backup / "run-a")  # run-a's copies are gone from the target
        assert mf.copy_state(LocalTarget(str(backup)), "run-a/checkpoint-2").state == "absent"
        with capture_logs() as logs:
            _pass(d)
        assert _names(root / "run-b") == ["checkpoint-6"]  # mirrored, so keep_last 1 applies
        assert _names(root / "run-a") == CHECKPOINTS  # planned from memory, refused by the target's word
        skipped = [e for e in _events(logs, "retention_skipped") if Path(e["run"]).name == "run-a"]
        assert sorted(Path(e["checkpoint"]).name for e in skipped) == ["checkpoint-2", "checkpoint-4"]
        assert all(e["result"] == "kept" for e in skipped)
        deleted = _events(logs, "checkpoint_deleted")
        assert sorted((Path(e["run"]).name, Path(e["checkpoint"]).name) for e in deleted) == [
            ("run-b", "checkpoint-2"), ("run-b", "checkpoint-4")]
    finally:
        d.close()


def test_a_target_that_cannot_be_written_keeps_every_checkpoint(artefact, tmp_path):
    """keep_last 1 and a mirror that never commits: pass after pass, nothing is deleted."""
    root = two_trainer_runs(artefact, tmp_path)
    backup = tmp_path / "backup"
    backup.write_text("not a directory\n")
    d = make_daemon(tmp_path / "state", root,
                    watch={"mirror": {"to": str(backup)}, "retention": {"keep_last": 1}})
    try:
        with capture_logs() as logs:
            _pass(d)
            _pass(d)
        assert not _events(logs, "checkpoint_deleted")
        for run in ("run-a", "run-b"):
            assert _names(root / run) == CHECKPOINTS
    finally:
        d.close()
