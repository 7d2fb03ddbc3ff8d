"""Copies are named by the run's path below the watched root (or below ``ckptwatch mirror``'s PATH), not
by the run dir's name alone: two Lightning runs both write ``.../checkpoints/``, and with the bare name
their copies would share ``<to>/checkpoints/`` (a conflict for one of them, or worse, the other run's
identical file taken for its backup)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ckptwatch.mirror.copy import copy_name, run_name
from tests.helpers import run_cli

pytestmark = pytest.mark.slow  # real Lightning runs are built


def test_run_name_is_the_path_below_the_root():
    assert run_name("/data/runs/team-a/exp1", "/data/runs") == "team-a/exp1"
    assert run_name("/data/runs/exp1", "/data/runs/exp1") == "exp1"  # the root is the run
    assert run_name("/data/runs/exp1", "") == "exp1"
    assert run_name("/data/runs-old/exp1", "/data/runs") == "exp1"  # a prefix is not a parent
    assert copy_name("/r/a/version_0/checkpoints", "/r/a/version_0/checkpoints/epoch=0-step=4.ckpt",
                     "/r") == "a/version_0/checkpoints/epoch=0-step=4.ckpt"


def test_two_lightning_runs_under_one_root_get_their_own_copies(artefact, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copytree(artefact("lightning"), root / "exp-a", symlinks=True)
    shutil.copytree(artefact("lightning_top_k"), root / "exp-b", symlinks=True)
    to = tmp_path / "backup"
    r = run_cli("mirror", str(root), "--to", str(to), "--settle", "0", "--json", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    copies = {c["copy"]: c["result"] for run in json.loads(r.stdout)["runs"]
              for c in run["mirror"]["checkpoints"]}
    assert copies and set(copies.values()) == {"committed"}, copies
    assert {Path(c).relative_to(to).parts[0] for c in copies} == {"exp-a", "exp-b"}, sorted(copies)
    again = run_cli("mirror", str(root / "exp-a"), "--to", str(to / "one"), "--settle", "0", "--json")
    [run] = json.loads(again.stdout)["runs"]  # PATH is exp-a: its run is named below it
    assert all(Path(c["copy"]).relative_to(to / "one").parts[0] == "checkpoints"
               for c in run["mirror"]["checkpoints"]), run
