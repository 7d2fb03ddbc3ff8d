"""Daemon health rules, in-process: observer fallback, dead observer restart, a failing pass survives."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ckptwatch.daemon import Daemon
from ckptwatch.watch import Watcher
from tests.helpers import make_daemon


def _daemon(tmp_path: Path, observer: str = "inotify") -> Daemon:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    return make_daemon(tmp_path / "state", root, observer=observer)


def test_inotify_exhaustion_falls_back_to_polling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When inotify cannot start (watch limit), the root is watched by polling and a warning says so."""
    real = Watcher.start

    def start(self):
        if self.kind == "inotify":
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        real(self)

    monkeypatch.setattr(Watcher, "start", start)
    d = _daemon(tmp_path)
    with capture_logs() as logs:
        d.observers.start(d.config.watches, d.judge.run_index)
    try:
        (w,) = d.observers.watchers.values()
        assert w.kind == "polling" and w.alive()
        assert [e["event"] for e in logs] == ["observer_fallback"]
    finally:
        for w in d.observers.watchers.values():
            w.stop()


def test_dead_observer_is_restarted(tmp_path: Path) -> None:
    """An observer thread that died is reported and replaced, and its root is marked for a rescan."""
    d = _daemon(tmp_path)
    d.observers.start(d.config.watches, d.judge.run_index)
    (w,) = d.observers.watchers.values()
    w.stop()
    with capture_logs() as logs:
        d.observers.check(d.judge.run_index)
    try:
        assert [e["event"] for e in logs] == ["observer_died"]
        (new,) = d.observers.watchers.values()
        assert new is not w and new.alive()
        assert d.dirty.next_due() is not None
    finally:
        for x in d.observers.watchers.values():
            x.stop()


def test_a_failing_pass_is_logged_not_fatal(tmp_path: Path) -> None:
    """An unexpected error while judging a root is a service_error log line; the service goes on."""
    from dataclasses import replace

    from ckptwatch.passes import Engine

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    root = tmp_path / "root"
    root.mkdir()
    d = make_daemon(tmp_path / "state", root, engine=replace(Engine.default(), check_root=boom))
    with capture_logs() as logs:
        d.judge_watch(d.config.watches[0])
    assert logs[0]["event"] == "service_error" and "disk on fire" in logs[0]["error"]
