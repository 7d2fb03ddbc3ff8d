"""``config check`` says, per watch with retention, whether this user may delete there (issue 11).

Run as nobody (uid 65534; the tests run as root, whom every mode allows) against real Trainer output: a
root owned by root with mode 0755, a copy owned by nobody, and a sticky root (mode 1777, like /tmp)
whose checkpoints belong to root. Each answer is then held against the kernel: nobody really renames a
checkpoint out of its run (retention's first step) where the check said yes, and is refused where it
said no.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import run_as_nobody

NOBODY = 65534


@pytest.fixture
def base() -> Iterator[Path]:
    """A temp dir nobody can traverse (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ckptwatch-access-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _chown_tree(path: Path, uid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), uid, uid)
    os.lchown(path, uid, uid)


def _config(base: Path, *watches: tuple[Path, bool]) -> Path:
    state = base / "state"
    state.mkdir(mode=0o777)
    os.chmod(state, 0o777)
    text = f'[service]\nstate_dir = "{state}"\n'
    for root, retention in watches:
        text += f'\n[[watch]]\npath = "{root}"\n'
        text += "[watch.retention]\nkeep_last = 1\n" if retention else ""
    path = base / "config.toml"
    path.write_text(text)
    os.chmod(path, 0o644)
    return path


def _config_check(config: str) -> tuple[int, str, str]:
    """``ckptwatch config check FILE`` through ``cli.main``, as ``python -m ckptwatch`` runs it: exit code,
    stdout, stderr."""
    from ckptwatch.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["config", "check", config])
    return code, out.getvalue(), err.getvalue()


def _check_as_nobody(config: Path) -> tuple[int, str, str]:
    """The check as uid/gid nobody, in a forked child of this interpreter: nobody cannot start one of its
    own here (the venv's python lives under /root, mode 0700). The same check as root first imports
    everything the child needs (it could not read the standard library either)."""
    code, out, _ = _config_check(str(config))
    assert code == 0 and "this user (uid 0) can delete checkpoints here (checked as root" in out, out
    return run_as_nobody(_config_check, str(config))


def _rename_out(checkpoint: str) -> str:
    """What retention does first: move the checkpoint away under a new name (here: in its run)."""
    try:
        os.rename(checkpoint, checkpoint + ".trash")
    except PermissionError as exc:
        return f"refused: {exc.strerror}"
    return "renamed"


def _unlink(path: str) -> str:
    try:
        os.unlink(path)
    except PermissionError:
        return "refused"
    return "unlinked"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as nobody and to chown")
def test_config_check_says_where_nobody_can_and_cannot_delete(artefact, base: Path) -> None:
    built = artefact("hf_full")  # a real Trainer run: checkpoint-{2,4,6}/
    locked = base / "locked"  # root's, 0755: nobody may read but not delete
    shutil.copytree(built, locked, symlinks=True)
    _chown_tree(locked, 0)
    os.chmod(locked, 0o755)
    mine = base / "mine"  # nobody's own copy
    shutil.copytree(built, mine, symlinks=True)
    _chown_tree(mine, NOBODY)
    shared = base / "shared"  # sticky and world-writable, like /tmp; the checkpoints are root's
    shutil.copytree(built, shared, symlinks=True)
    _chown_tree(shared, 0)
    os.chmod(shared, 0o1777)
    plain = base / "plain"  # no retention: no line
    shutil.copytree(built, plain, symlinks=True)
    config = _config(base, (locked, True), (mine, True), (shared, True), (plain, False))

    code, stdout, stderr = _check_as_nobody(config)

    assert code == 0, stdout + stderr  # warnings, not errors
    assert f"  retention on {mine}: this user (uid {NOBODY}) can delete checkpoints here\n" in stdout
    assert f"retention on {mine}" not in stderr
    assert (f"ckptwatch: warning: retention on {locked}: this user (uid {NOBODY}) cannot delete in {locked} "
            "(owner uid 0, mode 0755): it belongs to root, and the service must not run as root: give it "
            "to the user that trains (chown) and run the service as that user (see "
            "systemd/retention.conf.example)\n") in stderr, stderr
    assert (f"ckptwatch: warning: retention on {shared}: this user (uid {NOBODY}) cannot delete in {shared} "
            "(owner uid 0, mode 1777): in a sticky directory only an entry's owner may delete it, and "
            f"{shared}/checkpoint-2 belongs to uid 0: run the service as that user (see "
            "systemd/retention.conf.example)\n") in stderr, stderr
    assert f"retention on {plain}" not in stdout + stderr
    assert stderr.count("ckptwatch: warning:") == 2, stderr  # one line per watch, nothing else

    # The kernel agrees with each answer.
    assert run_as_nobody(_rename_out, str(mine / "checkpoint-2")) == "renamed"
    assert run_as_nobody(_rename_out, str(locked / "checkpoint-2")).startswith("refused")
    assert run_as_nobody(_rename_out, str(shared / "checkpoint-2")).startswith("refused")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as nobody and to chown")
def test_config_check_finds_the_checkpoint_dir_that_blocks_deletion(artefact, base: Path) -> None:
    """The run dir is nobody's, but one checkpoint dir is root's 0755: its files cannot be removed."""
    root = base / "run"
    shutil.copytree(artefact("hf_full"), root, symlinks=True)
    _chown_tree(root, NOBODY)
    os.lchown(root / "checkpoint-4", 0, 0)
    os.chmod(root / "checkpoint-4", 0o755)
    config = _config(base, (root, True))

    code, stdout, stderr = _check_as_nobody(config)

    assert code == 0, stdout + stderr
    assert (f"ckptwatch: warning: retention on {root}: this user (uid {NOBODY}) cannot delete in "
            f"{root}/checkpoint-4 (owner uid 0, mode 0755): it belongs to root") in stderr, stderr
    assert "can delete" not in stdout
    # The kernel agrees.
    assert run_as_nobody(_unlink, str(root / "checkpoint-4" / "config.json")) == "refused"
    assert run_as_nobody(_unlink, str(root / "checkpoint-2" / "config.json")) == "unlinked"
