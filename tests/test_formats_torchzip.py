"""torch.save files (zip and legacy) judged without torch: real files from torch.save, then damaged."""

from __future__ import annotations

import collections
import errno
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptwatch.formats.pickle_stub import StorageRef, get
from ckptwatch.formats.torchzip import check_torch_file, check_torch_window
from ckptwatch.vocabulary import file_ok
from tests.helpers import run_as_nobody

torch = pytest.importorskip("torch")


def kinds(fc) -> list[str]:
    return sorted(p.kind for p in fc.problems)


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, Path]:
    """Real files written by torch.save: zip (named and BytesIO-style), legacy, and a plain pickle."""
    d = tmp_path_factory.mktemp("torchzip")
    sd = collections.OrderedDict(
        w=torch.randn(64, 32),
        b=torch.zeros(8, dtype=torch.bfloat16),
        i=torch.arange(5),
        f8=torch.zeros(4, dtype=torch.float8_e5m2),
    )
    obj = {"model": sd, "step": 12, "view": sd["w"][3:5], "lr": 0.5}
    paths = {
        "zip": d / "optimizer.pt",
        "legacy": d / "legacy.bin",
        "archive": d / "archive.ckpt",
        "pickle": d / "random_states_0.pkl",
    }
    torch.save(obj, paths["zip"])
    torch.save(obj, paths["legacy"], _use_new_zipfile_serialization=False)
    buf = io.BytesIO()
    torch.save(obj, buf)
    paths["archive"].write_bytes(buf.getvalue())
    with open(paths["pickle"], "wb") as f:
        pickle.dump({"python": [1, 2, 3], "seed": 7}, f)
    return paths


def copy(src: Path, tmp_path: Path, name: str | None = None) -> Path:
    dst = tmp_path / (name or src.name)
    shutil.copyfile(src, dst)
    return dst


# --------------------------------------------------------------------------------------------------
# Healthy files


def test_zip_facts(real):
    """A torch.save zip passes, with its prefix (the file's stem), storage table, object and globals."""
    fc = check_torch_file(str(real["zip"]), deep=True)
    assert fc.problems == ()
    assert fc.facts["format"] == "zip" and fc.facts["prefix"] == "optimizer"
    assert set(fc.facts["storages"]) == {"0", "1", "2", "3"}
    assert fc.facts["storages"]["0"] == StorageRef("0", "FloatStorage", 4, "cpu", 64 * 32)
    assert get(fc.facts["object"], "step") == 12
    assert get(fc.facts["object"], "view", "offset") == 96
    assert "torch._utils._rebuild_tensor_v2" in fc.facts["globals"]


def test_bytesio_zip_uses_archive_prefix(real):
    """torch.save to a file object names the top-level folder archive/ (Lightning, DCP)."""
    fc = check_torch_file(str(real["archive"]))
    assert fc.problems == () and fc.facts["prefix"] == "archive"


def test_legacy_facts(real):
    """A legacy (pre-1.6) file passes; its size formula is exact and its storages are listed."""
    fc = check_torch_file(str(real["legacy"]), deep=True)
    assert fc.problems == ()
    assert fc.facts["format"] == "legacy" and fc.facts["prefix"] == ""
    assert len(fc.facts["storages"]) == 4
    assert get(fc.facts["object"], "model", "w", "size") == (64, 32)


def test_plain_pickle(real, tmp_path):
    """A plain pickle (not torch's magic number first) is walked whole; bytes after it are trailing_data."""
    fc = check_torch_file(str(real["pickle"]))
    assert fc.problems == () and fc.facts["format"] == "pickle"
    assert get(fc.facts["object"], "seed") == 7
    p = copy(real["pickle"], tmp_path)
    with open(p, "ab") as f:
        f.write(b"\0")
    assert kinds(check_torch_file(str(p))) == ["trailing_data"]


# --------------------------------------------------------------------------------------------------
# Cut, empty, garbage


