"""Two mirrors of one checkpoint to one target at once, as two real processes: the second refuses the copy
the first is writing ("another mirror is writing this copy (pid, host, since)"), writes nothing into it,
and nothing is corrupted; a writer killed with -9 leaves no lock that blocks the next one.

The first process is ``tests/mirror_pause_child.py``: a real ``ckptwatch mirror`` stopped at its first
write, i.e. inside the copy of the newest checkpoint of a real 4-rank DCP run, holding that copy's lock.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror.lock import CopyBusy, copy_lock
from ckptwatch.mirror.restore import verify_copy
from ckptwatch.mirror.target import LocalTarget
from tests.helpers import REPO, run_cli

pytestmark = pytest.mark.slow  # a real DCP run is built


def _start_paused(run: Path, to: Path, tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    paused, resume = tmp_path / "paused", tmp_path / "resume"
    env = {**os.environ, "CKPTWATCH_PAUSED_FILE": str(paused), "CKPTWATCH_RESUME_FILE": str(resume)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.mirror_pause_child", "mirror", str(run), "--to",
                             str(to), "--settle", "0", "--json"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not paused.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first mirror never reached its first write"
        time.sleep(0.05)
    return proc, resume


def _results(stdout: str) -> dict[str, dict]:
    [item] = json.loads(stdout)["runs"]
    return {os.path.basename(c["checkpoint"]): c for c in item["mirror"]["checkpoints"]}


def test_second_mirror_refuses_the_copy_being_written(artefact, tmp_path):
    run = artefact("dcp")
    to = tmp_path / "backup"
    first, resume = _start_paused(run, to, tmp_path)
    try:
        second = run_cli("mirror", str(run), "--to", str(to), "--settle", "0", "--json")
        assert second.returncode == 1, second.stderr
        results = _results(second.stdout)
        busy = results["step_300"]
        assert busy["result"] == "failed"
        assert busy["reason"].startswith(f"another mirror is writing this copy (pid {first.pid}, host "
                                         f"{socket.gethostname()}, since 20"), busy["reason"]
        # the copy being written by the first is untouched: no marker, no manifest, no file of the second
        copy = to / "dcp" / "step_300"
        assert not (copy / mf.MARKER_NAME).exists() and not (copy / mf.MANIFEST_NAME).exists()
        assert {results[c]["result"] for c in ("step_100", "step_200")} == {"committed"}
    finally:
        resume.touch()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    done = _results(out)
    assert done["step_300"]["result"] == "committed"
    assert {done[c]["result"] for c in ("step_100", "step_200")} == {"up_to_date"}
    for name in ("step_100", "step_200", "step_300"):
        manifest, findings = verify_copy(LocalTarget(str(to / "dcp" / name)))
        assert manifest is not None and findings == []
        assert not (to / "dcp" / name / mf.LOCK_NAME).exists()


def test_a_killed_writer_leaves_no_lock(artefact, tmp_path):
    """kill -9 of the writer holding the lock: the kernel drops it; the next mirror commits everything."""
    run = artefact("dcp")
    to = tmp_path / "backup"
    first, _resume = _start_paused(run, to, tmp_path)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    assert (to / "dcp" / "step_300" / mf.LOCK_NAME).exists()  # left behind, but no longer locked
    again = run_cli("mirror", str(run), "--to", str(to), "--settle", "0", "--json")
    assert again.returncode == 0, again.stderr + again.stdout
    assert {r["result"] for r in _results(again.stdout).values()} == {"committed"}
    manifest, findings = verify_copy(LocalTarget(str(to / "dcp" / "step_300")))
    assert manifest is not None and findings == []


def test_lock_is_exclusive_and_names_its_holder(tmp_path):
    """In one process too (flock is per open file): the second taker gets CopyBusy naming the first."""
    target = LocalTarget(str(tmp_path))
    with copy_lock(target, "run/ckpt", host="node-a"):
        with pytest.raises(CopyBusy) as exc, copy_lock(target, "run/ckpt", host="node-b"):
            pass
        assert exc.value.holder is not None and exc.value.holder.host == "node-a"
        assert exc.value.holder.pid == os.getpid()
    assert not (tmp_path / "run" / "ckpt" / mf.LOCK_NAME).exists()
    with copy_lock(target, "run/ckpt", host="node-b"):  # released: free again
        pass


def test_lock_refuses_a_planted_symlink(tmp_path):
    """A symlink where the lock file belongs is never followed (O_NOFOLLOW): the copy fails, the link's
    target is untouched."""
    (tmp_path / "run" / "ckpt").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "run" / "ckpt" / mf.LOCK_NAME).symlink_to(victim)
    with pytest.raises(OSError), copy_lock(LocalTarget(str(tmp_path)), "run/ckpt", host="h"):
        pass
    assert victim.read_text() == "keep"


def _lease_doc(host: str, renewed: float) -> bytes:
    return json.dumps({"pid": 1, "host": host, "since": 1.0, "renewed": renewed, "token": "x"}).encode()


def test_s3_lease_refuses_a_live_writer_and_takes_a_stale_one(s3_target):
    """On S3 (moto's server) the lock is a lease object: a writer on this host holding it refuses the second
    (named); a lease of another host renewed just now refuses too; one of another host not renewed for
    LEASE_STALE seconds, or one of this host that nobody here holds (a writer that could not remove it),
    is taken over; the holder removes it."""
    from ckptwatch.mirror import lock

    name = f"run/ckpt/{mf.LOCK_NAME}"
    with copy_lock(s3_target, "run/ckpt", host="node-a") as lease:
        with pytest.raises(CopyBusy) as exc, copy_lock(s3_target, "run/ckpt", host="node-a"):
            pass
        assert exc.value.holder is not None and exc.value.holder.host == "node-a"
        lease.renew()
        assert s3_target.stat(name) is not None
    assert s3_target.stat(name) is None
    mf.put(s3_target, name, _lease_doc("other-node", time.time()))
    with pytest.raises(CopyBusy, match="host other-node"), copy_lock(s3_target, "run/ckpt", host="node-a"):
        pass
    long_ago = time.time() - lock.LEASE_STALE - 1
    for stale in (_lease_doc("other-node", long_ago), _lease_doc("node-a", time.time())):
        mf.put(s3_target, name, stale)
        with copy_lock(s3_target, "run/ckpt", host="node-a"):
            holder, _, _ = lock._parse(mf.read_small(s3_target, name, 4096))
            assert holder is not None and holder.host == "node-a" and holder.pid == os.getpid()
        assert s3_target.stat(name) is None


def test_a_lock_left_in_a_committed_copy_is_removed(artefact, tmp_path):
    """A writer killed between its commit and unlinking its lock leaves the lock file in a committed copy:
    the next pass finds the copy up to date, takes the (free) lock and so removes it."""
    run = artefact("dcp")
    to = tmp_path / "backup"
    assert run_cli("mirror", str(run), "--to", str(to), "--settle", "0").returncode == 0
    left = to / "dcp" / "step_200" / mf.LOCK_NAME
    left.write_text(json.dumps({"pid": 1, "host": "h", "since": 1.0}))
    again = run_cli("mirror", str(run), "--to", str(to), "--settle", "0", "--json")
    assert again.returncode == 0 and {r["result"] for r in _results(again.stdout).values()} == {"up_to_date"}
    assert not left.exists()
