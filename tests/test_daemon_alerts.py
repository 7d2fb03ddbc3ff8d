"""The service's alerts, in-process, on real Trainer checkpoints, over real apprise to loopback servers.

A json:// webhook and an SMTP server (aiosmtpd) on 127.0.0.1 receive what the daemon sends: routing by
kind, one alert per condition across a restart, the recovery notice, the stale_after gate for an
incomplete newest checkpoint, service errors, and a low disk.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from ckptwatch.daemon import Daemon
from ckptwatch.passes import Engine
from tests.helpers import make_daemon
from tests.servers import SmtpServer, WebhookServer, body_text

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")]  # apprise's
WAIT = 20.0  # apprise's own throttle between two mails to one server is 5.5 s


class Clock:
    """Real time plus an offset the test can move (stale_after and stalled without sleeping)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def _daemon(tmp_path: Path, root: Path, alerts: dict, clock: Clock | None = None,
            stale_after: str = "10m", engine: Engine | None = None) -> Daemon:
    return make_daemon(tmp_path / "state", root, alerts=alerts, clock=clock, stale_after=stale_after,
                       engine=engine)


def _stop(d: Daemon) -> None:
    d.close(timeout=WAIT)


def _background_done(d: Daemon) -> None:
    """What the service loop does between passes: run what the background worker finished (plots)."""
    assert d.background.wait_idle(WAIT)
    d.background.drain()


def _titles(hook: WebhookServer) -> list[str]:
    return [p["title"] for p in hook.posts]