@pytest.mark.parametrize("cut", [1, 3, 4, 21, 100, "half", -22, -1])
def test_truncated_zip(real, tmp_path, cut):
    """A zip cut anywhere (even by its last byte) is truncated: its end-of-central-directory is gone."""
    data = real["zip"].read_bytes()
    n = len(data) // 2 if cut == "half" else (cut if cut > 0 else len(data) + cut)
    p = tmp_path / "cut.pt"
    p.write_bytes(data[:n])
    fc = check_torch_file(str(p))
    assert kinds(fc) == ["truncated"], fc.problems


@pytest.mark.parametrize("cut", [1, 14, 16, 30, 200, "half", -1])
def test_truncated_legacy(real, tmp_path, cut):
    """A legacy file cut inside its pickles or its storages is truncated, with the byte it ends at."""
    data = real["legacy"].read_bytes()
    n = len(data) // 2 if cut == "half" else (cut if cut > 0 else len(data) + cut)
    p = tmp_path / "cut.bin"
    p.write_bytes(data[:n])
    fc = check_torch_file(str(p))
    assert kinds(fc) == ["truncated"], fc.problems
    assert str(n) in fc.problems[0].message


def test_legacy_trailing_byte(real, tmp_path):
    """One byte more than the legacy size formula allows is trailing_data."""
    p = copy(real["legacy"], tmp_path)
    with open(p, "ab") as f:
        f.write(b"x")
    fc = check_torch_file(str(p))
    assert kinds(fc) == ["trailing_data"] and "1 extra bytes" in fc.problems[0].message


def test_zip_trailing_bytes(real, tmp_path):
    """Bytes after the zip's end record are trailing_data (torch.load ignores them; the file was changed)."""
    p = copy(real["zip"], tmp_path)
    with open(p, "ab") as f:
        f.write(b"junk")
    assert kinds(check_torch_file(str(p))) == ["trailing_data"]


def test_empty_and_garbage(tmp_path):
    """A 0-byte file is empty_file; bytes that are neither zip nor pickle are bad_header."""
    (tmp_path / "e.pt").write_bytes(b"")
    (tmp_path / "g.pt").write_bytes(b"hello world, not a checkpoint")
    assert kinds(check_torch_file(str(tmp_path / "e.pt"))) == ["empty_file"]
    fc = check_torch_file(str(tmp_path / "g.pt"))
    assert kinds(fc) == ["bad_header"] and "b'hell'" in fc.problems[0].message


def test_directory_is_not_a_file(tmp_path):
    """A directory where a file is expected is reported, not raised."""
    assert kinds(check_torch_file(str(tmp_path))) == ["not_regular_file"]


# --------------------------------------------------------------------------------------------------
# Damaged zips (rebuilt record by record)


def rezip(src: Path, dst: Path, edit) -> None:
    """Copy the zip ``src`` to ``dst`` with ``edit(name, data) -> (name, data) | None`` applied per record."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            out = edit(info.filename, zin.read(info))
            if out is not None:
                zout.writestr(out[0], out[1])


def test_missing_record(real, tmp_path):
    """A storage the pickle references but the zip lacks is missing_record, named."""
    p = tmp_path / "m.pt"
    rezip(real["zip"], p, lambda n, d: None if n == "optimizer/data/2" else (n, d))
    fc = check_torch_file(str(p))
    assert kinds(fc) == ["missing_record"] and "optimizer/data/2" in fc.problems[0].message


def test_short_record(real, tmp_path):
    """A data record shorter than numel x element size is size_mismatch with both numbers."""
    p = tmp_path / "s.pt"
    rezip(real["zip"], p, lambda n, d: (n, d[:100]) if n == "optimizer/data/0" else (n, d))
    fc = check_torch_file(str(p))
    assert kinds(fc) == ["size_mismatch"] and "holds 100 bytes" in fc.problems[0].message
    assert "needs 8192" in fc.problems[0].message


def test_bad_byteorder_and_foreign_prefix(real, tmp_path):
    """byteorder must be little/big; every record must share the first record's top-level folder."""
    p = tmp_path / "b.pt"
    rezip(real["zip"], p, lambda n, d: (n, b"middle") if n.endswith("/byteorder") else (n, d))
    assert kinds(check_torch_file(str(p))) == ["bad_zip"]
    q = tmp_path / "f.pt"
    rezip(real["zip"], q, lambda n, d: ("other/version", d) if n.endswith("/version") else (n, d))
    fc = check_torch_file(str(q))
    assert kinds(fc) == ["bad_zip"] and "outside the top-level folder optimizer/" in fc.problems[0].message


