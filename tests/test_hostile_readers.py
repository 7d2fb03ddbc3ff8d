"""Hostile files of every non-pickle reader become findings, within the per-file bounds (issue 10 §4).

Each case writes a file of the hostile shape into a checkpoint the real framework wrote (``artefact``),
runs the CLI as a user would, in a child process, and asserts: the exit status is a verdict (0 or 1, never
3), the finding names the file and its kind, and the child stayed within the bounds of the rule: 5 s
of CPU for the file (plus 3 s for the interpreter, its imports and the rest of the checkpoint) and
1 GiB of peak RSS for the whole process. The bounds are the rule's, not performance targets.
"""

from __future__ import annotations

import json
import os
import pickletools
import struct
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from ckptwatch.formats._show import show
from tests.helpers import REPO

CPU_BOUND = 5.0 + 3.0
RSS_BOUND = 1 << 30
HUGE = 10 ** 5000  # 5,001 digits: str() of it raises ValueError (Python's limit is 4,300 digits)


@dataclass
class Child:
    status: int
    out: str
    err: str
    cpu: float
    maxrss: int  # bytes

    def report(self) -> dict:
        return json.loads(self.out)


def run_bounded(*args: str, timeout: float = 60) -> Child:
    """``python -m ckptwatch ARGS`` in a child, with its exit status, CPU seconds and peak RSS.

    ``os.wait4`` gives the resource use of that child alone (``RUSAGE_CHILDREN`` would include every
    earlier child of the test run, such as the framework builders).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "ckptwatch", *args], stdout=out, stderr=err, cwd=REPO)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Child(proc.returncode, out.read().decode(), err.read().decode(),
                     usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024)


def verify(path: Path, *extra: str) -> Child:
    child = run_bounded("verify", "--json", "--settle", "0", *extra, str(path))
    assert child.status in (0, 1), f"exit {child.status}: {child.err[-2000:]}"
    assert child.cpu < CPU_BOUND, f"{child.cpu:.1f} s of CPU"
    assert child.maxrss < RSS_BOUND, f"peak RSS {child.maxrss >> 20} MiB"
    return child


def problems_of(child: Child) -> list[dict]:
    return child.report()["checkpoint"]["problems"]


def finding(child: Child, path: Path) -> dict:
    """The one problem that names ``path``."""
    named = [p for p in problems_of(child) if p["file"] == str(path)]
    assert named, f"no problem names {path}: {problems_of(child)}"
    return named[0]


def writable(path: Path) -> Path:
    os.chmod(path, 0o644)
    return path


# --------------------------------------------------------------------------------------------------
# JSON side files


JSON_CASES = {
    "nested_100k": b"[" * 100_000 + b"]" * 100_000,
    "digits_5000": b'{"global_step": ' + b"7" * 5000 + b"}",
}


@pytest.mark.parametrize("shape", sorted(JSON_CASES))
@pytest.mark.parametrize(("name", "side_file"), [
    ("hf_full", "checkpoint-4/trainer_state.json"),
    ("hf_full", "checkpoint-4/config.json"),
    ("hf_lora", "checkpoint-4/adapter_config.json"),
])
def test_json_side_file(artefact, name, side_file, shape):
    """A JSON side file nested 100,000 deep or holding a 5,000-digit integer is bad_json, named."""
    run = artefact(name)
    target = run / side_file
    target.write_bytes(JSON_CASES[shape])
    child = verify(target.parent)
    p = finding(child, target)
    assert p["kind"] == "bad_json"
    assert ("deeper" in p["message"]) if shape == "nested_100k" else ("4300 digits" in p["message"])
    assert child.report()["checkpoint"]["status"] == "corrupt"


def test_json_index_nested(artefact):
    """The sharded weights' index nested 100,000 deep: bad_json on the index, not a crash."""
    run = artefact("hf_sharded")
    ckpt = sorted(run.glob("checkpoint-*"))[-1]
    index = ckpt / "model.safetensors.index.json"
    index.write_bytes(JSON_CASES["nested_100k"])
    assert finding(verify(ckpt), index)["kind"] == "bad_json"


