"""Small helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ckptwatch.model import RunReport, Verdict

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ckptwatch ARGS`` as a user would, capturing output."""
    return subprocess.run([sys.executable, "-m", "ckptwatch", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})


def verdicts_by_name(run: RunReport) -> dict[str, Verdict]:
    return {os.path.basename(v.path): v for v in run.checkpoints}


def kinds_of(v: Verdict) -> set[str]:
    return {p.kind for p in v.problems}