def test_no_data_pkl(real, tmp_path):
    """A zip without P/data.pkl is bad_zip."""
    p = tmp_path / "n.pt"
    rezip(real["zip"], p, lambda n, d: None if n.endswith("data.pkl") else (n, d))
    assert kinds(check_torch_file(str(p))) == ["bad_zip"]


def test_corrupt_end_record_cannot_make_us_read_the_file(tmp_path):
    """An end record claiming a 1 GiB central directory is bad_zip, without reading 1 GiB into memory."""
    import resource
    import struct

    p = tmp_path / "cd.pt"
    with open(p, "wb") as f:
        f.write(b"PK\x03\x04" + b"\0" * 26)
        f.truncate(1 << 30)
        f.seek(0, 2)
        f.write(b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, 1 << 30, 0, 0))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fc = check_torch_file(str(p))
    assert kinds(fc) == ["bad_zip"] and "no directory record starts there" in fc.problems[0].message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 << 10  # KiB


def test_tensor_view_past_its_storage(tmp_path):
    """A tensor whose offset/size/stride reach past its storage is size_mismatch (torch.load would refuse)."""

    class Fake:
        pass

    storage, tensor = Fake(), Fake()

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", 4) if obj is storage else None

        def reducer_override(self, obj):
            if obj is tensor:
                return (
                    torch._utils._rebuild_tensor_v2,
                    (storage, 2, (10,), (1,), False, collections.OrderedDict()),
                )
            return NotImplemented

    buf = io.BytesIO()
    P(buf, protocol=2).dump({"t": tensor})
    p = tmp_path / "v.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("v/data.pkl", buf.getvalue())
        z.writestr("v/data/0", b"\0" * 16)
    fc = check_torch_file(str(p))
    assert (
        kinds(fc) == ["size_mismatch"]
        and "needs 12 elements of storage 0, which holds 4" in fc.problems[0].message
    )


def record_data_offset(path: Path, name: str) -> int:
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        hdr = f.read(30)
    return (
        info.header_offset + 30 + int.from_bytes(hdr[26:28], "little") + int.from_bytes(hdr[28:30], "little")
    )


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


def test_bit_flip_in_tensor_data_needs_deep(real, tmp_path):
    """A flipped bit in tensor bytes passes the cheap check (as torch.load does) and fails --deep's CRC."""
    p = copy(real["zip"], tmp_path)
    flip(p, record_data_offset(p, "optimizer/data/0") + 1000)
    assert check_torch_file(str(p)).problems == ()
    fc = check_torch_file(str(p), deep=True)
    assert kinds(fc) == ["crc_mismatch"] and "optimizer/data/0" in fc.problems[0].message


def test_bit_flip_in_data_pkl_is_caught_cheaply(real, tmp_path):
    """data.pkl is read whole on the cheap path, so its CRC-32 is checked there too."""
    p = copy(real["zip"], tmp_path)
    flip(p, record_data_offset(p, "optimizer/data.pkl") + 20)
    assert "crc_mismatch" in kinds(check_torch_file(str(p)))


# --------------------------------------------------------------------------------------------------
# Byte windows (DCP items)


