"""The shipped systemd unit passes systemd's own checks (where systemd-analyze exists)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "ckptwatch.service"
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed")


@needs_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit (ExecStart pointed at this venv's real ckptwatch)."""
    exe = Path(sys.executable).parent / "ckptwatch"
    unit = tmp_path / "ckptwatch.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/ckptwatch", str(exe)))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_analyze
def test_unit_exposure_at_most_2_5() -> None:
    """systemd-analyze security --offline=true rates the unit's exposure 2.5 or lower."""
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)], capture_output=True,
                         text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout + out.stderr)
    assert m, out.stdout[-2000:] + out.stderr
    assert float(m.group(1)) <= 2.5


def test_unit_is_type_notify_with_watchdog() -> None:
    """The unit uses the sd_notify protocol the service speaks (READY, WATCHDOG) and restarts on failure."""
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in text


def test_unit_does_not_restart_on_exits_a_restart_cannot_fix() -> None:
    """Config error, a state dir held by another service, a corrupt state file: no restart loop."""
    from ckptwatch.errors import EXIT_STATE_CORRUPT, EXIT_STATE_LOCKED, EXIT_USAGE

    (line,) = [ln for ln in UNIT.read_text().splitlines() if ln.startswith("RestartPreventExitStatus=")]
    codes = {EXIT_USAGE, EXIT_STATE_LOCKED, EXIT_STATE_CORRUPT}
    assert set(line.split("=", 1)[1].split()) == {str(c) for c in codes}
