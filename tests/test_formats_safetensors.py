"""safetensors: the Rust reader's rules replicated in pure Python, checked against the real library."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptwatch.formats import _stream
from ckptwatch.formats.safetensors import TensorInfo, check_safetensors
from ckptwatch.vocabulary import file_ok
from tests.helpers import run_as_nobody

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
from safetensors import safe_open  # noqa: E402 - after importorskip


def kinds(fc) -> list[str]:
    return sorted(p.kind for p in fc.problems)


def write_st(path: Path, header: dict, data: bytes = b"", *, pad: bool = True) -> Path:
    h = json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


def layout(tensors: dict[str, tuple[str, list[int]]], bits: dict[str, int] | None = None) -> tuple[dict, int]:
    """Header entries packed back to back in the given order; (header, buffer length)."""
    bits = bits or {"F32": 32, "F16": 16, "BF16": 16, "F64": 64, "I64": 64, "U8": 8}
    header, pos = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = math.prod(shape) * bits[dtype] // 8
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + n]}
        pos += n
    return header, pos


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    """A model.safetensors written by safetensors.torch.save_file (0.8.0: temp file + rename, mode 0600)."""
    p = tmp_path_factory.mktemp("st") / "model.safetensors"
    g = torch.Generator().manual_seed(0)
    safetensors_torch.save_file(
        {
            "embed.weight": torch.randn(100, 16, generator=g),
            "norm.bias": torch.randn(16, generator=g).to(torch.bfloat16),
            "scalar": torch.tensor(3.0),
            "empty": torch.zeros(0, 4),
            "ids": torch.arange(7),
        },
        str(p),
        metadata={"format": "pt"},
    )
    return p


# --------------------------------------------------------------------------------------------------
# A healthy file


def test_real_file_facts_match_the_library(real):
    """A real file passes; facts (tensor table, metadata, header_len, data_start, size) match safe_open."""
    fc = check_safetensors(str(real), deep=True, scan_values=True)
    assert fc.problems == ()
    f = fc.facts
    assert f["metadata"] == {"format": "pt"} and f["size"] == real.stat().st_size
    assert f["data_start"] == 8 + f["header_len"]
    with safe_open(str(real), "numpy") as lib:
        assert set(lib.keys()) == set(f["tensors"])
        for name in lib.keys():  # noqa: SIM118 - a safe_open handle is not a dict
            sl = lib.get_slice(name)
            t = f["tensors"][name]
            assert isinstance(t, TensorInfo) and list(t.shape) == list(sl.get_shape())
    assert f["tensors"]["scalar"].shape == () and f["tensors"]["empty"].nbytes == 0


# --------------------------------------------------------------------------------------------------
# Bad sizes


@pytest.mark.parametrize(
    "cut,kind",
    [
        (0, "empty_file"),
        (1, "truncated"),
        (7, "truncated"),
        (8, "truncated"),
        (60, "truncated"),
        ("data", "truncated"),
        (-1, "truncated"),
    ],
)
def test_cut_files(real, tmp_path, cut, kind):
    """A file cut in its length field, its header or its data is truncated (0 bytes: empty_file)."""
    data = real.read_bytes()
    n = {"data": len(data) - 3000, -1: len(data) - 1}.get(cut, cut)
    p = tmp_path / "cut.safetensors"
    p.write_bytes(data[:n])
    assert kinds(check_safetensors(str(p))) == [kind]


def test_trailing_byte(real, tmp_path):
    """One byte after the last tensor is trailing_data (the library only says 'not fully covered')."""
    p = tmp_path / "t.safetensors"
    p.write_bytes(real.read_bytes() + b"\0")
    fc = check_safetensors(str(p))
    assert kinds(fc) == ["trailing_data"] and "1 extra bytes" in fc.problems[0].message


def test_eight_gigabyte_header_length(tmp_path):
    """A header length of 8 GB is bad_header, in words a person can read at 3 a.m."""
    p = tmp_path / "model.safetensors"
    p.write_bytes(struct.pack("<Q", 8 << 30) + b"{}" + b" " * 100)
    fc = check_safetensors(str(p))
    assert kinds(fc) == ["bad_header"]
    assert fc.problems[0].message == (
        f"{p} header says 8 GB (8589934592 bytes), more than the 100 MB the format allows"
    )


def test_garbage_length_and_offsets_past_eof(tmp_path):
    """A plausible header length beyond EOF, and offsets beyond EOF, are truncated."""
    p = tmp_path / "g.safetensors"
    p.write_bytes(struct.pack("<Q", 50_000_000) + b"{}")
    assert kinds(check_safetensors(str(p))) == ["truncated"]
    header, _ = layout({"a": ("F32", [1000])})
    q = write_st(tmp_path / "o.safetensors", header, b"\0" * 100)
    fc = check_safetensors(str(q))
    assert kinds(fc) == ["truncated"] and "3900 bytes missing" in fc.problems[0].message


@pytest.mark.parametrize(
    "header,needle",
    [
        (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}', "not valid JSON"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b"[]", "not an object"),
        (b'{"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}', "unknown dtype"),
        (b'{"a": {"dtype": "F32", "shape": [-0], "data_offsets": [0, 0]}}', "non-negative"),
        (
            b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"k": 1}}',
            "strings",
        ),
    ],
)
def test_invalid_headers(tmp_path, header, needle):
    """Headers the Rust reader rejects are bad_header, saying why."""
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    fc = check_safetensors(str(p))
    assert kinds(fc) == ["bad_header"] and needle in fc.problems[0].message


def test_wrong_span_is_size_mismatch(tmp_path):
    """A tensor whose byte span is not dtype x shape is size_mismatch, with both numbers."""
    p = write_st(
        tmp_path / "s.safetensors", {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8
    )
    fc = check_safetensors(str(p))
    assert (
        kinds(fc) == ["size_mismatch"]
        and "spans 8 bytes" in fc.problems[0].message
        and "needs 12" in fc.problems[0].message
    )


def test_deeply_nested_json_is_reported(tmp_path):
    """A header of 100k nested arrays is bad_header, not a RecursionError."""
    h = b"[" * 100_000 + b"]" * 100_000
    p = tmp_path / "n.safetensors"
    p.write_bytes(struct.pack("<Q", len(h)) + h)
    assert kinds(check_safetensors(str(p))) == ["bad_header"]


# --------------------------------------------------------------------------------------------------
# Agreement with the real library on random damage


def _library_ok(path: str) -> bool:
    try:
        with safe_open(path, "numpy") as f:
            list(f.keys())
        return True
    except Exception:  # noqa: BLE001 - SafetensorError and friends
        return False


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_verdicts_agree_with_safe_open(tmp_path, data):
    """For random edits of header text and size, our ok/not-ok verdict equals safetensors 0.8's."""
    header, n = layout({"a": ("F32", [3, 2]), "b": ("F16", [5]), "c": ("U8", [0])})
    text = bytearray(json.dumps(header).encode())
    for _ in range(data.draw(st.integers(0, 3))):
        op = data.draw(st.sampled_from(["set", "del", "ins"]))
        i = data.draw(st.integers(0, len(text) - 1))
        ch = data.draw(st.sampled_from(list(b'0123456789-., []{}":FUabe\\')))
        if op == "set":
            text[i] = ch
        elif op == "del":
            del text[i]
        else:
            text.insert(i, ch)
    extra = data.draw(st.sampled_from([0, 0, 0, -1, 1, -8]))
    p = tmp_path / "fuzz.safetensors"
    body = bytes(text) + b" " * data.draw(st.integers(0, 9))
    p.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * max(0, n + extra))
    ours = check_safetensors(str(p))
    assert file_ok(ours) == _library_ok(str(p)), (bytes(text), extra, ours.problems)