def test_windows_of_a_concatenation(real, tmp_path):
    """check_torch_window judges a torch zip embedded at an offset; a misaligned window is bad_zip."""
    a, b = real["archive"].read_bytes(), real["zip"].read_bytes()
    p = tmp_path / "__0_0.distcp"
    p.write_bytes(a + b)
    assert check_torch_window(str(p), 0, len(a), deep=True).problems == ()
    fc = check_torch_window(str(p), len(a), len(b), deep=True)
    assert fc.problems == () and fc.facts["prefix"] == "optimizer"
    bad = check_torch_window(str(p), 7, len(a))
    assert kinds(bad) == ["bad_zip"] and bad.problems[0].file == str(p)


# --------------------------------------------------------------------------------------------------
# OS trouble: unreadable, vanished, I/O errors, odd names


@pytest.fixture
def open_dir():
    """A world-searchable temp dir, so only the file's own mode decides readability."""
    d = tempfile.mkdtemp(prefix="ckptwatch-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges to nobody")
def test_unreadable_file(real, open_dir):
    """A mode-000 file read by another user is unreadable (with its mode), not corrupt."""
    p = copy(real["zip"], open_dir)
    os.chmod(p, 0)
    fc = run_as_nobody(check_torch_file, str(p))
    assert kinds(fc) == ["unreadable"] and "mode 0000" in fc.problems[0].message


def test_vanished_before_open(tmp_path):
    """A file rotated away before it is opened is 'deleted' (transient), not corrupt."""
    assert kinds(check_torch_file(str(tmp_path / "gone.pt"))) == ["deleted"]


def test_vanished_mid_read(real, tmp_path, monkeypatch):
    """A file that disappears while being read (ENOENT/ESTALE from a read) is 'deleted'."""
    p = copy(real["zip"], tmp_path)
    real_pread = os.pread
    calls = {"n": 0}

    def pread(fd, n, off):
        calls["n"] += 1
        if calls["n"] == 2:
            os.unlink(p)
            raise OSError(errno.ESTALE, "Stale file handle")
        return real_pread(fd, n, off)

    monkeypatch.setattr(os, "pread", pread)
    fc = check_torch_file(str(p))
    assert kinds(fc) == ["deleted"] and not p.exists()


class _FailingOs:
    """Stands in for ``os`` inside one module: preadv fails with EIO, everything else is the real os."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def preadv(fd, bufs, off):
        raise OSError(errno.EIO, "Input/output error")


def test_io_error_during_deep_read(real, tmp_path, monkeypatch):
    """EIO while streaming records for --deep is read_error (the cheap check read fine)."""
    from ckptwatch.formats import _stream

    p = copy(real["zip"], tmp_path)
    monkeypatch.setattr(_stream, "os", _FailingOs())
    assert check_torch_file(str(p)).problems == ()
    fc = check_torch_file(str(p), deep=True)
    assert kinds(fc) == ["read_error"] and "Input/output error" in fc.problems[0].message
    assert "while reading bytes " in fc.problems[0].message


def test_io_error_inside_zipfile_is_not_bad_zip(real, tmp_path, monkeypatch):
    """EIO while zipfile reads the central directory stays read_error (zipfile would say BadZipFile)."""
    from ckptwatch.formats import torchzip

    p = copy(real["zip"], tmp_path)
    monkeypatch.setattr(torchzip, "os", _FailingOs())
    # --deep: the default pass reads a stored zip with pread, not through zipfile
    assert kinds(check_torch_file(str(p), deep=True)) == ["read_error"]


def test_non_utf8_name(real, tmp_path):
    """A file whose name is not UTF-8 is judged normally; its problems print safely."""
    p = os.path.join(os.fsencode(tmp_path), b"opt\xff.pt")
    shutil.copyfile(real["zip"], p)
    with open(p, "ab") as f:
        f.write(b"x")
    fc = check_torch_file(os.fsdecode(p))
    assert kinds(fc) == ["trailing_data"]
    fc.problems[0].message.encode("utf-8")
    json.dumps([fc.path, fc.problems[0].file, fc.problems[0].message], ensure_ascii=False).encode("utf-8")
    assert "\\xff" in fc.problems[0].file


# --------------------------------------------------------------------------------------------------
# Robustness and lightness


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_damaged_files_never_raise(real, tmp_path, data):
    """Random byte edits and cuts of zip and legacy files always give a FileCheck, never an exception."""
    src = real[data.draw(st.sampled_from(["zip", "legacy"]))].read_bytes()
    b = bytearray(src[: data.draw(st.integers(0, len(src)))])
    for _ in range(data.draw(st.integers(0, 6))):
        if b:
            b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
    p = tmp_path / "fuzz.pt"
    p.write_bytes(bytes(b))
    fc = check_torch_file(str(p), deep=data.draw(st.booleans()))
    assert all(isinstance(x.kind, str) for x in fc.problems)


def test_checks_never_import_torch_or_numpy(real, tmp_path):
    """Every structural check runs without importing torch or numpy (checked in a fresh interpreter)."""
    st_path = tmp_path / "m.safetensors"
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    st_path.write_bytes(len(header).to_bytes(8, "little") + header + b"\1" * 8)
    code = f"""
