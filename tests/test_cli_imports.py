"""What the quick commands import (issue 13): a launcher runs ``ckptwatch latest RUN`` before every
restart and a cluster runs it on thousands of nodes, so ``latest``, ``verify FILE`` and ``once`` import
only what they use, and building the parser imports no command's implementation.

Each command runs as a user runs it (``python -m ckptwatch``, a fresh interpreter) on a real Trainer run,
with ``-X importtime``: its report names every module the process imported, lazily imported ones
included. The speed itself is measured by ``python -m bench.startup``, not here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO

# Libraries no quick command uses: the service's (watchdog, prometheus_client, structlog), the alerts'
# (apprise), the loss plot's and TensorBoard reader's, the progress bars' (tqdm: --deep and mirror only),
# and the frameworks the structural checks never need (DESIGN.md: no torch for a structural check).
HEAVY = ("torch", "numpy", "apprise", "matplotlib", "tensorboard", "watchdog", "prometheus_client",
         "structlog", "tqdm", "psutil", "s3fs", "fsspec", "boto3", "botocore")
# Our modules that implement commands: the parser must not need them to print --help.
IMPLEMENTATIONS = ("ckptwatch.engine", "ckptwatch.layouts.base", "ckptwatch.formats.", "ckptwatch.model",
                   "ckptwatch.losswatch.watcher", "ckptwatch.losswatch.sources", "ckptwatch.mirror.copy",
                   "ckptwatch.mirror.target", "ckptwatch.retention.execute", "ckptwatch.daemon",
                   "ckptwatch.report", "ckptwatch.verify", "ckptwatch.alerts.sender", "ckptwatch.state")


def imported_by(*args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``python -X importtime -m ckptwatch ARGS``: the process and the modules it imported."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "ckptwatch", *args], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    modules = [line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines()
               if line.startswith("import time:") and not line.rstrip().endswith("imported package")]
    assert "ckptwatch.cli" in modules, r.stderr[-2000:]  # the report was read: the test can see imports
    return r, modules


# ``python -m ckptwatch ARGS``, then the names in sys.modules on stderr's last line: unlike -X importtime,
# this also sees modules imported through importlib (the layouts registry imports each layout so).
_RUN_THEN_LIST = ("import runpy, sys\n"
                  "try:\n    runpy.run_module('ckptwatch', run_name='__main__', alter_sys=True)\n"
                  "finally:\n    sys.stderr.write('\\n' + ' '.join(sorted(sys.modules)) + '\\n')\n")


def loaded_by(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -m ckptwatch ARGS``: the process and every module loaded when it exits."""
    r = subprocess.run([sys.executable, "-c", _RUN_THEN_LIST, *args], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    modules = set(r.stderr.rstrip("\n").rsplit("\n", 1)[-1].split())
    assert "ckptwatch.cli" in modules, r.stderr[-2000:]
    return r, modules


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY]


@pytest.fixture
def trainer_run(artefact) -> Path:
    """A real Trainer run (checkpoint-{2,4,6}, safetensors weights, optimizer.pt, trainer_state.json)."""
    return artefact("hf_full")


@pytest.mark.slow
def test_latest_imports_only_what_it_uses(trainer_run: Path) -> None:
    r, modules = imported_by("latest", "--settle", "0", str(trainer_run))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(str(trainer_run / "checkpoint-"))
    assert heavy(modules) == []
    # neither the loss watch, nor the mirror, retention, service or report code
    others = ("ckptwatch.losswatch", "ckptwatch.mirror", "ckptwatch.retention", "ckptwatch.daemon",
              "ckptwatch.report", "ckptwatch.alerts")
    assert [m for m in modules if m.startswith(others)] == []


def _age(tree: Path, seconds: float) -> None:
    """Every file and directory of ``tree`` last modified ``seconds`` ago (settled for the default rule)."""
    when = time.time() - seconds
    for p in [tree, *tree.rglob("*")]:
        os.utime(p, (when, when), follow_symlinks=False)


