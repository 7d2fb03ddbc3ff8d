"""What the quick commands import (issue 13): a launcher runs ``ckptwatch latest RUN`` before every
restart and a cluster runs it on thousands of nodes, so ``latest``, ``verify FILE`` and ``once`` import
only what they use, and building the parser imports no command's implementation.

Each command runs as a user runs it (``python -m ckptwatch``, a fresh interpreter) on a real Trainer run,
with ``-X importtime``: its report names every module the process imported, lazily imported ones
included. The speed itself is measured by ``python -m bench.startup``, not here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
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
