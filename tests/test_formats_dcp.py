"""torch.distributed.checkpoint directories: real single-rank saves (gloo), damaged or hand-built ones."""

from __future__ import annotations

import collections
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptwatch.formats.dcp import check_dcp_dir, rank_of
from ckptwatch.vocabulary import file_ok
from tests.helpers import run_as_nobody

torch = pytest.importorskip("torch")
meta = pytest.importorskip("torch.distributed.checkpoint.metadata")
from torch.distributed.checkpoint.filesystem import _StorageInfo  # noqa: E402 - after importorskip


def kinds(fc) -> list[str]:
    return sorted(p.kind for p in fc.problems)


BUILD = textwrap.dedent("""
    import sys, warnings
    import torch, torch.distributed as dist, torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.filesystem import SerializationFormat
    warnings.simplefilter("ignore")
    out = sys.argv[1]
    dist.init_process_group("gloo", init_method=f"file://{out}/pg-rendezvous", rank=0, world_size=1)
    g = torch.Generator().manual_seed(0)
    sd = {"model": {"w": torch.randn(64, 32, generator=g), "b": torch.ones(5, dtype=torch.bfloat16)},
          "step": 7, "extra": {"lr": 0.1}}
    dcp.save(sd, storage_writer=FileSystemWriter(f"{out}/global", thread_count=2))
    dcp.save(sd, checkpoint_id=f"{out}/local", use_collectives=False)
    dcp.save({"w": sd["model"]["w"]}, storage_writer=FileSystemWriter(
        f"{out}/safetensors", serialization_format=SerializationFormat.SAFETENSORS))
    dist.destroy_process_group()
""")


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    """Real DCP dirs written by torch.distributed.checkpoint in a single-process gloo group."""
    out = tmp_path_factory.mktemp("dcp")
    r = subprocess.run([sys.executable, "-c", BUILD, str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture
def copy_of(real, tmp_path):
    def get(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(real / name, dst)
        return dst

    return get


def synth(
    d: Path,
    tensors: dict,
    *,
    bytes_items=(),
    drop=(),
    file_of=None,
    data_of=None,
    meta_name: str = ".metadata",
) -> Path:
    """Write a DCP dir by hand with torch's real metadata classes.

    ``tensors``: {fqn: (size, [(offsets, sizes), ...])}; each chunk's window is ``torch.save`` of
    ``data_of(fqn, offsets, sizes)`` (default ones(sizes)) in file ``file_of(fqn, offsets)``
    (default ``__0_0.distcp``); chunks in ``drop`` get no storage entry.
    """
    d.mkdir(parents=True, exist_ok=True)
    file_of = file_of or (lambda fqn, offs: "__0_0.distcp")
    data_of = data_of or (lambda fqn, offs, sizes: torch.ones(sizes))
    blobs: dict[str, bytearray] = collections.defaultdict(bytearray)
    sdm, storage = {}, {}

    def put(index, fname, obj):
        buf = io.BytesIO()
        torch.save(obj, buf)
        storage[index] = _StorageInfo(fname, len(blobs[fname]), len(buf.getvalue()))
        blobs[fname] += buf.getvalue()

    for fqn, (size, chunks) in tensors.items():
        cms = []
        for offs, sizes in chunks:
            cms.append(meta.ChunkStorageMetadata(offsets=torch.Size(offs), sizes=torch.Size(sizes)))
            if (fqn, tuple(offs)) not in drop:
                put(meta.MetadataIndex(fqn, offs), file_of(fqn, offs), data_of(fqn, offs, sizes))
        sdm[fqn] = meta.TensorStorageMetadata(
            meta.TensorProperties(dtype=torch.float32), torch.Size(size), cms
        )
    for fqn in bytes_items:
        sdm[fqn] = meta.BytesStorageMetadata()
        if (fqn, None) not in drop:
            put(meta.MetadataIndex(fqn), file_of(fqn, None), {"value": fqn})
    for fname, blob in blobs.items():
        (d / fname).write_bytes(bytes(blob))
    with open(d / meta_name, "wb") as f:
        pickle.dump(meta.Metadata(sdm, storage_data=storage, version="1.0.0"), f)
    return d


def patch_bytes(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert len(old) == len(new) and old in data
    path.write_bytes(data.replace(old, new))


# --------------------------------------------------------------------------------------------------
# Healthy directories


def test_global_dir(real):
    """A real DCP save (2 writer threads) passes, deep included, with ranks, files, version and mode."""
    fc = check_dcp_dir(str(real / "global"), deep=True)
    assert fc.problems == ()
    f = fc.facts
    assert f["ranks_in_names"] == [0] and f["version"] == "1.0.0" and f["rank_local"] is False
    assert f["referenced_files"] == {
        n: (real / "global" / n).stat().st_size for n in ("__0_0.distcp", "__0_1.distcp")
    }


def test_rank_local_dir(real):
    """use_collectives=False writes __0.metadata instead of .metadata; it is judged the same way."""
    fc = check_dcp_dir(str(real / "local"), deep=True)
    assert fc.problems == () and fc.facts["rank_local"] is True and fc.facts["ranks_in_names"] == [0]


def test_safetensors_serialization_dir(real):
    """SerializationFormat.SAFETENSORS buckets are validated as safetensors files under --deep."""
    fc = check_dcp_dir(str(real / "safetensors"), deep=True)
    assert fc.problems == ()


def test_megatron_group_prefix(tmp_path):
    """Megatron names files <group>__{rank}_{n}.distcp; the rank is still read from the name."""
    d = synth(
        tmp_path / "m",
        {"decoder.w": ((4, 4), [((0, 0), (2, 4)), ((2, 0), (2, 4))])},
        file_of=lambda fqn, offs: f"decoder__{offs[0] // 2 + 2}_0.distcp",
    )
    fc = check_dcp_dir(str(d), deep=True)
    assert fc.problems == () and fc.facts["ranks_in_names"] == [2, 3]
    assert (
        rank_of("decoder__12_3.distcp") == 12
        and rank_of("a__b__1_0.distcp") == 1
        and rank_of("x.distcp") is None
    )


# --------------------------------------------------------------------------------------------------
# Commit marker


def test_no_metadata_and_in_progress(copy_of):
    """No .metadata is no_commit_marker; with .metadata.tmp present the save is in_progress."""
    d = copy_of("global")
    (d / ".metadata").unlink()
    assert kinds(check_dcp_dir(str(d))) == ["no_commit_marker"]
    (d / ".metadata.tmp").write_bytes(b"partial")
    assert kinds(check_dcp_dir(str(d))) == ["in_progress"]


def test_newer_tmp_means_a_new_save_is_committing(copy_of):
    """A .metadata.tmp newer than .metadata (a re-save finishing) is in_progress."""
    d = copy_of("global")
    (d / ".metadata.tmp").write_bytes(b"partial")
    now = time.time()
    os.utime(d / ".metadata", (now - 60, now - 60))
    os.utime(d / ".metadata.tmp", (now, now))
    assert "in_progress" in kinds(check_dcp_dir(str(d)))


def test_stale_commit_marker(copy_of):
    """A data file rewritten after .metadata (more than 2 s newer) makes the marker stale."""
    d = copy_of("global")
    now = time.time()
    for n in (".metadata", "__0_0.distcp"):
        os.utime(d / n, (now - 100, now - 100))
    os.utime(d / "__0_1.distcp", (now, now))
    fc = check_dcp_dir(str(d))
    assert kinds(fc) == ["stale_commit_marker"]
    os.utime(d / "__0_1.distcp", (now - 99, now - 99))  # within the 2 s skew allowance
    assert check_dcp_dir(str(d)).problems == ()


def test_rank_local_rank_without_metadata(copy_of):
    """In rank-local mode a rank with data files but no __{r}.metadata did not commit."""
    d = copy_of("local")
    (d / "__1_0.distcp").write_bytes(b"PK\x03\x04 partial")
    fc = check_dcp_dir(str(d))
    assert kinds(fc) == ["no_commit_marker", "unreferenced_file"] and fc.facts["ranks_in_names"] == [0, 1]
    (d / "__1.metadata.tmp").write_bytes(b"")
    assert "in_progress" in kinds(check_dcp_dir(str(d)))


# --------------------------------------------------------------------------------------------------
# Referenced files


def test_missing_file_names_its_rank(copy_of):
    """A storage entry naming an absent file is missing_shard, with the rank parsed from the file name."""
    d = copy_of("global")
    patch_bytes(d / ".metadata", b"__0_1.distcp", b"__3_1.distcp")
    fc = check_dcp_dir(str(d))
    assert kinds(fc) == ["missing_shard", "unreferenced_file"]
    missing = next(p for p in fc.problems if p.kind == "missing_shard")
    assert "__3_1.distcp (rank 3) is missing" in missing.message


def test_unsafe_relative_path(copy_of):
    """A relative_path leaving the directory is unsafe_path and is never opened."""
    d = copy_of("global")
    patch_bytes(d / ".metadata", b"__0_1.distcp", b"../../passwd")
    assert "unsafe_path" in kinds(check_dcp_dir(str(d)))


def test_truncated_data_file(copy_of):
    """A data file shorter than the furthest byte window in it is truncated."""
    d = copy_of("global")
    p = d / "__0_0.distcp"
    data = p.read_bytes()
    p.write_bytes(data[:-1])
    os.utime(d / ".metadata")  # keep the marker newest
    fc = check_dcp_dir(str(d))
    assert kinds(fc) == ["truncated"] and f"up to byte {len(data)}" in fc.problems[0].message


def test_unreferenced_files(copy_of):
    """Empty unreferenced buckets are normal; a non-empty one is a warning with the larger-world hint."""
    d = copy_of("global")
    (d / "__1_0.distcp").write_bytes(b"")
    assert check_dcp_dir(str(d)).problems == ()
    (d / "__5_0.distcp").write_bytes(b"old data")
    fc = check_dcp_dir(str(d))
    assert (
        kinds(fc) == ["unreferenced_file"]
        and "rank 5 is above every referenced rank" in fc.problems[0].message
    )
    assert file_ok(fc)


# --------------------------------------------------------------------------------------------------
# Tiling (rule 3)


def test_chunks_that_leave_a_gap(tmp_path):
    """Chunks covering 8 of 16 elements are size_mismatch."""
    d = synth(tmp_path / "g", {"w": ((4, 4), [((0, 0), (2, 4))])})
    fc = check_dcp_dir(str(d))
    assert kinds(fc) == ["size_mismatch"] and "cover 8 of its 16 elements" in fc.problems[0].message


def test_overlapping_chunks(tmp_path):
    """Chunks whose total is right but which overlap (and so leave a hole) are size_mismatch."""
    d = synth(
        tmp_path / "o",
        {"w": ((4, 4), [((0, 0), (2, 4)), ((1, 0), (2, 4))]), "v": ((4,), [((0,), (2,)), ((2,), (2,))])},
    )
    fc = check_dcp_dir(str(d))
    assert kinds(fc) == ["size_mismatch"] and "'w' overlap" in fc.problems[0].message


def test_chunk_outside_and_entries_missing(tmp_path):
    """A chunk outside its tensor, a chunk or byte item without storage entry are bad_header."""
    d = synth(tmp_path / "x", {"w": ((4,), [((0,), (2,)), ((3,), (2,))])})
    assert "lies outside its size" in check_dcp_dir(str(d)).problems[0].message
    d2 = synth(
        tmp_path / "y",
        {"w": ((4,), [((0,), (2,)), ((2,), (2,))])},
        bytes_items=["opt.step"],
        drop={("w", (2,)), ("opt.step", None)},
    )
    fc = check_dcp_dir(str(d2))
    assert kinds(fc) == ["bad_header"]
    assert "chunk at [2] of tensor 'w' has no storage entry" in fc.problems[0].message
    assert "value 'opt.step' has no storage entry" in fc.problems[0].message


def rank_local(d: Path, ranks: dict[int, dict]) -> Path:
    """A rank-local DCP dir: each rank writes its own __{r}.metadata listing only its chunks."""
    for r, tensors in ranks.items():
        synth(d, tensors, file_of=lambda fqn, offs, r=r: f"__{r}_0.distcp", meta_name=f"__{r}.metadata")
    return d


def test_rank_local_chunks_tile_across_ranks(tmp_path):
    """In rank-local mode a sharded tensor is tiled by the union of every rank's chunks (replicas allowed)."""
    d = rank_local(
        tmp_path / "rl",
        {r: {"w": ((4, 4), [((2 * r, 0), (2, 4))]), "bias": ((3,), [((0,), (3,))])} for r in (0, 1)},
    )
    fc = check_dcp_dir(str(d), deep=True)
    assert fc.problems == () and fc.facts["rank_local"] and fc.facts["ranks_in_names"] == [0, 1]


def test_rank_local_gap_is_a_missing_rank(tmp_path):
    """Rank-local chunks that leave part of a tensor uncovered mean a rank never committed: missing_rank."""
    d = rank_local(tmp_path / "gap", {r: {"w": ((6, 4), [((2 * r, 0), (2, 4))])} for r in (0, 1)})
    fc = check_dcp_dir(str(d))
    assert kinds(fc) == ["missing_rank"] and "cover 16 of its 24 elements" in fc.problems[0].message


def test_rank_local_disagreeing_sizes(tmp_path):
    """Two ranks describing one tensor with different global sizes is bad_header."""
    d = rank_local(
        tmp_path / "dis", {0: {"w": ((4, 4), [((0, 0), (2, 4))])}, 1: {"w": ((6, 4), [((2, 0), (2, 4))])}}
    )
    assert "bad_header" in kinds(check_dcp_dir(str(d)))


# --------------------------------------------------------------------------------------------------
# Deep (rule 6)


def test_deep_catches_a_flipped_byte(copy_of):
    """A flipped byte inside a tensor's window passes the cheap check and fails --deep's CRC."""
    from ckptwatch.formats.pickle_stub import get

    d = copy_of("global")
    md = check_dcp_dir(str(d)).facts["metadata"][".metadata"]
    info = next(v for k, v in get(md, "storage_data").items() if get(k, "fqn") == "model.w")
    p = d / get(info, "relative_path")
    data = bytearray(p.read_bytes())
    data[get(info, "offset") + 4000] ^= 0x01  # inside the 8 KiB float32 record data/0
    p.write_bytes(bytes(data))
    os.utime(d / ".metadata")
    assert check_dcp_dir(str(d)).problems == ()
    fc = check_dcp_dir(str(d), deep=True)
    assert kinds(fc) == ["crc_mismatch"] and "(model.w)" in fc.problems[0].message


def test_deep_checks_window_shape_against_chunk(tmp_path):
    """A window holding a tensor of another shape than its chunk is size_mismatch under --deep."""
    d = synth(tmp_path / "s", {"w": ((4, 4), [((0, 0), (4, 4))])}, data_of=lambda f, o, s: torch.ones(2, 8))
    assert check_dcp_dir(str(d)).problems == ()
    fc = check_dcp_dir(str(d), deep=True)
    assert kinds(fc) == ["size_mismatch"] and "shape [2, 8]" in fc.problems[0].message


# --------------------------------------------------------------------------------------------------
# Bad metadata files and OS trouble


@pytest.mark.parametrize(
    "content,kind",
    [
        (b"", "empty_file"),
        (b"\x80\x04garbage", "bad_pickle"),
        (pickle.dumps({"not": "metadata"}), "bad_header"),
    ],
)
def test_bad_metadata_file(copy_of, content, kind):
    """.metadata that is empty, not a pickle, or not a DCP Metadata is reported as such."""
    d = copy_of("global")
    (d / ".metadata").write_bytes(content)
    assert kinds(check_dcp_dir(str(d))) == [kind]


def test_missing_dir_and_non_utf8_name(copy_of, tmp_path):
    """A vanished directory is 'deleted'; a non-UTF-8 data file name is reported printably."""
    assert kinds(check_dcp_dir(str(tmp_path / "nope"))) == ["deleted"]
    d = copy_of("global")
    with open(os.path.join(os.fsencode(d), b"\xff__2_0.distcp"), "wb") as f:
        f.write(b"x")
    fc = check_dcp_dir(str(d))
    assert kinds(fc) == ["unreferenced_file"] and "\\xff__2_0.distcp" in fc.problems[0].message
    fc.problems[0].message.encode("utf-8")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges to nobody")
def test_unreadable_metadata(real):
    """A .metadata other users cannot read is unreadable."""
    d = Path(tempfile.mkdtemp(prefix="ckptwatch-"))
    try:
        os.chmod(d, 0o755)
        shutil.copytree(real / "global", d / "ck")
        os.chmod(d / "ck", 0o755)
        os.chmod(d / "ck" / ".metadata", 0)
        result = kinds(run_as_nobody(check_dcp_dir, str(d / "ck")))
        assert result == ["unreadable"]
    finally:
        shutil.rmtree(d, ignore_errors=True)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_damaged_metadata_never_raises(real, tmp_path, data):
    """Random edits and cuts of a real .metadata give problems, never an exception."""
    src = (real / "global" / ".metadata").read_bytes()
    d = Path(tempfile.mkdtemp(dir=tmp_path)) / "ck"
    shutil.copytree(real / "global", d)
    b = bytearray(src[: data.draw(st.integers(0, len(src)))])
    for _ in range(data.draw(st.integers(0, 5))):
        if b:
            b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
    (d / ".metadata").write_bytes(bytes(b))
    fc = check_dcp_dir(str(d), deep=data.draw(st.booleans()))
    assert all(isinstance(p.kind, str) for p in fc.problems)
    shutil.rmtree(d)