import sys
from ckptwatch.formats.torchzip import check_torch_file
from ckptwatch.formats.safetensors import check_safetensors
from ckptwatch.formats.dcp import check_dcp_dir
from ckptwatch.formats.mindspore import check_ms_ckpt
for p in {[str(real[k]) for k in ("zip", "legacy", "pickle")]!r}:
    assert check_torch_file(p, deep=True).problems == (), p
assert check_safetensors({str(st_path)!r}, deep=True, scan_values=True).problems == ()
check_dcp_dir({str(tmp_path)!r})
check_ms_ckpt({str(st_path)!r})
bad = [m for m in ("torch", "numpy") if m in sys.modules]
assert not bad, bad
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


# --------------------------------------------------------------------------------------------------
# The shared streaming helpers (ckptwatch/formats/_stream.py)


def test_crc_ranges_threaded_and_combine_fallback(tmp_path, monkeypatch):
    """Two-thread segmented CRC and the pure-Python crc32_combine give zlib's CRC-32 of each range."""
    import zlib

    from ckptwatch.formats import _stream

    data = os.urandom(3 << 20)
    p = tmp_path / "blob"
    p.write_bytes(data)
    ranges = [(0, 0), (5, (2 << 20) + 77), ((2 << 20) + 77, len(data))]
    want = [zlib.crc32(data[s:e]) for s, e in ranges]
    monkeypatch.setattr(_stream, "PARALLEL_MIN", 0)
    monkeypatch.setattr(_stream, "SEGMENT", 300_000)
    monkeypatch.setattr(_stream, "_CRC_RELEASES_GIL", True)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert _stream.crc32_ranges(fd, ranges, str(p), threads=1) == want
        assert _stream.crc32_ranges(fd, ranges, str(p), threads=2) == want
        monkeypatch.setattr(_stream, "_crc32_combine", None)  # the stdlib-zlib fallback
        assert _stream.crc32_concat(fd, ranges[1:], str(p), threads=2) == zlib.crc32(data[5:])
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------
# the fast path: one directory read and one data.pkl read, without zipfile (the default pass)


def _real_zip(tmp_path, name="optimizer.pt"):
    import torch

    p = tmp_path / name
    torch.save({"state": {i: {"exp_avg": torch.randn(64)} for i in range(40)},
                "param_groups": [{"lr": 1e-3}]}, p)
    return p


def test_fast_path_accepts_real_file(tmp_path, monkeypatch):
    """A real torch.save zip passes the fast check without zipfile, with the facts the zipfile path finds."""
    p = _real_zip(tmp_path)
    full = check_torch_file(str(p), deep=True)
    monkeypatch.setattr(zipfile, "ZipFile", None)  # the fast path must not need it
    fc = check_torch_file(str(p), read_pickle=False)
    assert file_ok(fc) and fc.problems == () == full.problems
    assert fc.facts["prefix"] == "optimizer" and fc.facts["object"] is not None
    assert fc.facts["storages"] == full.facts["storages"] and len(fc.facts["storages"]) == 40
    assert fc.facts["globals"] == full.facts["globals"]


