"""The contract every mirror target keeps (rclone's fstests idea): one suite, run against each backend.

Run against ``LocalTarget`` and against ``FsspecTarget`` on a real S3 endpoint (moto's server mode,
tests/s3server.py); the S3-only cases (multipart uploads, faults) are in tests/test_mirror_s3.py.
"""

from __future__ import annotations

import os

import pytest

from ckptwatch.mirror.target import LocalTarget, Target, TargetPathError, is_temp


@pytest.fixture(params=["local", "s3"])
def target(request, tmp_path) -> Target:
    if request.param == "s3":
        return request.getfixturevalue("s3_target")
    return LocalTarget(str(tmp_path / "target"))


def _put(t: Target, name: str, data: bytes, mtime_ns: int | None = None) -> None:
    up = t.open_write(name)
    up.write(data)
    up.commit(mtime_ns)


def test_a_file_appears_only_when_committed(target):
    """Bytes written are invisible under the final name until commit; then all of them are there."""
    up = target.open_write("run/ckpt/a.bin")
    up.write(b"hello ")
    up.write(memoryview(b"world"))
    assert target.stat("run/ckpt/a.bin") is None
    assert not [n for n in target.list("run") if not is_temp(n)]
    up.commit()
    assert target.stat("run/ckpt/a.bin") == 11
    with target.open_read("run/ckpt/a.bin") as f:
        assert f.read() == b"hello world"
    assert target.list("run") == {"ckpt/a.bin": 11}


def test_abort_leaves_nothing(target):
    """An aborted write leaves neither the final name nor a temp file, and an old file is untouched."""
    _put(target, "c/x", b"old")
    up = target.open_write("c/x")
    up.write(b"new bytes")
    up.abort()
    up.abort()  # twice is harmless
    assert target.list("c") == {"x": 3}
    with target.open_read("c/x") as f:
        assert f.read() == b"old"


def test_commit_replaces_and_keeps_mtime(target):
    """A commit over an existing name replaces it whole; an mtime given at commit is kept where the
    target keeps mtimes (local)."""
    _put(target, "c/x", b"old")
    _put(target, "c/x", b"newer", mtime_ns=1_600_000_000_123_456_789)
    assert target.stat("c/x") == 5
    if isinstance(target, LocalTarget):
        assert os.stat(target.describe("c/x")).st_mtime_ns == 1_600_000_000_123_456_789


def test_list_stat_read_remove_of_absent_names(target):
    """Absent names: list is empty, stat None, read FileNotFoundError, remove a no-op."""
    assert target.list("nothing/here") == {}
    assert target.stat("nothing") is None
    with pytest.raises(FileNotFoundError):
        target.open_read("nothing")
    target.remove("nothing")
    _put(target, "a/b/c", b"1")
    target.remove("a/b/c")
    assert target.stat("a/b/c") is None


@pytest.mark.parametrize("name", ["../x", "/abs", "a/../../x", "a//b", ""])
def test_names_outside_the_root_are_refused(target, name):
    """No operation accepts a name that climbs out of the target's root."""
    with pytest.raises(TargetPathError):
        target.open_write(name)
    with pytest.raises(TargetPathError):
        target.stat(name)


def test_local_target_refuses_a_planted_symlink_dir(tmp_path):
    """A symlink where a directory of the copy belongs is refused, not followed (local only)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    t = LocalTarget(str(tmp_path / "target"))
    os.makedirs(t.root)
    os.symlink(outside, os.path.join(t.root, "run"))
    with pytest.raises(NotADirectoryError):
        t.open_write("run/ckpt/a.bin")
    assert list(outside.iterdir()) == []