def test_loss_watch_reads_the_same_json_bounded(artefact):
    """``once`` (with its loss watch reading every trainer_state.json) gives a verdict, not exit 3."""
    run = artefact("hf_full")
    (run / "checkpoint-6" / "trainer_state.json").write_bytes(JSON_CASES["nested_100k"])
    (run / "checkpoint-4" / "trainer_state.json").write_bytes(JSON_CASES["digits_5000"])
    child = run_bounded("once", "--json", "--settle", "0", str(run))
    assert child.status == 1, child.err[-2000:]
    verdicts = {Path(v["path"]).name: v for v in child.report()["runs"][0]["checkpoints"]}
    assert verdicts["checkpoint-6"]["status"] == verdicts["checkpoint-4"]["status"] == "corrupt"
    assert child.report()["runs"][0]["latest_resumable"].endswith("checkpoint-2")


# --------------------------------------------------------------------------------------------------
# safetensors


def test_safetensors_header_of_empty_objects(artefact):
    """A 40 MB header of ``{}`` (1.09 GB of dicts once parsed) is exceeds_limits, within 1 GiB of RSS."""
    run = artefact("hf_full")
    target = run / "checkpoint-4" / "model.safetensors"
    header = b"[" + b"{}," * 13_000_000 + b"{}]"
    target.write_bytes(struct.pack("<Q", len(header)) + header)
    p = finding(verify(target.parent), target)
    assert p["kind"] == "exceeds_limits" and "max_memory_per_file" in p["message"]


def test_safetensors_header_too_slow_for_a_lower_limit(artefact, tmp_path):
    """A valid header of 150,000 tensors takes more CPU than ``max_seconds_per_file = 0.05`` allows:
    the configured key stops the read; the default limit reads it."""
    run = artefact("hf_full")
    target = run / "checkpoint-4" / "model.safetensors"
    n = 150_000
    entries = ",".join(f'"t{i}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{i + 1}]}}' for i in range(n))
    header = ("{" + entries + "}").encode()
    target.write_bytes(struct.pack("<Q", len(header)) + header + bytes(n))
    config = tmp_path / "ckptwatch.toml"
    config.write_text(f'[service]\nmax_seconds_per_file = 0.05\n[[watch]]\npath = "{run}"\n')
    child = run_bounded("once", "--json", "--settle", "0", "--no-loss", "--config", str(config))
    assert child.status == 1, child.err[-2000:]
    verdicts = {Path(v["path"]).name: v for v in child.report()["runs"][0]["checkpoints"]}
    found = [p for p in verdicts["checkpoint-4"]["problems"] if p["file"] == str(target)]
    assert [p["kind"] for p in found] == ["exceeds_limits"]
    assert "max_seconds_per_file" in found[0]["message"]
    assert not any(p["file"] == str(target) for p in problems_of(verify(target.parent)))


# --------------------------------------------------------------------------------------------------
# torch zip container (zip64 end records)


def _zip64_records(data: bytes) -> tuple[int, int]:
    """(offset of the zip64 end record, offset of the zip64 locator) of a torch.save zip."""
    loc = data.rfind(b"PK\x06\x07")
    z64 = data.rfind(b"PK\x06\x06")
    assert loc > z64 >= 0, "torch.save always writes zip64 end records"
    return z64, loc


@pytest.mark.parametrize(("case", "field", "value", "words"), [
    ("central directory of 1 TB", "cd_size", 1 << 40, "1099511627776-byte central directory"),
    ("locator offset 2^64-1", "locator", (1 << 64) - 1, "past the end"),
    ("locator past end of file", "locator", None, "past the end"),
    ("2^64-1 records", "count", (1 << 64) - 1, "records"),
])
def test_zip64_end_records(artefact, case, field, value, words):
    """A torch zip whose zip64 end records torch.load refuses is bad_zip, named (not complete, no exit 3)."""
    torch = pytest.importorskip("torch")
    run = artefact("hf_full")
    target = writable(run / "checkpoint-4" / "optimizer.pt")
    data = bytearray(target.read_bytes())
    z64, loc = _zip64_records(bytes(data))
    if field == "cd_size":
        struct.pack_into("<Q", data, z64 + 40, value)
    elif field == "count":
        struct.pack_into("<QQ", data, z64 + 24, value, value)
    else:
        struct.pack_into("<Q", data, loc + 8, len(data) + 1000 if value is None else value)
    target.write_bytes(bytes(data))
    with pytest.raises(Exception):  # torch's own reader refuses this file
        torch.load(target, weights_only=True)
    p = finding(verify(target.parent), target)
    assert p["kind"] == "bad_zip" and words in p["message"], case


