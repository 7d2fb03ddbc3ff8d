"""MindSpore .ckpt files, written with the real protobuf library from MindSpore's checkpoint.proto schema.

MindSpore itself cannot run here (no wheel for this machine), so the message classes are built at test
time from a FileDescriptorProto equal to ``mindspore/ccsrc/utils/checkpoint.proto`` and the writer below
follows ``mindspore/train/serialization.py`` (2.10): one serialized ``Checkpoint`` per parameter chunk,
concatenated, append-info tags last, optional ``b"crc_num" + crc.to_bytes(10, "big")`` trailer.
"""

from __future__ import annotations

import binascii
import errno
import math
import os
import shutil
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptwatch.formats.mindspore import check_ms_ckpt
from tests.helpers import run_as_nobody

descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
from google.protobuf import descriptor_pool, message_factory  # noqa: E402 - after importorskip

NP_TYPES = {
    "Float32": ("<f", 4),
    "Float16": ("<e", 2),
    "Int32": ("<i", 4),
    "Int64": ("<q", 8),
    "UInt8": ("<B", 1),
}


def kinds(fc) -> list[str]:
    return sorted(p.kind for p in fc.problems)


@pytest.fixture(scope="module")
def Checkpoint():  # noqa: N802 - a message class
    """The ``Checkpoint`` message class, built from MindSpore's proto2 schema."""
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="checkpoint.proto", syntax="proto2", package="ms_ckpt_test")

    def add(msg, name, number, label, ftype, type_name=None, oneof=None):
        f = msg.field.add(name=name, number=number, label=label, type=ftype)
        if type_name:
            f.type_name = type_name
        if oneof is not None:
            f.oneof_index = oneof

    tp = fdp.message_type.add(name="TensorProto")
    add(tp, "dims", 1, F.LABEL_REPEATED, F.TYPE_INT64)
    add(tp, "tensor_type", 2, F.LABEL_REQUIRED, F.TYPE_STRING)
    add(tp, "tensor_content", 3, F.LABEL_REQUIRED, F.TYPE_BYTES)
    mp = fdp.message_type.add(name="MapTensorProto")
    add(mp, "tensor", 1, F.LABEL_REPEATED, F.TYPE_MESSAGE, ".ms_ckpt_test.TensorProto")
    ck = fdp.message_type.add(name="Checkpoint")
    val = ck.nested_type.add(name="Value")
    val.oneof_decl.add(name="value")
    add(val, "tag", 1, F.LABEL_REQUIRED, F.TYPE_STRING)
    add(val, "tensor", 2, F.LABEL_OPTIONAL, F.TYPE_MESSAGE, ".ms_ckpt_test.TensorProto", oneof=0)
    add(val, "maptensor", 3, F.LABEL_OPTIONAL, F.TYPE_MESSAGE, ".ms_ckpt_test.MapTensorProto", oneof=0)
    add(ck, "value", 1, F.LABEL_REPEATED, F.TYPE_MESSAGE, ".ms_ckpt_test.Checkpoint.Value")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("ms_ckpt_test.Checkpoint"))


def content(type_: str, dims: list[int], fill=None) -> bytes:
    fmt, _ = NP_TYPES[type_]
    n = 1 if dims in ([], [0]) else math.prod(dims)
    return b"".join(struct.pack(fmt, fill if fill is not None else (i % 7) + 1) for i in range(n))


def write_ckpt(
    Checkpoint,
    path: Path,
    params: list[tuple[str, list[int], str, bytes]],
    *,
    crc: bool = False,
    slice_bytes: int = 1 << 20,
    map_tags: tuple[str, ...] = (),
) -> Path:
    """Write like MindSpore's _exec_save: one Checkpoint message per chunk of at most ``slice_bytes``."""
    crc_num = 0
    with open(path, "wb") as f:
        for tag, dims, type_, data in params:
            for i in range(0, max(len(data), 1), slice_bytes):
                msg = Checkpoint()
                v = msg.value.add()
                v.tag = tag
                v.tensor.dims.extend(dims)
                v.tensor.tensor_type = type_
                v.tensor.tensor_content = data[i : i + slice_bytes]
                out = msg.SerializeToString()
                crc_num = binascii.crc32(out, crc_num)
                f.write(out)
        for tag in map_tags:
            msg = Checkpoint()
            v = msg.value.add()
            v.tag = tag
            t = v.maptensor.tensor.add()
            t.dims.extend([2])
            t.tensor_type = "int32"
            t.tensor_content = b"\0" * 8
            f.write(msg.SerializeToString())
        if crc:
            f.write(b"crc_num" + crc_num.to_bytes(10, "big"))
    return path


def mindformers_params() -> list[tuple[str, list[int], str, bytes]]:
    return [
        ("model.embed.weight", [300, 64], "Float32", content("Float32", [300, 64])),
        ("model.norm.weight", [64], "Float16", content("Float16", [64])),
        ("epoch_num", [0], "Int32", struct.pack("<i", 3)),
        ("step_num", [0], "Int32", struct.pack("<i", 40)),
        ("global_step", [0], "Int64", struct.pack("<q", 1240)),
        ("loss_scale", [0], "Float32", struct.pack("<f", 1024.0)),
    ]


