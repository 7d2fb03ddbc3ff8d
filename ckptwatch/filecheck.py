"""Pick the format reader for one file, by magic bytes first and name second.

Layouts know which files a checkpoint needs; this module knows how to judge any one of them. Magic
bytes win over names because frameworks reuse extensions freely (``.ckpt`` is a torch zip for
Lightning and a protobuf stream for MindSpore; ``.bin`` may be a zip or a legacy torch file).
"""

from __future__ import annotations

import os

from ckptwatch.formats._io import open_regular, problem_from_oserror
from ckptwatch.formats.jsonfile import read_json
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.model import FileCheck, Problem
from ckptwatch.scan import display

ZIP_MAGIC = b"PK\x03\x04"
LEGACY_TORCH_MAGIC = bytes.fromhex("80028a0a6cfc9c46f9206aa85019")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


def sniff(path: str) -> tuple[str, Problem | None]:
    """The format of ``path``: safetensors | torch | mindspore | json | empty | unknown."""
    try:
        fd = open_regular(path)
        try:
            head = os.pread(fd, 16, 0)
        finally:
            os.close(fd)
    except OSError as exc:
        return "unknown", problem_from_oserror(display(path), exc)
    return format_of(path, head), None


def format_of(path: str, head: bytes) -> str:
    """The format the first 16 bytes ``head`` of ``path`` (and its name) call for; see ``sniff``."""
    if not head:
        return "empty"
    if head.startswith(ZIP_MAGIC) or head.startswith(LEGACY_TORCH_MAGIC):
        return "torch"
    if path.endswith(".json"):
        return "json"
    if path.endswith(".safetensors"):
        return "safetensors"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    if path.endswith(".ckpt") and head[:1] == b"\x0a":
        return "mindspore"
    if path.endswith(TORCH_SUFFIXES):
        return "torch"  # the torch reader says precisely why it is not a valid torch file
    return "unknown"


def check_file(path: str, opts: CheckOptions, *, need_object: bool = False) -> FileCheck:
    """Judge one file with the reader its content calls for.

    The file is opened once (``open_regular``): its first bytes pick the reader, which judges the same
    fd, so a file swapped between the two is never judged under the other's format. ``need_object``: the
    caller reads metadata from a torch file's pickle (``facts["object"]``); other torch zips get the
    structural check only (see ``check_torch_file``), unless ``--deep``.
    """
    shown = display(path)
    try:
        fd = open_regular(path)
    except OSError as exc:
        return FileCheck(shown, (problem_from_oserror(shown, exc),))
    try:
        try:
            head = os.pread(fd, 16, 0)
        except OSError as exc:
            return FileCheck(shown, (problem_from_oserror(shown, exc),))
        return _judge_open(path, fd, format_of(path, head), opts, need_object)
    finally:
        os.close(fd)


def _judge_open(path: str, fd: int, kind: str, opts: CheckOptions, need_object: bool) -> FileCheck:
    shown = display(path)
    if kind == "empty":
        return FileCheck(shown, (Problem("empty_file", shown, f"{shown} is empty (0 bytes)"),))
    if kind == "safetensors":
        from ckptwatch.formats.safetensors import check_safetensors

        return check_safetensors(path, deep=opts.deep, scan_values=opts.scan_values, opened=fd)
    if kind == "torch":
        from ckptwatch.formats.torchzip import check_torch_file

        return check_torch_file(path, deep=opts.deep, read_pickle=need_object, opened=fd)
    if kind == "mindspore":
        from ckptwatch.formats.mindspore import check_ms_ckpt

        return check_ms_ckpt(path, deep=opts.deep, opened=fd)
    if kind == "json":
        value, problem = read_json(path, opened=fd)
        return FileCheck(shown, (problem,) if problem else (), {"json": value})
    return FileCheck(shown, (), {"format": "unknown"})


def file_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None