# --------------------------------------------------------------------------------------------------
# MindSpore


def test_mindspore_dims_overflow_a_float(artefact):
    """Dims whose product overflows a float (2^63-1, 20 times: about 2^1260) are size_mismatch, named."""
    from tests.builders.synthetic import write_mindspore_ckpt

    run = artefact("mindspore")
    target = run / "checkpoint" / "rank_0" / "llama2_7b_rank_0-1_15.ckpt"
    os.chmod(target, 0o644)
    target.unlink()
    write_mindspore_ckpt(target, [("model.w", [(1 << 63) - 1] * 20, "Float32", b"\0" * 4)], crc=True)
    child = run_bounded("once", "--json", "--settle", "0", str(run))
    assert child.status in (0, 1), child.err[-2000:]
    assert child.cpu < CPU_BOUND and child.maxrss < RSS_BOUND
    problems = [p for r in child.report()["runs"] for v in r["checkpoints"] for p in v["problems"]
                if p["file"] == str(target)]
    assert [p["kind"] for p in problems] == ["size_mismatch"]


# --------------------------------------------------------------------------------------------------
# Integers over 4,300 digits in messages: DCP sizes, torch shapes, Lightning's global_step


def _unframed(data: bytes) -> bytes:
    """The pickle without its FRAME opcodes (optional in protocol 4), so opcodes can be edited freely."""
    out, last = [], 0
    for op, _arg, pos in pickletools.genops(data):
        if op.name == "FRAME":
            out.append(data[last:pos])
            last = pos + 9
    out.append(data[last:])
    return b"".join(out)


def _long4(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8b" + struct.pack("<i", len(raw)) + raw


def _replace_int_after(data: bytes, marker: str, replacement: bytes, skip: int = 0) -> bytes:
    """Replace the ``skip``-th integer opcode after the string ``marker`` with ``replacement``."""
    ops = list(pickletools.genops(data))
    at = next(i for i, (op, arg, _) in enumerate(ops) if arg == marker and "UNICODE" in op.name)
    ints = [(pos, ops[j + 1][2] if j + 1 < len(ops) else len(data))
            for j, (op, _arg, pos) in enumerate(ops[at:], start=at) if op.name.startswith(("BININT", "LONG"))]
    pos, end = ints[skip]
    return data[:pos] + replacement + data[end:]


@pytest.mark.parametrize(("what", "marker", "kind"), [
    ("storage length", "length", "truncated"),
    ("tensor size", "Size", "size_mismatch"),
])
def test_dcp_integers_over_4300_digits(artefact, what, marker, kind):
    """A DCP ``.metadata`` holding a 5,001-digit offset or size gives a finding that describes the number."""
    run = artefact("dcp")
    meta = writable(run / "step_300" / ".metadata")
    meta.write_bytes(_replace_int_after(_unframed(meta.read_bytes()), marker, _long4(HUGE)))
    child = verify(meta.parent)
    assert kind in [p["kind"] for p in problems_of(child)], what
    assert any("-digit integer" in p["message"] for p in problems_of(child))


def test_dcp_fqn_nested_200k_deep(artefact):
    """A storage entry whose fqn is a list nested 200,000 deep is a malformed entry (bad_header)."""
    run = artefact("dcp")
    meta = writable(run / "step_300" / ".metadata")
    data = _unframed(meta.read_bytes())
    ops = list(pickletools.genops(data))
    at = next(i for i, (op, arg, _) in enumerate(ops) if arg == "fqn" and i > 0 and
              any(a == "MetadataIndex" for _, a, _ in ops[max(0, i - 12):i]))
    pos, end = ops[at + 2][2], ops[at + 3][2]  # the value after the key (and its MEMOIZE, if any)
    if ops[at + 1][0].name != "MEMOIZE":
        pos, end = ops[at + 1][2], ops[at + 2][2]
    n = 200_000
    meta.write_bytes(data[:pos] + b"]" * n + b"a" * (n - 1) + data[end:])
    p = finding(verify(meta.parent), meta)
    assert p["kind"] == "bad_header" and "malformed" in p["message"]


def test_dcp_metadata_over_the_memory_limit(artefact, tmp_path):
    """A ``.metadata`` of 2 MB is more than ``max_memory_per_file = "16M"`` lets walk: exceeds_limits,
    named; under the default limit the same file is judged on its content (trailing data)."""
    run = artefact("dcp")
    meta = writable(run / "step_300" / ".metadata")
    meta.write_bytes(meta.read_bytes() + b"\0" * (2 << 20))
    config = tmp_path / "ckptwatch.toml"
    config.write_text(f'[service]\nmax_memory_per_file = "16M"\n[[watch]]\npath = "{run}"\n')
    child = run_bounded("once", "--json", "--settle", "0", "--no-loss", "--config", str(config))
    assert child.status == 1, child.err[-2000:]
    found = [p for v in child.report()["runs"][0]["checkpoints"] for p in v["problems"]
             if p["file"] == str(meta)]
    assert [p["kind"] for p in found] == ["exceeds_limits"] and "max_memory_per_file" in found[0]["message"]
    assert finding(verify(meta.parent), meta)["kind"] == "trailing_data"


def _lightning_edit(ckpt: Path, edit) -> None:
    """Rewrite the ``data.pkl`` of a Lightning ``.ckpt`` (a torch.save zip) with ``edit(bytes)``."""
    src = ckpt.read_bytes()
    tmp = ckpt.with_suffix(".tmp")
    with zipfile.ZipFile(ckpt) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info.filename, edit(data) if info.filename.endswith("/data.pkl") else data)
    assert tmp.read_bytes() != src
    os.replace(tmp, ckpt)


