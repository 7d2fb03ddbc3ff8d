"""Manifest version 2 (single files and per-rank sets) beside version 1 (checkpoint directories).

A directory's manifest is still written as version 1, byte for byte the old format (no ``kind``), so
copies made before keep their markers and verify, and older ckptwatch still reads new directory copies;
a file or per-rank set's manifest is version 2 with ``kind`` and ``run_path``, checked like file paths.
"""

from __future__ import annotations

import json

import pytest

from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror.hashing import ALGORITHM, digest_of
from ckptwatch.mirror.restore import RestoreRefused, restore
from ckptwatch.mirror.target import LocalTarget


def _manifest(*paths: str, **kind: str) -> mf.Manifest:
    files = tuple(mf.FileEntry(p, 3, digest_of(b"abc"), 1, 2, 3) for p in paths)
    version = mf.KINDS[kind.get("kind", "dir")]
    return mf.Manifest(algorithm=ALGORITHM, files=files, verdict="complete", layout="mindspore", step=5,
                       run="checkpoint", checkpoint="net_rank_all-1_5.ckpt", source_host="h",
                       source_path="/src/checkpoint/rank_*/net_rank_*-1_5.ckpt", created=1.5, version=version,
                       **kind)


def test_directory_manifests_stay_version_1_without_kind():
    doc = json.loads(_manifest("a.bin").to_bytes())
    assert doc["version"] == 1 and "kind" not in doc and "run_path" not in doc
    m = mf.parse(_manifest("a.bin").to_bytes(), "x")
    assert (m.kind, m.where_in_run) == ("dir", "net_rank_all-1_5.ckpt")


def test_version_2_round_trips_and_is_committed_like_version_1():
    m = _manifest("rank_0/net_rank_0-1_5.ckpt", "rank_1/net_rank_1-1_5.ckpt", kind="files",
                  run_path="rank_*/net_rank_*-1_5.ckpt")
    data = m.to_bytes()
    assert json.loads(data)["version"] == 2
    assert mf.parse(data, "x") == m
    assert mf.marker_matches(mf.marker_bytes(data), data)


@pytest.mark.parametrize(("change", "message"), [
    ({"kind": "dir"}, "kind 'dir'"), ({"kind": "tarball"}, "kind 'tarball'"),
    ({"run_path": "../x"}, "not a relative path"), ({"version": 3}, "version 3"),
])
def test_bad_version_2_manifests_are_refused(change, message):
    doc = json.loads(_manifest("a.ckpt", kind="file", run_path="a.ckpt").to_bytes())
    doc.update(change)
    with pytest.raises(mf.ManifestError, match=message):
        mf.parse(json.dumps(doc).encode(), "copy")


def test_a_single_file_copy_listing_two_files_is_refused(tmp_path):
    """restore of a ``file`` copy gives back one file: a manifest listing two is no copy of ours."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("a.ckpt", "b.ckpt"):
        (copy / name).write_bytes(b"abc")
    data = _manifest("a.ckpt", "b.ckpt", kind="file", run_path="a.ckpt").to_bytes()
    (copy / mf.MANIFEST_NAME).write_bytes(data)
    (copy / mf.MARKER_NAME).write_bytes(mf.marker_bytes(data))
    with pytest.raises(RestoreRefused, match="lists 2 files"):
        restore(LocalTarget(str(copy)), "", str(tmp_path / "out.ckpt"))
    assert not (tmp_path / "out.ckpt").exists()