def test_corrupt_alert_routed_once_across_restart_then_resolved(artefact, tmp_path: Path) -> None:
    """corrupt goes to its route (email) once, not again after a restart, and RESOLVED when it is fixed."""
    root = tmp_path / "root"
    root.mkdir()
    run = root / "run-a"
    shutil.copytree(artefact("hf_full"), run, symlinks=True)
    weights = run / "checkpoint-6" / "model.safetensors"
    good, good_times = weights.read_bytes(), (weights.stat().st_atime_ns, weights.stat().st_mtime_ns)
    with SmtpServer() as smtp, WebhookServer() as hook:
        alerts = {"urls": [hook.url()], "channels": {"oncall": [smtp.url()]},
                  "routes": {"corrupt": ["oncall"]}}
        with open(weights, "r+b") as f:
            f.truncate(len(good) // 2)
        os.utime(weights, ns=good_times)  # a bad copy that kept the times: only the truncation shows
        d = _daemon(tmp_path, root, alerts)
        d.judge_watch(d.config.watches[0])
        d.judge_watch(d.config.watches[0])  # a second pass over the same damage: nothing new
        assert d.alerts.flush(WAIT)
        (mail,) = smtp.wait_for(1, WAIT)
        assert mail["Subject"] == "[ckptwatch] run-a: checkpoint-6 corrupt (truncated: model.safetensors)"
        body = body_text(mail)
        assert f"Checkpoint: {run / 'checkpoint-6'}" in body and "truncated:" in body
        assert f"ckptwatch latest says resume from checkpoint-4 (step 4): {run / 'checkpoint-4'}" in body
        assert hook.posts == []  # corrupt is routed to email only
        _stop(d)

        d = _daemon(tmp_path, root, alerts)  # a restart: the ledger remembers what was sent
        d.judge_watch(d.config.watches[0])
        assert d.alerts.flush(WAIT)
        time.sleep(0.5)
        assert len(smtp.messages) == 1

        weights.write_bytes(good)  # restored from a backup with its times (cp -p): complete again
        os.utime(weights, ns=good_times)
        d.judge_watch(d.config.watches[0])
        assert d.alerts.flush(WAIT)
        mails = smtp.wait_for(2, WAIT)
        assert mails[1]["Subject"] == "[ckptwatch] RESOLVED run-a: checkpoint-6 is now complete"
        _stop(d)
        assert hook.posts == []


def test_incomplete_newest_waits_for_stale_after(artefact, tmp_path: Path) -> None:
    """An incomplete newest checkpoint is alerted once it stayed so for stale_after; an older one at once."""
    root = tmp_path / "root"
    root.mkdir()
    run = root / "run-a"
    shutil.copytree(artefact("hf_full"), run, symlinks=True)
    (run / "checkpoint-2" / "optimizer.pt").unlink()  # older than a complete one: final at once
    (run / "checkpoint-6" / "optimizer.pt").unlink()  # the newest: maybe still being written
    clock = Clock()
    with WebhookServer() as hook:
        d = _daemon(tmp_path, root, {"urls": [hook.url()]}, clock)
        d.judge_watch(d.config.watches[0])
        assert d.alerts.flush(WAIT)
        (post,) = hook.wait_for(1, WAIT)
        assert post["title"].startswith("[ckptwatch] run-a: checkpoint-2 incomplete")
        due = d.dirty.next_due()
        ckpt = run / "checkpoint-6"
        newest_write = max([ckpt.stat().st_mtime, *(f.stat().st_mtime for f in ckpt.iterdir())])
        assert due is not None and abs(due - (newest_write + 600 + 1)) < 2  # looked at again when stale

        clock.offset = 601.0 + newest_write - time.time() + 1
        (settled,) = d.dirty.take_due(clock())
        d.judge_watch(d.config.watches[0], settled[1])
        assert d.alerts.flush(WAIT)
        posts = hook.wait_for(2, WAIT)
        assert posts[1]["title"].startswith("[ckptwatch] run-a: checkpoint-6 incomplete")
        assert "optimizer.pt is missing" in posts[1]["message"]
        _stop(d)
    assert len(hook.posts) == 2


def test_failing_pass_alerts_service_error_then_resolves(tmp_path: Path) -> None:
    """A pass that raises is alerted once as service_error; the next good pass sends RESOLVED."""
    from dataclasses import replace

    root = tmp_path / "root"
    root.mkdir()
    real = Engine.default()
    failing = [True]

    def check_root(*a, **k):
        if failing[0]:
            raise PermissionError(13, "Permission denied", str(root / "run-b"))
        return real.check_root(*a, **k)

    with WebhookServer() as hook:
        d = _daemon(tmp_path, root, {"urls": [hook.url()]}, engine=replace(real, check_root=check_root))
        d.judge_watch(d.config.watches[0])
        d.judge_watch(d.config.watches[0])
        assert d.alerts.flush(WAIT)
        (post,) = hook.wait_for(1, WAIT)
        assert post["title"].endswith(f"service error in judging {root}")
        assert "PermissionError" in post["message"] and "ckptwatch once" in post["message"]
        failing[0] = False
        d.judge_watch(d.config.watches[0])
        assert d.alerts.flush(WAIT)
        posts = hook.wait_for(2, WAIT)
        assert posts[1]["title"].startswith("[ckptwatch] RESOLVED")
        _stop(d)


def test_low_disk_alerted_once(tmp_path: Path) -> None:
    """A watched filesystem below alerts.disk_low_free is alerted once, however often it is checked."""
    root = tmp_path / "root"
    root.mkdir()
    with WebhookServer() as hook:
        d = _daemon(tmp_path, root, {"urls": [hook.url()], "disk_low_free": "1P"})
        d.alerts.tick(time.time())
        d.alerts.tick(time.time())
        assert d.alerts.flush(WAIT)
        (post,) = hook.wait_for(1, WAIT)
        assert f"disk low at {root}" in post["title"] and "alerts.disk_low_free = 1" in post["message"]
        _stop(d)


def test_no_channel_means_no_ledger_and_no_thread(tmp_path: Path) -> None:
    """Without [alerts] the service opens no alert table and starts no worker thread."""
    import sqlite3
    import threading

    root = tmp_path / "root"
    root.mkdir()
    before = sum(t.name == "ckptwatch-alerts" for t in threading.enumerate())
    d = _daemon(tmp_path, root, {})
    d.judge_watch(d.config.watches[0])
    assert sum(t.name == "ckptwatch-alerts" for t in threading.enumerate()) == before
    tables = sqlite3.connect(os.path.join(tmp_path / "state", "state.sqlite")).execute(
        "SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    assert ("alerts",) not in tables
    _stop(d)


def test_loss_jump_after_stub_resume_mailed_with_cause_and_plot_once(artefact, tmp_path: Path) -> None:
    """The real Trainer resumed through a stub pytorch_model.bin: one loss_jump mail naming checkpoint-20,
    its stub hazard and both losses, with the PNG attached; not re-sent after a restart."""
    from structlog.testing import capture_logs

    from tests.servers import attachment_names

    root = tmp_path / "root"
    root.mkdir()
    shutil.copytree(artefact("loss_hf_resume_stub"), root / "run-lora", symlinks=True)
    with SmtpServer() as smtp, WebhookServer() as hook:
        alerts = {"urls": [hook.url()], "channels": {"oncall": [smtp.url()]},
                  "routes": {"loss_jump": ["oncall"]}}
        d = _daemon(tmp_path, root, alerts)
        with capture_logs() as logs:
            d.judge_watch(d.config.watches[0])
        _background_done(d)
        assert d.alerts.flush(WAIT)
        (mail,) = smtp.wait_for(1, WAIT)
        assert mail["Subject"].startswith("[ckptwatch] run-lora: loss jumped x")
        assert mail["Subject"].endswith("after resuming at step 21 (from scratch?)")
        body = body_text(mail)
        assert "Resumed from: checkpoint-20 (step 20)" in body
        # the cause, beside the effect
        assert "pytorch_model.bin" in body and "adapter_model.safetensors" in body
        (png,) = attachment_names(mail)
        assert png.endswith("-step21.png")
        (resume,) = [e for e in logs if e["event"] == "resume_detected"]
        assert resume["alert"] and resume["ratio"] > 3 and resume["before"] < 0.5 < 1.5 < resume["after"]
        assert resume["checkpoint"].endswith("checkpoint-20")
        assert not any("loss jumped" in p["title"] for p in hook.posts)  # routed to email only
        _stop(d)

        d = _daemon(tmp_path, root, alerts)
        d.judge_watch(d.config.watches[0])
        assert d.alerts.flush(WAIT)
        time.sleep(0.5)
        assert len(smtp.messages) == 1
        _stop(d)


def test_loss_jump_seen_between_passes_while_the_run_logs(artefact, tmp_path: Path) -> None:
    """Loss logs need no settling: the resumed process's events file appearing in an active run is read by
    the periodic loss poll (no checkpoint pass) and the jump is alerted."""
    from structlog.testing import capture_logs

    interrupted, resumed = artefact("loss_hf_interrupted"), artefact("loss_hf_resume_fresh")
    root = tmp_path / "root"
    root.mkdir()
    run = root / "run-lora"
    shutil.copytree(interrupted, run, symlinks=True)
    first = {p.name for p in (run / "runs").iterdir()}
    with WebhookServer() as hook:
        d = _daemon(tmp_path, root, {"urls": [hook.url()]})
        with capture_logs() as logs:
            d.judge_watch(d.config.watches[0])
        assert not [e for e in logs if e["event"] == "resume_detected"]
        (new_events,) = [p for p in (resumed / "runs").iterdir() if p.name not in first]
        shutil.copy2(new_events, run / "runs" / new_events.name)  # the resumed process's TensorBoard file
        d.dirty.touch(str(root), time.time(), str(run))  # what the watchdog handler does for that write
        with capture_logs() as logs:
            d.sink("loss watch").tick(time.time())
        _background_done(d)
        (resume,) = [e for e in logs if e["event"] == "resume_detected"]
        assert resume["alert"] and resume["step"] == 21 and resume["checkpoint"].endswith("checkpoint-20")
        assert not [e for e in logs if e["event"] == "checkpoint_judged"]  # no checkpoint pass was needed
        assert d.alerts.flush(WAIT)
        posts = hook.wait_for(1, WAIT)
        assert [p["title"] for p in posts if "loss jumped" in p["title"]]
        _stop(d)


def test_quiet_run_is_scheduled_then_alerted_stalled(artefact, tmp_path: Path) -> None:
    """No new checkpoint for the 10-minute floor: the run is looked at again then, without any event,
    and alerted stalled once."""
    root = tmp_path / "root"
    root.mkdir()
    run = root / "run-a"
    shutil.copytree(artefact("hf_full"), run, symlinks=True)
    clock = Clock()
    with WebhookServer() as hook:
        d = _daemon(tmp_path, root, {"urls": [hook.url()]}, clock)
        d.judge_watch(d.config.watches[0])
        newest = max(p.stat().st_mtime for p in (run / "checkpoint-6").rglob("*"))
        due = d.dirty.next_due()
        assert due is not None and newest + 600 <= due <= newest + 600 + 5  # the stalled threshold's floor
        clock.offset = due + 1 - time.time()
        for root_, scope in d.dirty.take_due(clock()):
            d.judge_watch(d.config.watches[0], scope)
        d.judge_watch(d.config.watches[0])
        assert d.alerts.flush(WAIT)
        (post,) = hook.wait_for(1, WAIT)
        assert post["title"].startswith("[ckptwatch] run-a: no new checkpoint for 10m")
        assert "(nothing written)" in post["title"]
        assert ("Threshold:       10m (3x median interval of the last 3 checkpoints, raised to the 10 min "
                "floor)") in post["message"]
        _stop(d)