def test_lightning_global_step_over_4300_digits(artefact):
    """A Lightning checkpoint whose global_step has 5,001 digits is bad_pickle, named; no exit 3."""
    run = artefact("lightning")
    ckpt = writable(run / "checkpoints" / "epoch=0-step=8.ckpt")
    _lightning_edit(ckpt, lambda d: _replace_int_after(_unframed(d), "global_step", _long4(HUGE)))
    p = finding(verify(ckpt), ckpt)
    assert p["kind"] == "bad_pickle" and "5001-digit integer" in p["message"]


def test_tensor_shape_over_4300_digits(artefact):
    """A tensor whose shape holds a 5,001-digit integer is size_mismatch, the number described."""
    run = artefact("lightning")
    ckpt = writable(run / "checkpoints" / "epoch=0-step=8.ckpt")

    def edit(data: bytes) -> bytes:
        data = _unframed(data)
        ops = list(pickletools.genops(data))
        first = next(i for i, (op, _a, _p) in enumerate(ops) if op.name == "BINPERSID")
        ints = [j for j in range(first + 1, len(ops)) if ops[j][0].name.startswith("BININT")]
        size_at = ints[1]  # after the storage offset: the first dimension of the size
        return data[:ops[size_at][2]] + _long4(HUGE) + data[ops[size_at + 1][2]:]

    _lightning_edit(ckpt, edit)
    p = finding(verify(ckpt), ckpt)
    assert p["kind"] == "size_mismatch" and "integer of 16610 bits" in p["message"]



# --------------------------------------------------------------------------------------------------
# Pickles of keys with equal hashes (C dict insertion cannot be interrupted)


MERSENNE_61 = 2 ** 61 - 1  # hash(k * MERSENNE_61) == 0 for every int k


def _colliding_dict_stream(n: int) -> bytes:
    """A pickle of ``{k * (2**61 - 1): 0 for k in 1..n}``, written opcode by opcode as a pickler would
    (pickling the real dict here would itself take minutes): SETITEMS in batches of 1,000."""
    out = bytearray(b"\x80\x02}q\x00(")
    for k in range(1, n + 1):
        v = k * MERSENNE_61
        raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
        out += b"\x8a" + bytes([len(raw)]) + raw + b"K\x00"
        if k % 1000 == 0:
            out += b"u("
    return bytes(out + b"u.")