@pytest.fixture
def good(Checkpoint, tmp_path) -> Path:
    """A MindFormers-like checkpoint: a 75 KB tensor in 4 chunks, append-info tags last, CRC trailer."""
    return write_ckpt(
        Checkpoint, tmp_path / "llama_rank_0-3_40.ckpt", mindformers_params(), crc=True, slice_bytes=20_000
    )


# --------------------------------------------------------------------------------------------------
# Healthy files


def test_real_protobuf_file_facts(Checkpoint, good):
    """A file written with protobuf passes (deep: CRC verified) with params, CRC, tail tags and step."""
    parsed = Checkpoint()
    parsed.ParseFromString(good.read_bytes()[:-17])
    assert len(parsed.value) == 4 + 5  # the big tensor is 4 chunks
    fc = check_ms_ckpt(str(good), deep=True)
    assert fc.problems == ()
    f = fc.facts
    assert f["params"]["model.embed.weight"] == ((300, 64), "Float32", 300 * 64 * 4)
    assert f["params"]["global_step"] == ((0,), "Int64", 8)
    assert f["has_crc"] is True and f["append_tags_last"] is True and f["step"] == 1240


def test_plain_file_without_trailer_or_tail_tags(Checkpoint, tmp_path):
    """Without crc_check and append_dict the file still passes; the facts say what evidence is missing."""
    p = write_ckpt(Checkpoint, tmp_path / "net.ckpt", mindformers_params()[:2])
    fc = check_ms_ckpt(str(p), deep=True)
    assert fc.problems == () and fc.facts["has_crc"] is False and fc.facts["append_tags_last"] is False
    assert fc.facts["step"] is None


def test_map_tensor_and_packed_dims(Checkpoint, tmp_path):
    """MapTensorProto records are accepted; packed dims (allowed by protobuf) parse like unpacked ones."""
    p = write_ckpt(Checkpoint, tmp_path / "m.ckpt", mindformers_params()[:1], map_tags=("emb_table",))
    fc = check_ms_ckpt(str(p))
    assert fc.problems == () and "emb_table" in fc.facts["params"]
    # tag "w", TensorProto{dims packed [2, 3], type "UInt8", content 6 bytes}
    tensor = b"\x0a\x02\x02\x03" + b"\x12\x05UInt8" + b"\x1a\x06" + b"\x01" * 6
    value = b"\x0a\x01w" + b"\x12" + bytes([len(tensor)]) + tensor
    q = tmp_path / "packed.ckpt"
    q.write_bytes(b"\x0a" + bytes([len(value)]) + value)
    fc = check_ms_ckpt(str(q))
    assert fc.problems == () and fc.facts["params"]["w"] == ((2, 3), "UInt8", 6)


# --------------------------------------------------------------------------------------------------
# Damage


@pytest.mark.parametrize("cut", [1, 2, 10, 100, 30_000, -18, -40])
def test_cut_inside_a_record_is_truncated(good, tmp_path, cut):
    """A file cut inside a record (several places) is truncated, naming the record's offset."""
    data = good.read_bytes()
    n = cut if cut > 0 else len(data) + cut
    p = tmp_path / "cut.ckpt"
    p.write_bytes(data[:n])
    fc = check_ms_ckpt(str(p))
    assert kinds(fc) == ["truncated"], fc.problems
    assert "record at byte" in fc.problems[0].message


def test_cut_at_a_record_boundary_looks_complete(Checkpoint, good, tmp_path):
    """A cut exactly between records parses as a shorter valid file: only has_crc/append_tags_last tell."""
    prefix = write_ckpt(Checkpoint, tmp_path / "prefix.ckpt", mindformers_params()[:2], slice_bytes=20_000)
    boundary = prefix.stat().st_size  # the file is a concatenation, so this is a record boundary of `good`
    p = tmp_path / "short.ckpt"
    p.write_bytes(good.read_bytes()[:boundary])
    fc = check_ms_ckpt(str(p), deep=True)
    assert fc.problems == ()
    assert fc.facts["has_crc"] is False and fc.facts["append_tags_last"] is False


def test_crc_mismatch_needs_deep(good, tmp_path):
    """A flipped tensor byte passes the cheap walk and fails --deep's CRC-32 trailer check."""
    data = bytearray(good.read_bytes())
    data[5000] ^= 0x40
    p = tmp_path / "flip.ckpt"
    p.write_bytes(bytes(data))
    assert check_ms_ckpt(str(p)).problems == ()
    fc = check_ms_ckpt(str(p), deep=True)
    assert kinds(fc) == ["crc_mismatch"]


