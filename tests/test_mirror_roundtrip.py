"""Mirror -> restore round trips through the CLI on real checkpoints (a Trainer run and a 4-rank DCP run).

The restored checkpoint must be one its framework's layout judges complete (``ckptwatch once --json``),
byte for byte the source, and a second ``mirror`` must write nothing.
"""

from __future__ import annotations

import filecmp
import json
import os
from pathlib import Path

import pytest

from ckptwatch.mirror.manifest import MANIFEST_NAME, MARKER_NAME, OURS
from tests.helpers import run_cli

pytestmark = pytest.mark.slow  # real Trainer and DCP runs are built


def _files(d: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every file below ``d``."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(d))] = (st.st_size, st.st_mtime_ns)
    return out


def _mirror(run: Path, to: Path, *extra: str) -> dict:
    r = run_cli("mirror", str(run), "--to", str(to), "--settle", "0", "--json", *extra)
    assert r.returncode == 0, r.stderr + r.stdout
    return json.loads(r.stdout)


@pytest.mark.parametrize(("name", "newest", "verify"),
                         [("hf_full", "checkpoint-6", "size"), ("dcp", "step_300", "full")])
def test_mirror_restore_round_trip(artefact, tmp_path, name, newest, verify):
    """Every complete checkpoint is committed under <to>/<run>/<checkpoint>/ in its native layout; the
    restored newest one is identical to the source (bytes and mtimes) and judged complete."""
    run = artefact(name)
    to = tmp_path / "backup"
    doc = _mirror(run, to, "--verify", verify)
    [item] = doc["runs"]
    results = {os.path.basename(c["checkpoint"]): c for c in item["mirror"]["checkpoints"]}
    assert {c["result"] for c in results.values()} == {"committed"}
    assert list(results)[0] == newest  # newest first
    for ckpt in results:
        copy = to / name / ckpt
        assert (copy / MARKER_NAME).is_file() and (copy / MANIFEST_NAME).is_file()
        assert {k: v for k, v in _files(copy).items() if k not in OURS} == _files(run / ckpt)
    dest = tmp_path / "restored" / name / newest  # parents created by restore
    r = run_cli("restore", str(to / name / newest), str(dest))
    assert r.returncode == 0, r.stderr
    assert _files(dest) == _files(run / newest)
    assert not filecmp.dircmp(dest, run / newest).diff_files
    once = run_cli("once", str(dest.parent), "--json", "--settle", "0", "--no-loss")
    [judged] = json.loads(once.stdout)["runs"]
    [verdict] = judged["checkpoints"]
    assert verdict["status"] == "complete", verdict
    assert judged["latest_resumable"] == str(dest)


def test_second_mirror_writes_nothing(artefact, tmp_path):
    """A run mirrored twice: the second pass finds every copy up to date and rewrites no file."""
    run = artefact("hf_full")
    to = tmp_path / "backup"
    _mirror(run, to)
    before = {p: os.stat(to / p).st_ino for p in _files(to)}
    doc = _mirror(run, to)
    assert {c["result"] for c in doc["runs"][0]["mirror"]["checkpoints"]} == {"up_to_date"}
    assert {p: os.stat(to / p).st_ino for p in _files(to)} == before


def test_verify_of_a_copy_and_of_a_checkpoint(artefact, tmp_path):
    """`verify` on a committed copy checks it against its manifest; on a checkpoint it judges it as before."""
    run = artefact("dcp")
    to = tmp_path / "backup"
    _mirror(run, to)
    r = run_cli("verify", str(to / "dcp" / "step_200"), "--json")
    assert r.returncode == 0, r.stdout
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["committed"] and doc["findings"] == []
    r = run_cli("verify", str(run / "step_200"), "--json", "--settle", "0")
    assert r.returncode == 0
    assert json.loads(r.stdout)["checkpoint"]["status"] == "complete"


def test_copies_are_judged_as_their_checkpoints(artefact, tmp_path):
    """The copies keep the native layout: `once` on <to>/<run> judges them complete (our names ignored)."""
    run = artefact("dcp")
    to = tmp_path / "backup"
    _mirror(run, to)
    r = run_cli("once", str(to / "dcp"), "--json", "--settle", "0", "--no-loss")
    [judged] = json.loads(r.stdout)["runs"]
    assert [c["status"] for c in judged["checkpoints"]] == ["complete"] * 3
    assert all(not c["problems"] for c in judged["checkpoints"])


def test_restore_never_overwrites(artefact, tmp_path):
    """restore into an existing DEST (even an empty dir) is refused: restore only makes new directories."""
    run = artefact("dcp")
    to = tmp_path / "backup"
    _mirror(run, to)
    dest = tmp_path / "existing"
    dest.mkdir()
    r = run_cli("restore", str(to / "dcp" / "step_100"), str(dest))
    assert r.returncode == 1 and "already exists" in r.stderr
    assert list(dest.iterdir()) == []


def test_mirror_target_inside_the_run_is_refused(artefact, tmp_path):
    """--to inside PATH would make the copies checkpoints of the run: usage error, nothing written."""
    run = artefact("hf_full")
    r = run_cli("mirror", str(run), "--to", str(run / "backup"), "--settle", "0")
    assert r.returncode == 2
    assert "inside" in r.stderr
    assert not (run / "backup").exists()