# --------------------------------------------------------------------------------------------------
# Only the header is read; sparse tails


def big_sparse(path: Path, tensors: int, size_each: int, write_data_up_to: int | None = None) -> Path:
    header, n = layout({f"layer.{i}.weight": ("U8", [size_each]) for i in range(tensors)})
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        if write_data_up_to:
            f.write(b"\x5a" * write_data_up_to)
        f.truncate(8 + len(h) + n)
    return path


def test_ten_gigabyte_sparse_file_is_checked_from_its_header(tmp_path):
    """A 10 GB file with 1,000 tensors is judged in well under a second: only the header is read.

    The file is sparse (nothing after the header was written), so it is also flagged zero_filled.
    """
    p = big_sparse(tmp_path / "huge.safetensors", 1000, 10 << 20)
    t = time.perf_counter()
    fc = check_safetensors(str(p))
    elapsed = time.perf_counter() - t
    assert len(fc.facts["tensors"]) == 1000 and fc.facts["size"] > 10**10
    assert kinds(fc) == ["zero_filled"] and "layer.0.weight" in fc.problems[0].message
    assert elapsed < 1.0, elapsed


def test_preallocated_then_crashed_writer(tmp_path):
    """A file at full size whose tail was never written (safetensors 0.8.0-rc.0 crash) is zero_filled."""
    p = big_sparse(tmp_path / "crash.safetensors", 8, 1 << 20, write_data_up_to=(3 << 20) + 5000)
    fc = check_safetensors(str(p))
    assert kinds(fc) == ["zero_filled"]
    assert "'layer.3.weight'" in fc.problems[0].message


