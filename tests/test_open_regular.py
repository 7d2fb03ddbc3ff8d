"""``formats._io.open_regular``: the one way a reader opens a file (DESIGN.md invariant 7).

Real files, FIFOs, symlinks and loops made on disk. The fast path (``O_NOFOLLOW`` first) must not change
what is refused, and the fd handed to a reader must block normally (O_NONBLOCK cleared).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from ckptwatch.filecheck import check_file
from ckptwatch.formats._io import NotRegularFile, OutsideRoot, confined_to, open_regular
from ckptwatch.layouts.base import CheckOptions


def _flags(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETFL)


def test_a_regular_file_opens_blocking_and_read_only(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 10)
    with confined_to(str(tmp_path)):
        fd = open_regular(str(f))
    try:
        assert not _flags(fd) & os.O_NONBLOCK
        assert _flags(fd) & os.O_ACCMODE == os.O_RDONLY
        assert os.pread(fd, 20, 0) == b"x" * 10
    finally:
        os.close(fd)


def test_a_link_inside_the_root_is_followed_and_one_outside_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "real.bin").write_bytes(b"in")
    (outside / "secret.bin").write_bytes(b"out")
    (root / "inner").symlink_to(root / "real.bin")
    (root / "escape").symlink_to(outside / "secret.bin")
    with confined_to(str(root)):
        fd = open_regular(str(root / "inner"))
        os.close(fd)
        with pytest.raises(OutsideRoot):
            open_regular(str(root / "escape"))
        with pytest.raises(NotRegularFile, match="a symlink"):
            open_regular(str(root / "inner"), follow=False)
    fd = open_regular(str(root / "escape"))  # no root set: links are followed
    os.close(fd)


def test_a_directory_above_the_file_that_leaves_the_root_is_refused(tmp_path: Path) -> None:
    """The first open does not follow the last component only; a parent link is caught on the open fd."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(b"out")
    (root / "checkpoint-1").symlink_to(outside, target_is_directory=True)
    with confined_to(str(root)), pytest.raises(OutsideRoot):
        open_regular(str(root / "checkpoint-1" / "model.safetensors"))


@pytest.mark.parametrize("shape", ["fifo", "directory", "loop", "link to fifo"])
def test_odd_files_are_refused_without_blocking(tmp_path: Path, shape: str) -> None:
    path = tmp_path / "model.safetensors"
    if shape == "fifo":
        os.mkfifo(path)
    elif shape == "directory":
        path.mkdir()
    elif shape == "loop":
        path.symlink_to(tmp_path / "other")
        (tmp_path / "other").symlink_to(path)
    else:
        os.mkfifo(tmp_path / "pipe")
        path.symlink_to(tmp_path / "pipe")
    with confined_to(str(tmp_path)), pytest.raises(NotRegularFile):
        open_regular(str(path))
    with confined_to(str(tmp_path)):
        kinds = {p.kind for p in check_file(str(path), CheckOptions()).problems}
    assert kinds == {"not_regular_file"}
