"""Faults the service must live through (DESIGN.md invariant 5), in-process: a root it cannot read, a
root deleted and recreated under a live observer, a config that is not UTF-8, runs that vanish, and a
trainer's log that grows without producing a watched event."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ckptwatch.daemon import Daemon
from ckptwatch.losswatch.service import LossRun
from ckptwatch.losswatch.settings import LossSettings
from ckptwatch.watch import DirtyScopes, Watcher
from tests.helpers import make_daemon, run_as_nobody, two_trainer_runs

pytestmark = pytest.mark.slow


def _daemon(tmp_path: Path, root: Path, observer: str = "inotify") -> Daemon:
    return make_daemon(tmp_path / "state", root, observer=observer)


def _start_unreadable_polling_root(base: str) -> tuple[dict, list]:
    """In a child without privileges: start the watchers on a 0700 root; report what happened."""
    d = _daemon(Path(base), Path(base) / "root", observer="polling")
    with capture_logs() as logs:
        try:
            d.observers.start(d.config.watches, d.judge.run_index)
            d.faults.call("observer health check", d.observers.check, d.judge.run_index)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            return {"raised": f"{type(exc).__name__}: {exc}"}, []
    kinds = {k: w.kind for k, w in d.observers.watchers.items()}
    for w in d.observers.watchers.values():
        w.stop()
    return kinds, [(e["event"], e.get("component")) for e in logs]


def test_unreadable_root_is_an_error_not_a_crash() -> None:
    """A root the service's user cannot read (polling observer): service_error, no exception, no watcher."""
    import tempfile

    # pytest's tmp dirs are 0700: not for nobody
    base = Path(tempfile.mkdtemp(prefix="ckptwatch-unreadable-"))
    try:
        os.chmod(base, 0o777)
        (base / "state").mkdir(mode=0o777)
        os.chmod(base / "state", 0o777)
        (base / "root").mkdir(mode=0o700)
        os.chmod(base / "root", 0o700)
        warm = _daemon(base / "warm", base / "state", observer="polling")  # import everything as root:
        # Import everything as root: the child without privileges cannot read the interpreter's lib dir.
        warm.observers.start(warm.config.watches, warm.judge.run_index)
        warm.observers.check(warm.judge.run_index)
        for w in warm.observers.watchers.values():
            w.stop()
        warm.close()
        watchers, events = run_as_nobody(_start_unreadable_polling_root, str(base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert watchers == {}, watchers
    assert any(e == "service_error" and c.startswith("watcher of ") for e, c in events), events


def test_observer_of_a_deleted_root_is_not_alive(tmp_path: Path) -> None:
    """Deleting the watched root stops watchdog's emitter; alive() says so; the root gets a new observer."""
    root = tmp_path / "root"
    root.mkdir()
    w = Watcher(str(root), "inotify", DirtyScopes(), time.time)
    w.start()
    try:
        assert w.alive()
        shutil.rmtree(root)
        deadline = time.monotonic() + 10
        while w.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not w.alive()
    finally:
        w.stop()


def test_config_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """A Latin-1 config is a ConfigError naming the file (SIGHUP keeps the old config), not a crash."""
    from ckptwatch.config import load_config
    from ckptwatch.errors import ConfigError

    cfg = tmp_path / "c.toml"
    cfg.write_bytes("# caf\xe9\n[service]\nsettle_seconds = 1\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(cfg))


def test_deleted_run_is_forgotten_by_the_next_whole_pass(artefact, tmp_path: Path) -> None:
    """Metrics and per-run memory drop a run that was deleted (no stale gauges, no stale next-save size)."""
    root = two_trainer_runs(artefact, tmp_path)
    d = _daemon(tmp_path, root)
    d.judge_watch(d.config.watches[0])
    assert {os.path.basename(r) for r in d.runs} == {"run-a", "run-b"}
    assert {os.path.basename(r) for r in d.sink("metrics endpoint").remembered()} == {"run-a", "run-b"}
    shutil.rmtree(root / "run-b")
    d.judge_watch(d.config.watches[0])
    assert {os.path.basename(r) for r in d.runs} == {"run-a"}
    for sink in d.row.sinks:
        assert {os.path.basename(r) for r in sink.remembered()} <= {"run-a"}, sink.name
    assert {os.path.basename(r) for r in d.sink("loss watch").remembered()} == {"run-a"}
    d.close()


def test_growing_log_keeps_its_run_polled_without_events(tmp_path: Path) -> None:
    """A trainer appends to a log it keeps open (no watched event): the run stays active because its last
    poll read new points, so the next poll (5 s later in the loop) reads on; a quiet run waits for the
    slow round (every 300 s)."""
    root = tmp_path / "root"
    run = root / "run-a"
    (run / "checkpoint-10").mkdir(parents=True)
    log = open(run / "train.log", "a")  # noqa: SIM115 - held open across the polls, as a trainer does
    try:
        for i in range(1, 11):
            log.write(f"{{'loss': 1.0, 'step': {i}}}\n")
        log.flush()
        d = _daemon(tmp_path, root)
        loss = d.sink("loss watch")
        loss.runs[str(run)] = LossRun(str(root), str(run), LossSettings(),
                                      ((10, str(run / "checkpoint-10")),))
        now = time.time()

        def grew_at() -> float | None:
            watch = loss.watches.get(str(run))
            return watch.grew_at if watch is not None and watch.grew_at > 0 else None

        loss.tick(now)  # the first slow round reads the history: not growth
        assert grew_at() is None
        for i in range(11, 16):
            log.write(f"{{'loss': 1.0, 'step': {i}}}\n")
        log.flush()
        loss.tick(now + 1)  # not active yet, not a slow round: not read
        assert grew_at() is None
        loss.next_idle_round = 0.0  # the next slow round reads it: it grew
        loss.tick(now + 2)
        assert grew_at() == now + 2
        for i in range(16, 21):
            log.write(f"{{'loss': 1.0, 'step': {i}}}\n")
        log.flush()
        loss.tick(now + 5)  # no event came, but the run is active by growth
        assert grew_at() == now + 5
        loss.tick(now + 10)  # nothing new: polled, no growth
        assert grew_at() == now + 5
    finally:
        log.close()
    d.close()