def test_fully_written_file_is_not_zero_filled(tmp_path):
    """Real zeros written to disk (e.g. a LoRA B matrix last in the file) are not mistaken for a hole."""
    header, _ = layout({"a": ("U8", [1 << 20]), "z": ("U8", [4 << 20])})
    p = write_st(tmp_path / "zeros.safetensors", header, b"\x01" * (1 << 20) + bytes(4 << 20))
    assert os.stat(p).st_blocks * 512 >= os.stat(p).st_size
    assert check_safetensors(str(p)).problems == ()


def test_header_never_written(tmp_path):
    """A preallocated file whose header is still a hole (length 0) is a corrupt bad_header naming the hole."""
    p = tmp_path / "blank.safetensors"
    with open(p, "wb") as f:
        f.truncate(64 << 20)
    fc = check_safetensors(str(p))
    assert kinds(fc) == ["bad_header"] and "header was never written" in fc.problems[0].message
    assert not file_ok(fc)


# --------------------------------------------------------------------------------------------------
# deep and scan_values


def _tensor_file(tmp_path: Path, tensors: dict) -> Path:
    p = tmp_path / "v.safetensors"
    safetensors_torch.save_file(tensors, str(p))
    return p


def test_nan_inf_in_every_float_dtype(tmp_path):
    """--scan-values finds NaN/Inf in F16, BF16, F32 and F64 tensors and names the first element."""
    g = torch.Generator().manual_seed(1)
    tensors = {}
    for name, dtype in (
        ("h", torch.float16),
        ("b", torch.bfloat16),
        ("f", torch.float32),
        ("d", torch.float64),
    ):
        t = torch.randn(1000, generator=g, dtype=torch.float32).to(dtype)
        t[417] = float("nan") if name in "hf" else float("-inf")
        tensors[name] = t
    tensors["clean"] = torch.randn(1000, generator=g)
    tensors["min"] = torch.full((64,), torch.finfo(torch.float32).min)  # -FLT_MAX: huge, not Inf
    tensors["bmin"] = torch.full((64,), torch.finfo(torch.bfloat16).max, dtype=torch.bfloat16)
    fc = check_safetensors(str(_tensor_file(tmp_path, tensors)), scan_values=True)
    assert kinds(fc) == ["nan_inf"]
    msg = fc.problems[0].message
    assert "4 tensors hold NaN or Inf" in msg and msg.count("first at element 417") == 4
    assert "'clean'" not in msg and "'min'" not in msg and "'bmin'" not in msg


