"""State-store failures are operator errors with their own exit codes, never "a bug" (exit 3).

Real conditions only: an unprivileged user (``setpriv``), garbage bytes in ``state.sqlite``, a second
``ckptwatch run`` process, and a full filesystem (a small tmpfs, filled with zeros). The messages
must name the path and say what to do.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckptwatch import cli, errors
from ckptwatch.errors import DiskFullError, StateAccessError, StateCorruptError, StateLockedError
from ckptwatch.state import StateStore
from tests.helpers import REPO, make_daemon, run_cli
from tests.service_proc import Service

GARBAGE = b"this is not an sqlite database\n" * 200
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _config(base: Path, state_dir: Path, root: Path) -> Path:
    cfg = base / "ckptwatch.toml"
    cfg.write_text(f'[service]\nstate_dir = "{state_dir}"\nsettle_seconds = 0\nlog_format = "json"\n'
                   f'[[watch]]\npath = "{root}"\n')
    cfg.chmod(0o644)
    return cfg


def _one_error_line(out: subprocess.CompletedProcess[str], code: int) -> str:
    """The CLI's contract for an operator error: exit ``code``, one ``ckptwatch: error:`` line, no "bug"."""
    assert out.returncode == code, (out.returncode, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckptwatch: error: "), out.stderr
    assert "bug" not in out.stderr and "internal error" not in out.stderr
    return lines[0]


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A 0755 temp dir (pytest's are 0700, closed to the unprivileged user)."""
    base = Path(tempfile.mkdtemp(prefix="ckptwatch-state-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of its own (tests run as root); skipped where mounting is not permitted."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(fs: Path) -> Path:
    """Write zeros until the filesystem says ENOSPC; return the filler (delete it to free the space)."""
    filler = fs / "filler"
    block = b"\0" * 4096
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    assert shutil.disk_usage(fs).free < 4096
    return filler


def test_exit_codes_are_defined_once_and_distinct() -> None:
    """cli's codes are errors.py's; each state failure has its own code, none of them 0 to 3."""
    assert (cli.EXIT_OK, cli.EXIT_PROBLEMS, cli.EXIT_USAGE, cli.EXIT_INTERNAL) == (0, 1, 2, 3)
    assert cli.EXIT_INTERNAL is errors.EXIT_INTERNAL
    codes = [c.exit_code for c in (StateAccessError, StateLockedError, StateCorruptError, DiskFullError)]
    assert codes == [4, 5, 6, 7]
    assert errors.ConfigError.exit_code == errors.UsageError.exit_code == 2


def test_unwritable_state_dir_exits_4_naming_the_dir(shared_tmp: Path) -> None:
    """`ckptwatch run` as a user who cannot write the state dir: exit 4, the path, the fix."""
    state = shared_tmp / "state"
    state.mkdir(mode=0o755)
    root = shared_tmp / "root"
    root.mkdir(mode=0o755)
    cfg = _config(shared_tmp, state, root)
    out = subprocess.run([*NOBODY, sys.executable, "-m", "ckptwatch", "run", "--config", str(cfg)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    line = _one_error_line(out, 4)
    assert str(state) in line and "permission denied for user nobody (uid 65534)" in line
    assert "write access to" in line and "service.state_dir" in line
    assert os.listdir(state) == []

    nested = shared_tmp / "state2" / "sub"  # a state dir it would have to create, under one it cannot write
    (shared_tmp / "state2").mkdir(mode=0o755)
    out = subprocess.run([*NOBODY, sys.executable, "-m", "ckptwatch", "run", "--config",
                          str(_config(shared_tmp, nested, root))], capture_output=True, text=True, cwd=REPO,
                         timeout=60)
    assert str(nested) in _one_error_line(out, 4)


def test_status_by_a_user_who_cannot_read_the_state_exits_4(shared_tmp: Path) -> None:
    """`ckptwatch status` as a user outside a 0700 state dir: exit 4 and who should run it, not 'no state'."""
    state = shared_tmp / "state"
    root = shared_tmp / "root"
    root.mkdir(mode=0o755)
    store = StateStore.open_for_service(str(state))
    store.close()
    cfg = _config(shared_tmp, state, root)
    for mode in (0o700, 0o755):  # 0755: readable, but sqlite's WAL reader must create files beside it
        state.chmod(mode)
        out = subprocess.run([*NOBODY, sys.executable, "-m", "ckptwatch", "status", "--config", str(cfg)],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
        line = _one_error_line(out, 4)
        assert str(state / "state.sqlite") in line and "as root or as the user the service runs as" in line
    assert run_cli("status", "--config", str(cfg)).returncode == 0  # root may


def test_corrupt_state_file_exits_6_and_is_left_in_place(tmp_path: Path) -> None:
    """Garbage in state.sqlite: `run` and `status` exit 6 naming the file and the `mv`; nothing deletes it."""
    state = tmp_path / "state"
    state.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    db = state / "state.sqlite"
    db.write_bytes(GARBAGE)
    cfg = _config(tmp_path, state, root)

    line = _one_error_line(run_cli("run", "--config", str(cfg)), 6)
    assert str(db) in line and f"mv {db} {db}.bad" in line and "do not delete it" in line
    assert "start the service" in line and "judging every root again" in line
    line = _one_error_line(run_cli("status", "--config", str(cfg)), 6)
    assert str(db) in line and f"mv {db} {db}.bad" in line

    with pytest.raises(StateCorruptError) as raised:  # in process: the Daemon refuses to start
        make_daemon(state, root)
    assert raised.value.path == str(db)
    with pytest.raises(StateCorruptError):  # and let go of the lock when it refused
        make_daemon(state, root)
    assert db.read_bytes() == GARBAGE

    db.rename(state / "state.sqlite.bad")  # what the message says to do
    d = make_daemon(state, root)
    assert d.state.counts() == {}
    d.state.close()


def test_state_file_that_holds_no_ckptwatch_state_is_corrupt_for_status(tmp_path: Path) -> None:
    """An empty file is a valid empty sqlite database, but not ckptwatch's: exit 6, not a bug."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.sqlite").write_bytes(b"")
    line = _one_error_line(run_cli("status", "--config", str(_config(tmp_path, state, tmp_path))), 6)
    assert "no checkpoints table" in line


def test_second_service_on_one_state_dir_exits_5_naming_the_first(tmp_path: Path) -> None:
    """Two services, one state dir: the second exits 5 naming the first's pid; status still reads;
    once the first stops (SIGTERM) the lock is free and a new service starts."""
    root = tmp_path / "root"
    root.mkdir()
    cfg = _config(tmp_path, tmp_path / "state", root)
    first = Service(cfg)
    try:
        first.ready()
        line = _one_error_line(run_cli("run", "--config", str(cfg)), 5)
        assert f"another ckptwatch service (pid {first.proc.pid}) is using this state dir" in line
        assert str(tmp_path / "state") in line and "its own service.state_dir" in line
        assert run_cli("status", "--config", str(cfg)).returncode == 0  # read-only: no lock needed
    finally:
        assert first.stop() == 0
    again = Service(cfg)
    try:
        again.ready()
    finally:
        assert again.stop() == 0


def test_lock_is_per_store_and_freed_by_close(tmp_path: Path) -> None:
    """In one process too: a second open is refused with this pid; close frees it."""
    first = StateStore.open_for_service(str(tmp_path))
    with pytest.raises(StateLockedError) as raised:
        StateStore.open_for_service(str(tmp_path))
    assert f"(pid {os.getpid()})" in str(raised.value) and raised.value.exit_code == 5
    first.close()
    StateStore.open_for_service(str(tmp_path)).close()


def test_lock_file_planted_as_a_symlink_is_refused_not_followed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    target = tmp_path / "elsewhere"
    (state / "lock").symlink_to(target)
    with pytest.raises(StateAccessError) as raised:
        StateStore.open_for_service(str(state))
    assert "a symlink" in str(raised.value) and raised.value.exit_code == 4
    assert not target.exists()


def test_disk_full_at_start_exits_7(tmpfs: Path, tmp_path: Path) -> None:
    """A full filesystem under the state dir, fresh or with an earlier run's state: `run`, `status` exit 7."""
    root = tmp_path / "root"
    root.mkdir()
    fresh = _config(tmp_path, tmpfs / "fresh", root)
    earlier = tmpfs / "earlier"
    StateStore.open_for_service(str(earlier)).close()
    (tmp_path / "earlier").mkdir()
    used = _config(tmp_path / "earlier", earlier, root)
    _fill(tmpfs)

    line = _one_error_line(run_cli("run", "--config", str(fresh)), 7)
    assert str(tmpfs / "fresh") in line and "no space left" in line and f"df -h {tmpfs / 'fresh'}" in line
    line = _one_error_line(run_cli("run", "--config", str(used)), 7)
    assert str(earlier) in line and "no space left" in line
    assert str(earlier) in _one_error_line(run_cli("status", "--config", str(used)), 7)


def test_disk_full_while_running_is_logged_and_the_service_goes_on(artefact, tmpfs: Path,
                                                                   tmp_path: Path) -> None:
    """The state's filesystem fills up after start: each failed write is a service_error naming the file
    and the fix; the service keeps running, and records the missed verdicts once there is space again."""
    orbax = artefact("orbax")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copytree(orbax, root / "run-a")
    svc = Service(_config(tmp_path, tmpfs / "state", root))
    try:
        svc.ready()
        filler = _fill(tmpfs)
        shutil.copytree(orbax, root / "run-b")

        def full_errors() -> list[dict]:
            return [e for e in svc.events
                    if e.get("event") == "service_error" and "no space left" in e["error"]]

        (failed, *_) = svc.wait_for(full_errors, "service_error for the full disk", 60.0)
        assert failed["error"].startswith(f"DiskFullError: {tmpfs / 'state' / 'state.sqlite'}: ")
        assert "Free space there" in failed["error"] and failed["run"].startswith(f"{root}{os.sep}run-")
        assert failed["component"] == f"state store in {failed['run']}"
        assert not [e for e in svc.events if e.get("event") == "checkpoint_judged" and "run-b" in e["run"]]
        assert svc.proc.poll() is None

        filler.unlink()
        (root / "run-b" / "after-space-freed.txt").write_text("an event in run-b\n")
        svc.wait_for(lambda: [e for e in svc.events if e.get("event") == "checkpoint_judged"
                              and e["run"] == str(root / "run-b")], "run-b judged once space is back")
    finally:
        assert svc.stop() == 0
