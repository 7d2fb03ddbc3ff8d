"""Stopping a mirror in flight: the service's close (what SIGTERM leads to) and ``ckptwatch mirror`` getting
SIGTERM or SIGINT mid-copy abort the upload in flight, commit nothing, and the next start resumes and
commits. Real Trainer checkpoints, a real local target.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror.cancel import Cancel, CancellableTarget, Cancelled
from ckptwatch.mirror.restore import verify_copy
from ckptwatch.mirror.target import TEMP_MARK, LocalTarget
from ckptwatch.mirror.targets import target_for
from tests.helpers import REPO, make_daemon, run_cli, two_trainer_runs

pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")  # apprise's
CHECKPOINTS = ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


class _HeldUpload:
    def __init__(self, inner, gate: Gate) -> None:
        self.inner, self.gate = inner, gate

    def write(self, data) -> None:
        if not self.gate.entered.is_set():  # the first write of the job: a slow network write in flight
            self.gate.entered.set()
            assert self.gate.release.wait(60), "the test never released the write"
        self.inner.write(data)

    def commit(self, mtime_ns=None) -> None:
        self.inner.commit(mtime_ns)

    def abort(self) -> None:
        self.gate.aborted += 1
        self.inner.abort()


class Gate:
    """A local target whose first write blocks until ``release`` (a write stuck on the network)."""

    def __init__(self, inner) -> None:
        self.inner, self.url = inner, inner.url
        self.entered, self.release = threading.Event(), threading.Event()
        self.aborted = 0

    def open_write(self, name: str):
        return _HeldUpload(self.inner.open_write(name), self)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _temps(backup: Path) -> list[Path]:
    return [p for p in backup.rglob("*") if TEMP_MARK in p.name]


def _events(logs: list[dict], name: str) -> list[dict]:
    return [e for e in logs if e["event"] == name]


def test_close_aborts_the_copy_in_flight_and_the_next_start_commits(artefact, tmp_path):
    """A copy blocked in its first write when the service stops: close sets the cancel, the write returns,
    the next one raises, the upload is aborted (no temp left), nothing is committed, no mirror_failed and
    no alert; close returns with the worker idle. The next start copies and commits every checkpoint."""
    root = two_trainer_runs(artefact, tmp_path)
    backup, state = tmp_path / "backup", tmp_path / "state"
    mirror = {"to": str(backup), "parallel": 1}
    d = make_daemon(state, root, watch={"mirror": mirror})
    gate = Gate(target_for(str(backup)))
    d.sink("mirror").make_target = lambda config: gate
    closed = threading.Event()
    with capture_logs() as logs:
        d.judge_watch(d.config.watches[0])
        assert gate.entered.wait(60)
        closer = threading.Thread(target=lambda: (d.close(timeout=60), closed.set()))
        closer.start()
        assert _until(d.sink("mirror").cancel)
        gate.release.set()  # the stuck write completes; the copy must stop at its next write
        closer.join(120)
        assert closed.is_set()
    assert d.background.wait_idle(0)  # the job ended within close, not after it
    interrupted = _events(logs, "mirror_interrupted")
    assert len(interrupted) == 1 and Path(interrupted[0]["checkpoint"]).name == "checkpoint-6"
    assert "stopping" in interrupted[0]["why"]
    assert not _events(logs, "mirror_committed") and not _events(logs, "mirror_failed")
    assert not _events(logs, "service_error")
    assert gate.aborted >= 1 and _temps(backup) == []
    _nothing_committed_then_the_next_start_commits_all(state, root, backup, mirror)


def _nothing_committed_then_the_next_start_commits_all(state: Path, root: Path, backup: Path,
                                                       mirror: dict) -> None:
    """After the interrupted service: no copy committed; a new service commits all 6, and each verifies."""
    target = LocalTarget(str(backup))
    for run in ("run-a", "run-b"):
        for name in CHECKPOINTS:
            assert mf.copy_state(target, f"{run}/{name}").state in ("absent", "partial"), (run, name)
    d = make_daemon(state, root, watch={"mirror": mirror})
    try:
        with capture_logs() as logs:
            d.judge_watch(d.config.watches[0])
            assert d.background.wait_idle(60)
            d.background.drain()
        assert len(_events(logs, "mirror_committed")) == 6
        for run in ("run-a", "run-b"):
            for name in CHECKPOINTS:
                manifest, findings = verify_copy(target, f"{run}/{name}")
                assert manifest is not None and findings == [], (run, name, findings)
        assert _temps(backup) == []
    finally:
        d.close()


def _until(cancel: Cancel) -> bool:
    """Wait (bounded) until ``cancel`` is set by the closing thread."""
    for _ in range(6000):
        if cancel.is_set():
            return True
        threading.Event().wait(0.01)
    return False


def test_a_cancelled_target_aborts_the_upload_and_commits_nothing(tmp_path):
    """The wrapper on its own: writes before the cancel go through; after it, write and commit raise and
    the temp file is gone once the caller aborts."""
    cancel = Cancel()
    target = CancellableTarget(LocalTarget(str(tmp_path / "t")), cancel)
    up = target.open_write("a/b.bin")
    up.write(b"x" * 10)
    cancel.set("SIGTERM")
    with pytest.raises(Cancelled, match="SIGTERM"):
        up.write(b"y")
    with pytest.raises(Cancelled):
        up.commit()
    up.abort()
    assert _temps(tmp_path / "t") == [] and target.stat("a/b.bin") is None
    with pytest.raises(Cancelled):
        target.open_write("a/c.bin")
    assert target.list("") == {}


def _signalled(run: Path, backup: Path, at: int, signame: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CKPTWATCH_SIGNAL_AT": str(at), "CKPTWATCH_SIGNAL": signame}
    argv = [sys.executable, "-m", "tests.mirror_signal_child", "mirror", str(run), "--to", str(backup),
            "--settle", "0"]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("signame", "at"), [("SIGTERM", 3), ("SIGINT", 1), ("SIGTERM", 12)])
def test_the_cli_stops_on_a_signal_mid_copy_and_the_next_run_resumes(artefact, tmp_path, signame, at):
    """A real signal delivered while an upload is open (the at-th write into a temp file of the copy):
    exit 130, a message naming the signal and saying nothing was committed, no temp file left, no copy
    committed past the signal; the next run commits every checkpoint and leaves no temp."""
    root = two_trainer_runs(artefact, tmp_path)
    run, backup = root / "run-a", tmp_path / "backup"
    proc = _signalled(run, backup, at, signame)
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert f"interrupted by {signame}" in proc.stderr and "nothing of it was committed" in proc.stderr, \
        proc.stderr
    assert "Traceback" not in proc.stderr
    assert _temps(backup) == []
    target = LocalTarget(str(backup))
    states = {name: mf.copy_state(target, f"run-a/{name}").state for name in CHECKPOINTS}
    assert states["checkpoint-2"] in ("absent", "partial")  # newest first: the oldest never started
    if at > 2:  # files copied before the signal stay in place (uncommitted) for the next run to resume
        assert "partial" in states.values(), states
    again = run_cli("mirror", str(run), "--to", str(backup), "--settle", "0")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("committed   ") + again.stdout.count("up to date  ") == 3, again.stdout
    for name in CHECKPOINTS:
        manifest, findings = verify_copy(target, f"run-a/{name}")
        assert manifest is not None and findings == [], (name, findings)
    assert _temps(backup) == []


class _Tripwire:
    """Sets ``cancel`` once ``after`` writes went through (a SIGTERM arriving mid-file)."""

    def __init__(self, inner, cancel: Cancel, after: int, seen=None) -> None:
        self.inner, self.cancel, self.after, self.url = inner, cancel, after, inner.url
        self.seen = seen or (lambda: None)  # what the test looks at when the cancel comes
        self.at_trip = None

    def open_write(self, name: str):
        tripwire = self
        upload = self.inner.open_write(name)

        class Up:
            def write(self, data) -> None:
                upload.write(data)
                tripwire.after -= 1
                if tripwire.after == 0:
                    tripwire.at_trip = tripwire.seen()
                    tripwire.cancel.set("SIGTERM")

            def commit(self, mtime_ns=None) -> None:
                upload.commit(mtime_ns)

            def abort(self) -> None:
                upload.abort()

        return Up()

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_cancel_mid_file_aborts_the_s3_multipart_upload(s3, monkeypatch, tmp_path):
    """12 MiB copied to S3 in 5 MiB parts: the cancel comes after two 4 MiB writes (one part is up, so a
    multipart upload is open); the next write raises, and copy_file's abort leaves neither an object nor
    an open multipart upload."""
    from ckptwatch.mirror import fsspec_target
    from ckptwatch.mirror.copy import _Source, copy_file
    from ckptwatch.mirror.hashing import ALGORITHM

    monkeypatch.setattr(fsspec_target, "BLOCK_SIZE", 5 << 20)  # S3's smallest part: keeps the test small
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(12 << 20))
    cancel = Cancel()
    tripwire = _Tripwire(fsspec_target.FsspecTarget(s3.url("pre")), cancel, 2, s3.multipart_uploads)
    with pytest.raises(Cancelled):
        copy_file(_Source("big.bin", str(src)), CancellableTarget(tripwire, cancel), "run/ckpt/big.bin",
                  ALGORITHM)
    assert tripwire.at_trip == ["pre/run/ckpt/big.bin"]  # a multipart upload was open when it came
    assert s3.multipart_uploads() == [] and s3.keys() == {}


def test_sigterm_to_the_service_mid_copy_exits_cleanly_and_the_next_start_commits(artefact, tmp_path):
    """A real `ckptwatch run` gets a real SIGTERM while its worker writes the third file of a copy: the
    service stops (exit 0, service_stopping), the copy is interrupted (mirror_interrupted, no
    mirror_committed, no mirror_failed), no temp file is left and nothing is committed; the next start
    commits every checkpoint."""
    import json

    root = two_trainer_runs(artefact, tmp_path)
    backup, state = tmp_path / "backup", tmp_path / "state"
    cfg = tmp_path / "ckptwatch.toml"
    cfg.write_text(f'[service]\nsettle_seconds = 0\nstate_dir = "{state}"\nlog_format = "json"\n'
                   f'[[watch]]\npath = "{root}"\n[watch.mirror]\nto = "{backup}"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update(CKPTWATCH_SIGNAL_AT="3", CKPTWATCH_SIGNAL="SIGTERM")
    proc = subprocess.run([sys.executable, "-m", "tests.mirror_signal_child", "run", "--config", str(cfg)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "service_stopping" in names and "mirror_interrupted" in names, names
    assert "mirror_committed" not in names and "mirror_failed" not in names and "service_error" not in names
    assert _temps(backup) == []
    _nothing_committed_then_the_next_start_commits_all(state, root, backup, {"to": str(backup)})
