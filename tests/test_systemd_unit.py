"""The shipped systemd unit passes systemd's own checks (where systemd-analyze exists)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "ckptwatch.service"
DROP_IN = UNIT.parent / "retention.conf.example"  # retention: the training user, the watched roots writable
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


def _security(unit: Path) -> tuple[float, str]:
    """systemd-analyze security --offline=true on a unit file: the overall exposure and the table."""
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                         text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout + out.stderr)
    assert m, out.stdout[-2000:] + out.stderr
    return float(m.group(1)), out.stdout


def _installed(tmp_path: Path, *, drop_in: bool) -> Path:
    """The unit as installed: ``ckptwatch.service`` (ExecStart pointed at this venv's ckptwatch) and,
    with ``drop_in``, ``ckptwatch.service.d/retention.conf`` beside it, where systemd-analyze reads
    drop-ins of a unit file given by path (test_drop_in_is_read_with_the_unit pins that)."""
    exe = Path(sys.executable).parent / "ckptwatch"
    unit = tmp_path / "ckptwatch.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/ckptwatch", str(exe)))
    if drop_in:
        (tmp_path / "ckptwatch.service.d").mkdir()
        shutil.copy(DROP_IN, tmp_path / "ckptwatch.service.d" / "retention.conf")
    return unit


@needs_analyze
def test_unit_exposure_at_most_2_5() -> None:
    """systemd-analyze security --offline=true rates the unit's exposure 2.5 or lower."""
    assert _security(UNIT)[0] <= 2.5


@needs_analyze
def test_unit_with_retention_drop_in_verifies(tmp_path: Path) -> None:
    """The unit plus systemd/retention.conf.example passes systemd-analyze verify."""
    unit = _installed(tmp_path, drop_in=True)
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_analyze
def test_drop_in_is_read_with_the_unit(tmp_path: Path) -> None:
    """Offline, systemd-analyze applies ``NAME.service.d/*.conf`` beside the unit: the drop-in's static
    user and RemoveIPC=no show in the table (without it: the dynamic user, RemoveIPC=yes)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, alone = _security(_installed(tmp_path / "a", drop_in=False))
    _, combined = _security(_installed(tmp_path / "b", drop_in=True))
    assert "transient non-root user identity" in alone and "static non-root user identity" not in alone
    assert "static non-root user identity" in combined, combined
    assert re.search(r"✗ RemoveIPC=", combined) and not re.search(r"✗ RemoveIPC=", alone)


@needs_analyze
def test_retention_drop_in_keeps_the_units_exposure(tmp_path: Path) -> None:
    """Granting the watched roots costs no exposure: the unit with the drop-in rates no worse than alone
    (1.2 against 1.3 with systemd 252: RemoveIPC=no costs weight 100, PrivateMounts=yes gives back 1000)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    alone, _ = _security(_installed(tmp_path / "a", drop_in=False))
    combined, _ = _security(_installed(tmp_path / "b", drop_in=True))
    assert combined <= alone <= 2.5, (combined, alone)


def _settings(text: str) -> list[tuple[str, str, str]]:
    """(key, value, the comment lines just above it) for each setting of a unit file."""
    out, comments = [], []
    for line in text.splitlines():
        if line.startswith("#"):
            comments.append(line)
        elif "=" in line:
            key, value = line.split("=", 1)
            out.append((key, value, "\n".join(comments)))
            comments = []
        else:
            comments = []
    return out


def test_retention_drop_in_grants_the_watched_roots_and_nothing_else() -> None:
    """A fixed non-root user, write access by ReadWritePaths= only, and a comment over every setting."""
    settings = _settings(DROP_IN.read_text())
    keys = {k for k, _, _ in settings}
    assert {"DynamicUser", "User", "Group", "ReadWritePaths"} <= keys
    assert all(comment for _, _, comment in settings), [k for k, _, c in settings if not c]
    values = {k: v for k, v, _ in settings}
    assert values["DynamicUser"] == "no"
    assert values["User"] not in ("", "0", "root") and values["Group"] not in ("", "0", "root")
    # Nothing the unit locks down is reopened; the only new write access is ReadWritePaths=.
    reopening = {"ProtectSystem", "ProtectHome", "PrivateDevices", "PrivateUsers", "NoNewPrivileges",
                 "CapabilityBoundingSet", "AmbientCapabilities", "BindPaths", "SupplementaryGroups",
                 "StateDirectory", "RuntimeDirectory", "CacheDirectory", "LogsDirectory"}
    assert not keys & reopening, keys & reopening
    roots = [p for k, v, _ in settings if k == "ReadWritePaths" for p in v.split()]
    assert roots == ["/data/runs"], roots  # the example's one watched root (config.example.toml's)


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