def _replace_data_pkl(target: Path, stream: bytes) -> None:
    """Rewrite a real torch.save zip with ``stream`` as its data.pkl, every other record kept."""
    with zipfile.ZipFile(target) as z:
        records = [(i, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(target, "w") as z:
        for info, data in records:
            z.writestr(info, stream if info.filename.endswith("/data.pkl") else data)


def test_60000_hash_colliding_dict_keys_stop_at_the_file_limit(artefact, tmp_path):
    """The 780 KB optimizer.pt whose dict keys all hash to 0 took 25-36 s per pass: now the guarded
    walker inserts key by key and stops at ``max_seconds_per_file`` (1 s here) as exceeds_limits."""
    run = artefact("hf_full")
    target = run / "checkpoint-4" / "optimizer.pt"
    stream = _colliding_dict_stream(60_000)
    assert 700_000 < len(stream) < 900_000
    _replace_data_pkl(target, stream)
    config = tmp_path / "ckptwatch.toml"
    config.write_text(f'[service]\nmax_seconds_per_file = 1\n[[watch]]\npath = "{run}"\n')
    child = run_bounded("once", "--json", "--settle", "0", "--no-loss", "--config", str(config))
    assert child.status == 1, child.err[-2000:]
    assert child.cpu < 1 + 3 + 3, f"{child.cpu:.1f} s of CPU"  # the limit, the interpreter, the run
    verdicts = {Path(v["path"]).name: v for v in child.report()["runs"][0]["checkpoints"]}
    found = [p for p in verdicts["checkpoint-4"]["problems"] if p["file"] == str(target)]
    assert [p["kind"] for p in found] == ["exceeds_limits"]
    assert "building a pickled dict" in found[0]["message"]


def test_a_few_thousand_colliding_keys_stay_on_the_fast_walker_and_are_judged(tmp_path):
    """Below the collision-material threshold the C walker runs; 3,000 colliding keys cost < 1 s."""
    from ckptwatch.formats.pickle_stub import MAX_COLLISION_MATERIAL, _scan, walk_pickle

    stream = _colliding_dict_stream(3000)
    assert _scan(stream, 0, "x")[2] == 3000 < MAX_COLLISION_MATERIAL
    walk = walk_pickle(stream, what="x")
    assert len(walk.obj) == 3000


def test_guarded_walker_reads_real_checkpoints_like_the_c_walker(artefact, monkeypatch):
    """Every pickle of a real Trainer checkpoint walks to the same result on both walkers."""
    import ckptwatch.formats.pickle_stub as stub

    run = artefact("hf_full")
    seen = 0
    for path in sorted((run / "checkpoint-4").iterdir()):
        if not zipfile.is_zipfile(path):
            continue
        with zipfile.ZipFile(path) as z:
            data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
        fast = stub.walk_pickle(data, what=path.name)
        monkeypatch.setattr(stub, "MAX_COLLISION_MATERIAL", -1)
        guarded = stub.walk_pickle(data, what=path.name)
        monkeypatch.undo()
        assert (guarded.globals, guarded.end, guarded.protocol) == (fast.globals, fast.end, fast.protocol)
        assert guarded.storages == fast.storages and guarded.tensors == fast.tensors
        assert show(guarded.obj, 100_000) == show(fast.obj, 100_000)
        seen += 1
    assert seen >= 4  # optimizer, scheduler, rng state, training args


def test_a_legitimate_list_of_20000_floats_is_walked_by_the_guarded_walker(tmp_path):
    """Floats are collision material, but a callback's loss history is no attack: walked, not refused."""
    import pickle

    from ckptwatch.formats.pickle_stub import MAX_COLLISION_MATERIAL, _scan, walk_pickle

    history = {"losses": [1.0 / (i + 1) for i in range(20_000)], "frozen": frozenset({1.5, 2.5})}
    stream = pickle.dumps(history, protocol=4)
    assert _scan(stream, 0, "x")[2] > MAX_COLLISION_MATERIAL
    walk = walk_pickle(stream, what="x")
    assert walk.obj == history