@pytest.mark.parametrize("cut", [1, 22, 60, 98, 500, "half"])
def test_fast_path_rejects_truncation(tmp_path, cut):
    """A cut anywhere leaves the directory-only check as strict as the full one: never ok."""
    p = _real_zip(tmp_path)
    size = p.stat().st_size
    os.truncate(p, size // 2 if cut == "half" else size - cut)
    fast = check_torch_file(str(p), read_pickle=False)
    full = check_torch_file(str(p))
    assert not file_ok(fast) and not file_ok(full)
    assert {q.kind for q in fast.problems} <= {"truncated", "bad_zip"}


def test_fast_path_trailing_bytes_and_damaged_directory(tmp_path):
    """Trailing bytes and a damaged directory record fall back to zipfile and are reported precisely."""
    p = _real_zip(tmp_path)
    with open(p, "ab") as f:
        f.write(b"junk")
    assert "trailing_data" in {q.kind for q in check_torch_file(str(p), read_pickle=False).problems}
    q = _real_zip(tmp_path, "scheduler.pt")
    raw = bytearray(q.read_bytes())
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd:cd + 4] = b"XX\x01\x02"
    q.write_bytes(bytes(raw))
    assert not file_ok(check_torch_file(str(q), read_pickle=False))


def test_pipelined_crc_matches_zlib(tmp_path):
    """The read-ahead CRC pipeline equals zlib's CRC-32 for any alignment and length; a cut is truncated."""
    import zlib

    from ckptwatch.formats import _stream

    data = os.urandom((_stream.PIPE_CHUNK * 2) + 12345)
    p = tmp_path / "blob"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        ranges = [(0, len(data)), (7, len(data) - 3), (4096 + 1, _stream.PIPE_CHUNK + 99), (50, 50)]
        assert _stream._crc_pipelined(fd, ranges, str(p)) == [zlib.crc32(data[s:e]) for s, e in ranges]
        with pytest.raises(_stream.FormatError):
            _stream._crc_pipelined(fd, [(0, len(data) + 10)], str(p))
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------
# One scalar's value (read_scalar: retention reads Lightning's ModelCheckpoint scores with it)


def test_read_scalar_of_each_float_type(tmp_path):
    """Real torch.save scalars of every float type torch writes a score in, a one-element view into a
    larger storage, and what is not a one-element float tensor (None)."""
    from ckptwatch.formats.torchzip import read_scalar

    big = torch.arange(10, dtype=torch.float32) / 3
    values = {
        "f32": torch.tensor(0.2578554451465607),
        "f64": torch.tensor(1 / 3, dtype=torch.float64),
        "f16": torch.tensor(0.1, dtype=torch.float16),
        "bf16": torch.tensor(-2.5e-3, dtype=torch.bfloat16),
        "one": torch.tensor([7.25]),
        "view": big[7],
    }
    others = {"int": torch.tensor(3), "vector": torch.ones(2), "empty": torch.ones(0)}
    path = tmp_path / "scores.ckpt"
    torch.save({**values, **others}, path)
    fc = check_torch_file(str(path))
    assert fc.problems == ()
    obj, prefix = fc.facts["object"], fc.facts["prefix"]
    assert {k: read_scalar(str(path), get(obj, k), prefix) for k in values} == {
        k: t.item() for k, t in values.items()}
    assert {k: read_scalar(str(path), get(obj, k), prefix) for k in others} == dict.fromkeys(others)
    assert read_scalar(str(path), get(obj, "f32"), "elsewhere") is None  # no such record: None, no raise
    assert read_scalar(str(tmp_path / "gone.ckpt"), get(obj, "f32"), prefix) is None
