"""Small helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ckptwatch.model import RunReport, Verdict

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ckptwatch ARGS`` as a user would, capturing output."""
    return subprocess.run([sys.executable, "-m", "ckptwatch", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})


def verdicts_by_name(run: RunReport) -> dict[str, Verdict]:
    return {os.path.basename(v.path): v for v in run.checkpoints}


def kinds_of(v: Verdict) -> set[str]:
    return {p.kind for p in v.problems}


def run_as_nobody(fn, *args):
    """Run ``fn(*args)`` in a forked child with uid/gid nobody (tests run as root); return its result.

    The format readers' permission handling can only be seen by a process that lacks read access.
    """
    import pickle

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            out = pickle.dumps(("ok", fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent
            out = pickle.dumps(("raised", repr(exc)))
        os.write(w, out)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    status, value = pickle.loads(data)
    assert status == "ok", value
    return value


def make_daemon(state_dir: Path, root: Path, *, observer: str = "auto", alerts: dict | None = None,
                clock=None, engine=None, watch: dict | None = None, **service):
    """An in-process service (no sd_notify, JSON logs, settle 0 unless given) watching ``root``;
    ``watch``: more keys of its ``[[watch]]`` table (``{"retention": {"keep_last": 1}}``)."""
    import time

    from ckptwatch.config import parse_config
    from ckptwatch.daemon import Daemon
    from ckptwatch.notify import Notifier

    raw = {"service": {"state_dir": str(state_dir), "log_format": "json", "settle_seconds": 0, **service},
           "watch": [{"path": str(root), "observer": observer, **(watch or {})}]}
    if alerts is not None:
        raw["alerts"] = alerts
    extra = {"engine": engine} if engine is not None else {}
    return Daemon("test.toml", parse_config(raw, "test.toml"), notifier=Notifier(None),
                  clock=clock or time.time, **extra)


def trainer_runs(artefact, tmp_path: Path, names) -> Path:
    """A watched root (``tmp_path/root``) holding a copy of the real 3-checkpoint Trainer run under each of
    ``names``."""
    import shutil

    root = tmp_path / "root"
    root.mkdir()
    built = artefact("hf_full")
    for name in names:
        shutil.copytree(built, root / name, symlinks=True)
    return root


def two_trainer_runs(artefact, tmp_path: Path) -> Path:
    """A watched root holding two copies (run-a, run-b) of the real 3-checkpoint Trainer run."""
    return trainer_runs(artefact, tmp_path, ("run-a", "run-b"))


def cli_in_process(argv: list[str]) -> tuple[int, str, str]:
    """``ckptwatch ARGV`` through ``cli.main`` in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from ckptwatch.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def cli_as_nobody(argv: list[str]) -> tuple[int, str, str]:
    """``ckptwatch ARGV`` as uid/gid nobody, in a forked child of this interpreter (nobody cannot start
    an interpreter of its own here: the venv's python lives under /root, mode 0700). Whatever the command
    imports lazily must already be imported (run it as root first, e.g. with ``--dry-run``)."""
    return run_as_nobody(cli_in_process, argv)


def nobody_dir(tmp_path: Path):
    """A fresh directory outside pytest's 0700 tmp dirs that nobody can traverse (removed by the caller's
    ``shutil.rmtree``)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="ckptwatch-nobody-"))
    os.chmod(path, 0o755)
    return path
