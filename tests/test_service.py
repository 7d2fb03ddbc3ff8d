"""`ckptwatch run` end to end: a real subprocess, real sd_notify socket, real DCP checkpoints written slowly.

The 4-rank DCP checkpoints come from a real gloo group (the `dcp` builder); the test copies their files
into the watched root one at a time, as a slow writer would, or stops after three of four shards, as a
writer that died would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.service_proc import Service

pytestmark = pytest.mark.slow
SETTLE = 2.0


def _config(tmp_path: Path, root: Path, extra: str = "", stale_after: str = "30m", tables: str = "") -> Path:
    cfg = tmp_path / "ckptwatch.toml"
    cfg.write_text(f'[service]\nsettle_seconds = {SETTLE}\nstale_after = "{stale_after}"\n'
                   f'state_dir = "{tmp_path / "state"}"\n'
                   f'log_format = "json"\nrescan_seconds = 60\n{extra}\n[[watch]]\npath = "{root}"\n{tables}')
    return cfg


def _root_with_settled_step_100(dcp: Path, tmp_path: Path) -> Path:
    """A watched root holding the real 4-rank step_100, its files dated an hour back (long settled)."""
    root = tmp_path / "watched"
    root.mkdir()
    shutil.copytree(dcp / "step_100", root / "step_100")
    old = time.time() - 3600
    for f in (root / "step_100").iterdir():
        os.utime(f, (old, old))
    return root


def _copy_slowly(src: Path, dest: Path, delay: float, skip: tuple[str, ...] = ()) -> None:
    dest.mkdir()
    # data files first, the commit marker last, as DCP writes them
    files = [f for f in sorted(src.iterdir(), key=lambda p: p.name == ".metadata") if f.name not in skip]
    for i, f in enumerate(files):
        if i:
            time.sleep(delay)
        shutil.copyfile(f, dest / f.name)


def test_service_judges_after_settle_and_survives_kill9(artefact, tmp_path: Path) -> None:
    """READY/WATCHDOG/STATUS; no verdict mid-write; complete once settled; a dead rank named; kill -9 safe."""
    from tests.servers import WebhookServer

    dcp = artefact("dcp")
    root = tmp_path / "watched"
    root.mkdir()
    hook = WebhookServer().start()
    cfg = _config(tmp_path, root, stale_after="6s", tables=f'[alerts]\nurls = ["{hook.url()}"]\n')
    svc = Service(cfg, tmp_path / "notify.sock")
    try:
        svc.wait_for(lambda: "READY=1" in svc.messages, what="READY=1")
        assert any(e.get("event") == "service_ready" for e in svc.events)

        _copy_slowly(dcp / "step_100", root / "step_100", delay=0.7)
        written = time.monotonic()
        assert not [e for e in svc.judged("step_100") if e["status"] != "in_progress"]
        done = svc.wait_for(lambda: [e for e in svc.judged("step_100") if e["status"] == "complete"],
                            timeout=SETTLE + 15, what="step_100 complete")
        assert time.monotonic() - written >= SETTLE - 0.5
        assert done[0]["step"] == 100

        _copy_slowly(dcp / "step_200", root / "step_200", delay=0.2, skip=("__3_0.distcp", ".metadata"))
        bad = svc.wait_for(lambda: [e for e in svc.judged("step_200") if e["status"] == "incomplete"],
                           timeout=SETTLE + 15, what="step_200 incomplete")
        messages = " ".join(p["message"] for p in bad[0]["problems"])
        assert "rank 3 of 4" in messages and "__3_0.distcp" in messages
        # The newest checkpoint is alerted once it stayed incomplete for stale_after (6 s), naming rank 3.
        (alert,) = hook.wait_for(1, timeout=20)
        assert alert["title"] == "[ckptwatch] watched: step_200 incomplete (rank 3 missing)"
        svc.wait_for(lambda: [e for e in svc.events if e.get("event") == "alert_sent"
                              and e.get("kind") == "incomplete"],
                     timeout=10, what="alert_sent log line")

        svc.wait_for(lambda: "WATCHDOG=1" in svc.messages, what="WATCHDOG=1")
        status = [m for m in svc.messages if m.startswith("STATUS=")]
        assert status and "1 complete, 1 incomplete" in status[-1]
    finally:
        svc.stop(signal.SIGKILL)

    # Written while the service is down: caught up once; nothing judged before is logged again.
    shutil.copytree(dcp / "step_300", root / "step_300")
    old = time.time() - 3600
    for f in (root / "step_300").iterdir():
        os.utime(f, (old, old))
    svc = Service(cfg, tmp_path / "notify.sock")
    try:
        svc.wait_for(lambda: "READY=1" in svc.messages, what="READY=1 after restart")
        judged = [e for e in svc.events if e.get("event") == "checkpoint_judged"]
        assert [(os.path.basename(e["checkpoint"]), e["status"])
                for e in judged] == [("step_300", "complete")]
    finally:
        assert svc.stop(signal.SIGTERM) == 0
        hook.stop()
    assert len(hook.posts) == 1, [p["title"] for p in hook.posts]  # not re-sent after kill -9
    assert any(e.get("event") == "service_stopping" for e in svc.events)

    from tests.helpers import run_cli

    out = run_cli("status", "--config", str(cfg), "--json")
    assert out.returncode == 1, out.stderr  # step_200 is an open problem
    (run,) = json.loads(out.stdout)["runs"]
    assert run["counts"] == {"complete": 2, "incomplete": 1}
    assert run["newest_complete"]["path"].endswith("step_300")
    assert [os.path.basename(o["checkpoint"]) for o in run["open"]] == ["step_200"]
    assert [(a["kind"], os.path.basename(a["checkpoint"]))
            for a in run["alerts_open"]] == [("incomplete", "step_200")]
    assert run["newest_resumable"] == run["newest_complete"]
    # One JSON form of a problem: status shows the same messages and advice as once --json.
    once = json.loads(run_cli("once", str(root), "--json", "--settle", "0", "--no-loss").stdout)
    (step_200,) = [c for r in once["runs"] for c in r["checkpoints"] if c["path"].endswith("step_200")]
    assert run["open"][0]["problems"] == step_200["problems"] and step_200["problems"]
    text = run_cli("status", "--config", str(cfg)).stdout
    assert all(p["message"] in text for p in step_200["problems"]), text


def test_sighup_with_bad_config_keeps_running(tmp_path: Path) -> None:
    """SIGHUP reloads the config; an invalid new config is logged and the old one kept."""
    root = tmp_path / "watched"
    root.mkdir()
    cfg = _config(tmp_path, root)
    svc = Service(cfg, tmp_path / "notify.sock")
    try:
        svc.wait_for(lambda: "READY=1" in svc.messages, what="READY=1")
        cfg.write_text(cfg.read_text() + "\nbogus = 1\n")
        svc.proc.send_signal(signal.SIGHUP)
        failed = svc.wait_for(lambda: [e for e in svc.events if e.get("event") == "config_reload_failed"],
                              what="config_reload_failed")
        assert "bogus" in failed[0]["error"]
        assert svc.proc.poll() is None
    finally:
        assert svc.stop(signal.SIGTERM) == 0


def test_root_that_appears_later_is_watched(tmp_path: Path) -> None:
    """A watched root that does not exist at start is waited for, not fatal."""
    root = tmp_path / "later"
    svc = Service(_config(tmp_path, root), tmp_path / "notify.sock")
    try:
        svc.wait_for(lambda: "READY=1" in svc.messages, what="READY=1")
        assert any(e.get("event") == "root_missing" for e in svc.events)
        root.mkdir()
        import numpy as np
        from safetensors.numpy import save_file

        save_file({"w": np.ones(4, dtype=np.float32)}, str(root / "model_step_5.safetensors"))
        svc.wait_for(lambda: [e for e in svc.judged("model_step_5.safetensors") if e["status"] == "complete"],
                     timeout=SETTLE + 20, what="a file in the late root judged")
    finally:
        assert svc.stop(signal.SIGTERM) == 0


def test_checkpoint_judged_while_the_trainer_keeps_logging(artefact, tmp_path: Path) -> None:
    """A log appended every 0.2 s in the run dir does not starve the run: its new checkpoint is judged
    within settle_seconds (+ slack) of its last write, while the log keeps growing."""
    dcp = artefact("dcp")
    root = _root_with_settled_step_100(dcp, tmp_path)
    stop = threading.Event()

    def log_forever() -> None:
        with open(root / "train.log", "a") as f:
            while not stop.is_set():
                f.write(f"{{'loss': 0.5, 'step': {time.time()}}}\n")
                f.flush()
                time.sleep(0.2)

    svc = Service(_config(tmp_path, root), tmp_path / "notify.sock")
    logger = threading.Thread(target=log_forever, daemon=True)
    try:
        svc.wait_for(lambda: "READY=1" in svc.messages, what="READY=1")
        logger.start()
        time.sleep(1.0)
        shutil.copytree(dcp / "step_200", root / "step_200")
        written = time.monotonic()
        svc.wait_for(lambda: [e for e in svc.judged("step_200") if e["status"] == "complete"],
                     timeout=SETTLE + 10, what="step_200 complete while the log grows")
        assert time.monotonic() - written < SETTLE + 3
        assert logger.is_alive()
    finally:
        stop.set()
        assert svc.stop(signal.SIGTERM) == 0


def test_file_held_open_for_writing_is_not_judged_final(artefact, tmp_path: Path) -> None:
    """A settled-looking checkpoint whose shard another process holds open for writing stays in_progress."""
    dcp = artefact("dcp")
    root = _root_with_settled_step_100(dcp, tmp_path)
    shard = root / "step_100" / "__2_0.distcp"
    holder = subprocess.Popen([sys.executable, "-c", f"import sys, time; f = open({str(shard)!r}, 'ab'); "
                               "sys.stdout.write('open\\n'); sys.stdout.flush(); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "open\n"
    svc = Service(_config(tmp_path, root), tmp_path / "notify.sock")
    try:
        svc.wait_for(lambda: "READY=1" in svc.messages, what="READY=1")
        (first,) = svc.judged("step_100")
        assert first["status"] == "in_progress"
        assert "open for writing by pid" in first["problems"][0]["message"]
        holder.kill()
        holder.wait()
        svc.wait_for(lambda: [e for e in svc.judged("step_100") if e["status"] == "complete"],
                     timeout=SETTLE + 20, what="complete once the writer is gone")
    finally:
        holder.kill()
        assert svc.stop(signal.SIGTERM) == 0


def test_resume_pointer_follows_newest_complete(artefact, tmp_path: Path) -> None:
    """With latest_good, ckptwatch-latest follows the newest complete checkpoint, past an incomplete one."""
    dcp = artefact("dcp")
    root = tmp_path / "watched"
    root.mkdir()
    cfg = _config(tmp_path, root)
    cfg.write_text(cfg.read_text() + "latest_good = true\n")
    svc = Service(cfg, tmp_path / "notify.sock")
    link, doc = root / "ckptwatch-latest", root / "ckptwatch-latest.json"
    try:
        svc.wait_for(lambda: "READY=1" in svc.messages, what="READY=1")
        _copy_slowly(dcp / "step_100", root / "step_100", delay=0.05)
        svc.wait_for(lambda: link.exists() and os.readlink(link) == "step_100", timeout=SETTLE + 15,
                     what="pointer at step_100")
        assert json.loads(doc.read_text())["step"] == 100
        _copy_slowly(dcp / "step_200", root / "step_200", delay=0.05, skip=("__3_0.distcp", ".metadata"))
        svc.wait_for(lambda: [e for e in svc.judged("step_200") if e["status"] == "incomplete"],
                     timeout=SETTLE + 15, what="step_200 incomplete")
        assert os.readlink(link) == "step_100"
        _copy_slowly(dcp / "step_300", root / "step_300", delay=0.05)
        svc.wait_for(lambda: os.readlink(link) == "step_300", timeout=SETTLE + 15, what="pointer at step_300")
        assert [os.path.basename(e["checkpoint"]) for e in svc.events
                if e.get("event") == "resume_pointer_updated"] == ["step_100", "step_300"]
    finally:
        assert svc.stop(signal.SIGTERM) == 0


def test_metrics_endpoint_on_loopback(artefact, tmp_path: Path) -> None:
    """With metrics_port set, 127.0.0.1 serves per-run gauges: newest complete step, counts, bytes, age."""
    import urllib.request

    dcp = artefact("dcp")
    root = tmp_path / "watched"
    root.mkdir()
    for step in ("step_100", "step_200"):
        shutil.copytree(dcp / step, root / step)
    (root / "step_200" / ".metadata").unlink()
    old = time.time() - 3600
    for f in root.rglob("*"):
        os.utime(f, (old, old))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _config(tmp_path, root)
    cfg.write_text(cfg.read_text().replace("rescan_seconds = 60",
                                           f"rescan_seconds = 60\nmetrics_port = {port}"))
    svc = Service(cfg, tmp_path / "notify.sock")
    try:
        svc.wait_for(lambda: "READY=1" in svc.messages, what="READY=1")
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        run = str(root)
        assert f'ckptwatch_newest_complete_step{{layout="dcp",run="{run}"}} 100.0' in body
        assert f'ckptwatch_checkpoints{{run="{run}",status="incomplete"}} 1.0' in body
        age = next(line for line in body.splitlines() if line.startswith("ckptwatch_seconds_since_complete"))
        assert float(age.split()[-1]) >= 3600
        size = next(line for line in body.splitlines() if line.startswith("ckptwatch_bytes_on_disk"))
        assert float(size.split()[-1]) > 0
    finally:
        assert svc.stop(signal.SIGTERM) == 0
