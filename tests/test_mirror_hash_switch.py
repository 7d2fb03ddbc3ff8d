"""The manifest hash moved from SHA-256 to xxh3_128: copies made before keep verifying and restoring.

A copy is made with ``ALGORITHM`` forced back to ``sha256`` (what every copy made before the switch
holds), then the current code must find it up to date (hashing with the manifest's algorithm, not the
new one), verify it in place, restore it, and still refuse it when a byte is flipped.
"""

from __future__ import annotations

import json
import time

import pytest

from ckptwatch.config.mirror import MirrorConfig
from ckptwatch.engine import check_root
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.mirror import copy as mirror_copy
from ckptwatch.mirror.hashing import ALGORITHM, digest_of
from ckptwatch.mirror.manifest import MANIFEST_NAME
from ckptwatch.mirror.target import LocalTarget
from tests.helpers import run_cli

pytestmark = pytest.mark.slow  # a real DCP run is built


def test_new_copies_use_xxh3_128():
    """The measured choice is the default, and its digest is the 128-bit xxh3 (32 hex digits)."""
    assert ALGORITHM == "xxh3_128"
    assert digest_of(b"") == "99aa06d3014798d86001c324468d497f"  # xxh3_128 of no bytes (xxhash's vector)


def test_sha256_copies_still_verify_and_restore(artefact, tmp_path, monkeypatch):
    """A copy committed with sha256 is up to date for the current code, verifies and restores; a flipped
    byte in it is still found with sha256."""
    run = artefact("dcp")
    to = tmp_path / "backup"
    monkeypatch.setattr(mirror_copy, "ALGORITHM", "sha256")
    [r] = check_root(str(run), CheckOptions(settle_seconds=0), time.time()).runs
    outcomes = mirror_copy.mirror_run(r, LocalTarget(str(to)), MirrorConfig(to=str(to)), now=time.time())
    assert {o.result for o in outcomes} == {"committed"}
    monkeypatch.undo()
    newest = run / "step_300"
    copy = to / run.name / newest.name
    assert json.loads((copy / MANIFEST_NAME).read_bytes())["algorithm"] == "sha256"
    again = run_cli("mirror", str(run), "--to", str(to), "--settle", "0", "--json")
    assert again.returncode == 0, again.stderr
    results = {c["result"] for c in json.loads(again.stdout)["runs"][0]["mirror"]["checkpoints"]}
    assert results == {"up_to_date"}
    assert run_cli("verify", str(copy)).returncode == 0
    r2 = run_cli("restore", str(copy), str(tmp_path / "restored"))
    assert r2.returncode == 0, r2.stderr
    assert "sha256 hash verified" in r2.stdout
    victim = next(p for p in sorted(copy.rglob("*")) if p.is_file() and p.stat().st_size > 100
                  and not p.name.startswith(".ckptwatch"))
    data = bytearray(victim.read_bytes())
    data[50] ^= 0xFF
    victim.write_bytes(bytes(data))
    bad = run_cli("verify", str(copy))
    assert bad.returncode == 1 and victim.name in bad.stdout, bad.stdout