@pytest.mark.slow
def test_latest_without_flags_builds_no_config_and_imports_one_layout(trainer_run: Path) -> None:
    """``latest RUN`` as a launcher runs it (no flags, no config file): the ``[service]`` defaults come from
    ``config.defaults``, not from building the section; discovery imports the Trainer layout alone, as it
    claims the run at its root (and no DeepSpeed layout: its checkpoints have no sub-directories); and
    nothing that only other runs or reads need."""
    _age(trainer_run, 3600)
    r, modules = loaded_by("latest", str(trainer_run))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == f"{trainer_run / 'checkpoint-6'}\n"
    assert {"ckptwatch.config.defaults", "ckptwatch.layouts.hf_trainer", "ckptwatch.formats.torchzip",
            "ckptwatch.formats.pickle_stub"} <= modules  # what the check imports on demand is seen
    assert sorted(m for m in modules if m.startswith("ckptwatch.config.")) == ["ckptwatch.config.defaults"]
    assert sorted(m for m in modules if m.startswith("ckptwatch.layouts.")) == [
        "ckptwatch.layouts.base", "ckptwatch.layouts.hf_trainer", "ckptwatch.layouts.registry"]
    # no worker pool, no non-printable path to escape, no streamed read or CRC (mmap buffers, isal's CRC)
    assert modules & {"threading", "unicodedata", "mmap", "isal", "ckptwatch.formats.dcp"} == set()


@pytest.mark.slow
def test_latest_above_the_run_imports_every_layout(trainer_run: Path) -> None:
    """A directory no layout claims (here the run's parent) is asked of every layout, in order: all ten
    are imported, and the run below is still found (the lazy registry loses no layout)."""
    _age(trainer_run, 3600)
    r, modules = loaded_by("latest", str(trainer_run.parent))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == f"{trainer_run / 'checkpoint-6'}\n"
    from ckptwatch.layouts.registry import _HOME

    assert {f"ckptwatch.layouts.{module}" for module, _ in _HOME.values()} <= modules


@pytest.mark.slow
def test_verify_file_imports_only_what_it_uses(trainer_run: Path) -> None:
    newest = max(trainer_run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    weights = newest / "model.safetensors"
    assert weights.is_file()
    r, modules = imported_by("verify", "--settle", "0", str(weights))
    assert r.returncode == 0, r.stderr[-2000:]
    assert heavy(modules) == []
    assert [m for m in modules if m.startswith(("ckptwatch.losswatch", "ckptwatch.retention",
                                                "ckptwatch.daemon", "ckptwatch.alerts",
                                                "ckptwatch.mirror.copy", "ckptwatch.mirror.restore"))] == []
    assert "ckptwatch.mirror.target" not in modules  # asking whether PATH is a URL makes no target


@pytest.mark.slow
def test_once_imports_only_what_it_uses(trainer_run: Path) -> None:
    """``once`` reads the run's loss (trainer_state.json here) but no service, alert or plot library."""
    r, modules = imported_by("once", "--settle", "0", "--json", str(trainer_run))
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"latest_resumable"' in r.stdout
    assert heavy(modules) == []
    assert [m for m in modules if m.startswith(("ckptwatch.daemon", "ckptwatch.mirror.copy",
                                                "ckptwatch.retention.execute", "ckptwatch.alerts.sender",
                                                "ckptwatch.losswatch.plot"))] == []
    assert [m for m in modules if m.startswith(("tomllib", "ckptwatch.config.file"))] == []  # no --config


@pytest.mark.parametrize("args", [["--help"], ["latest", "--help"], ["loss", "--help"], ["mirror", "--help"],
                                  ["prune", "--help"], ["no-such-command"]])
def test_the_parser_imports_no_implementation(args: list[str]) -> None:
    """The whole tree (--help, a mistake) and each command's own parser: help texts and arguments only."""
    r, modules = imported_by(*args)
    assert r.returncode == (0 if "--help" in args else 2), r.stderr[-2000:]
    assert heavy(modules) == []
    assert [m for m in modules if m.startswith(IMPLEMENTATIONS)] == []


@pytest.mark.parametrize("columns", [None, "100", "37", "0", "-4", "wide", ""])
def test_help_width_is_shutils(monkeypatch, columns: str | None) -> None:
    """The parser finds the help width without shutil, and finds the one shutil finds (no terminal here:
    $COLUMNS or 80), so --help wraps as argparse's own formatter wraps it."""
    from ckptwatch.cli import terminal_columns

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert terminal_columns() == shutil.get_terminal_size().columns