def test_content_size_mismatch(Checkpoint, tmp_path):
    """Content bytes that disagree with dims x type are size_mismatch, naming the parameter."""
    p = write_ckpt(Checkpoint, tmp_path / "s.ckpt", [("w", [3, 4], "Float32", b"\0" * 40)])
    fc = check_ms_ckpt(str(p))
    assert kinds(fc) == ["size_mismatch"] and "'w' (Float32 [3, 4]" in fc.problems[0].message
    assert "holds 40 bytes, needs 48" in fc.problems[0].message


@pytest.mark.parametrize(
    "blob,needle",
    [
        (b"\x12\x03abc", "not a Checkpoint.value record"),  # field 2 at top level
        (b"hello world" * 3, "not a Checkpoint.value record"),  # text / encrypted bytes
        (b"\x0a\x05\x12\x03\x1a\x01x", "no tag"),  # Value without tag
        (b"\x0a\x03\x0a\x01w", "neither a tensor nor a maptensor"),  # tag only
        (b"\x0a\x08\x0a\x01w\x12\x03\x1a\x01x", "lacks its required tensor_type"),
        (b"\x0a\x05\x0b\x0a\x01w\x0c", "wire type 3"),  # a group
        (b"\x0a\x03\x08\x01\x00", "Value.tag has wire type 0"),
    ],
)
def test_wrong_wire_structure(tmp_path, blob, needle):
    """Bytes that are not MindSpore's protobuf structure are bad_protobuf, saying what was found where."""
    p = tmp_path / "b.ckpt"
    p.write_bytes(blob)
    fc = check_ms_ckpt(str(p))
    assert kinds(fc) == ["bad_protobuf"] and needle in fc.problems[0].message, fc.problems


def test_empty_and_missing(tmp_path):
    """A 0-byte file is empty_file; a vanished one is deleted."""
    (tmp_path / "e.ckpt").write_bytes(b"")
    assert kinds(check_ms_ckpt(str(tmp_path / "e.ckpt"))) == ["empty_file"]
    assert kinds(check_ms_ckpt(str(tmp_path / "gone.ckpt"))) == ["deleted"]


def test_vanished_during_read(good, monkeypatch):
    """A file removed while its records are being walked is deleted, not corrupt."""
    real_pread = os.pread
    calls = {"n": 0}

    def pread(fd, n, off):
        calls["n"] += 1
        if calls["n"] == 3:
            os.unlink(good)
            raise OSError(errno.ESTALE, "Stale file handle")
        return real_pread(fd, n, off)

    monkeypatch.setattr(os, "pread", pread)
    assert kinds(check_ms_ckpt(str(good))) == ["deleted"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges to nobody")
def test_mode_0400_file_of_another_user(good):
    """MindSpore chmods checkpoints 0400: another user gets 'unreadable'."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="ckptwatch-"))
    try:
        os.chmod(d, 0o755)
        p = d / "x.ckpt"
        shutil.copyfile(good, p)
        os.chmod(p, 0o400)
        result = kinds(run_as_nobody(check_ms_ckpt, str(p)))
        assert result == ["unreadable"]
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Streaming: a 10 GB parameter is walked with seeks


def test_ten_gigabyte_parameter_is_never_read(tmp_path):
    """A record declaring 10 GB of tensor_content is walked by seeking past it: fast, little memory."""
    n = 10 << 30
    dims = [n // 4]

    def varint(v: int) -> bytes:
        out = bytearray()
        while True:
            b = v & 0x7F
            v >>= 7
            out.append(b | (0x80 if v else 0))
            if not v:
                return bytes(out)

    tensor_head = b"\x08" + varint(dims[0]) + b"\x12\x07Float32" + b"\x1a" + varint(n)
    tensor_len = len(tensor_head) + n
    value_head = b"\x0a\x04huge" + b"\x12" + varint(tensor_len) + tensor_head
    value_len = len(value_head) + n
    p = tmp_path / "huge.ckpt"
    with open(p, "wb") as f:
        f.write(b"\x0a" + varint(value_len) + value_head)
        f.truncate(f.tell() + n)
    t = time.perf_counter()
    fc = check_ms_ckpt(str(p))
    assert time.perf_counter() - t < 0.5
    assert fc.problems == () and fc.facts["params"]["huge"] == ((n // 4,), "Float32", n)
    with open(p, "r+b") as f:  # one byte short: the declared length overruns the file
        f.truncate(os.path.getsize(p) - 1)
    fc = check_ms_ckpt(str(p))
    assert kinds(fc) == ["truncated"] and "1 bytes missing" in fc.problems[0].message


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_damaged_files_never_raise(good, tmp_path, data):
    """Random edits and cuts of a real file give problems, never an exception."""
    src = good.read_bytes()
    b = bytearray(src[: data.draw(st.integers(0, len(src)))])
    for _ in range(data.draw(st.integers(0, 6))):
        if b:
            b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
    p = tmp_path / "fuzz.ckpt"
    p.write_bytes(bytes(b))
    fc = check_ms_ckpt(str(p), deep=data.draw(st.booleans()))
    assert all(isinstance(x.kind, str) for x in fc.problems)