def test_nan_across_chunk_boundaries(tmp_path):
    """A NaN in the last element of a tensor bigger than the 4 MiB read buffer, at an odd offset, is found."""
    t = torch.ones(3 << 20)  # 12 MiB of F32
    t[-1] = float("inf")
    fc = check_safetensors(
        str(_tensor_file(tmp_path, {"a": torch.ones(3, dtype=torch.uint8), "big": t})), scan_values=True
    )
    assert kinds(fc) == ["nan_inf"] and f"first at element {(3 << 20) - 1}" in fc.problems[0].message


def test_all_zero_float_tensor(tmp_path):
    """An all-zero float tensor is an all_zero_tensor warning; zero ints and non-zero floats are not."""
    fc = check_safetensors(
        str(
            _tensor_file(
                tmp_path,
                {
                    "lora_B": torch.zeros(64, 8),
                    "w": torch.ones(8),
                    "count": torch.zeros(4, dtype=torch.int64),
                },
            )
        ),
        scan_values=True,
    )
    assert kinds(fc) == ["all_zero_tensor"] and "'lora_B'" in fc.problems[0].message
    assert "'count'" not in fc.problems[0].message
    assert file_ok(fc)  # warnings leave the file usable


class _FailingOs:
    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def preadv(fd, bufs, off):
        raise OSError(errno.EIO, "Input/output error")


def test_deep_read_surfaces_io_errors(real, monkeypatch):
    """--deep reads every byte; an EIO is read_error with the byte range, while the cheap check passes."""
    monkeypatch.setattr(_stream, "os", _FailingOs())
    assert check_safetensors(str(real)).problems == ()
    fc = check_safetensors(str(real), deep=True)
    assert kinds(fc) == ["read_error"] and "while reading bytes 0.." in fc.problems[0].message


# --------------------------------------------------------------------------------------------------
# OS trouble


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges to nobody")
def test_mode_0600_file_of_another_user_is_unreadable(real):
    """safetensors 0.8 writes 0600 files: another user gets 'unreadable', not a corruption verdict."""
    d = Path(tempfile.mkdtemp(prefix="ckptwatch-"))
    try:
        os.chmod(d, 0o755)
        p = d / "model.safetensors"
        shutil.copyfile(real, p)
        os.chmod(p, 0o600)
        fc = run_as_nobody(check_safetensors, str(p))
        assert kinds(fc) == ["unreadable"] and "mode 0600" in fc.problems[0].message
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_deleted_before_and_during_read(real, tmp_path, monkeypatch):
    """A vanished file is 'deleted' whether it is gone before open or disappears between reads."""
    assert kinds(check_safetensors(str(tmp_path / "gone.safetensors"))) == ["deleted"]
    p = tmp_path / "m.safetensors"
    shutil.copyfile(real, p)
    real_pread = os.pread

    def pread(fd, n, off):
        if off == 8:  # after the length was read: the writer's rotation removes the file
            os.unlink(p)
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")
        return real_pread(fd, n, off)

    monkeypatch.setattr(os, "pread", pread)
    assert kinds(check_safetensors(str(p))) == ["deleted"]


def test_non_utf8_file_name(real, tmp_path):
    """A non-UTF-8 file name is judged and reported with printable escapes."""
    p = os.path.join(os.fsencode(tmp_path), b"model-\xe9.safetensors")
    with open(p, "wb") as f:
        f.write(real.read_bytes()[:-1])
    fc = check_safetensors(os.fsdecode(p))
    assert kinds(fc) == ["truncated"] and "model-\\xe9" in fc.problems[0].message
    fc.problems[0].message.encode("utf-8")
