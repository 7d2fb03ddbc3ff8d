"""Pickles that would run code on load, and pickle-shaped hostile inputs: real files, written here.

The attack files are made the way an attacker makes them (``torch.save`` of an object whose
``__reduce__`` names ``exec``, zip and legacy) and judged by the CLI a user runs; their payload creates a
marker file, which must never appear. One stream per code-execution family checks the policy, and the
scanner the Hugging Face Hub runs (picklescan) must never call a file dangerous that we pass.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from ckptwatch.filecheck import check_file
from ckptwatch.formats.pickle_policy import WEIGHTS_ONLY_GLOBALS, judge_globals
from ckptwatch.formats.torchzip import LEGACY_MAGIC, LEGACY_PROTOCOL, check_torch_file
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.vocabulary import severity_of
from tests.helpers import run_cli


class _Exec:
    """What an attacker pickles: loading it runs ``exec`` of code that writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _save_attack(path: Path, marker: Path, fmt: str) -> None:
    import torch

    torch.save({"transformer.wte.weight": torch.ones(4), "payload": _Exec(marker)}, path,
               _use_new_zipfile_serialization=fmt == "zip")


def _kinds(fc) -> list[str]:
    return [p.kind for p in fc.problems]


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------------
# The attack files, inside a real Trainer checkpoint


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_exec_payload_in_trainer_checkpoint_is_unsafe_and_never_runs(artefact, tmp_path, fmt):
    """``once``, ``verify --deep``, ``latest`` on a checkpoint whose pytorch_model.bin runs exec on load."""
    root = artefact("hf_full")
    ckpt = root / "checkpoint-6"
    marker = tmp_path / "pwned"
    (ckpt / "model.safetensors").unlink()
    weights = ckpt / "pytorch_model.bin"
    _save_attack(weights, marker, fmt)
    stamp = time.time() - 3600
    for f in [*ckpt.iterdir(), ckpt]:
        os.utime(f, (stamp, stamp))

    once = run_cli("once", "--settle", "0", str(root))
    assert once.returncode == 1, once.stdout + once.stderr
    line = next(ln for ln in once.stdout.splitlines() if "unsafe_pickle" in ln)
    assert str(weights) in line and "builtins.exec" in line
    assert "checkpoint-6" in once.stdout and "corrupt" in once.stdout

    report = json.loads(run_cli("once", "--json", "--settle", "0", str(root)).stdout)
    (run,) = report["runs"]
    v6 = next(c for c in run["checkpoints"] if c["path"].endswith("checkpoint-6"))
    assert v6["status"] == "corrupt"
    (p,) = [p for p in v6["problems"] if p["kind"] == "unsafe_pickle"]
    assert p["file"] == str(weights) and "builtins.exec" in p["message"] and p["severity"] == "corrupt"
    assert run["latest_resumable"] == str(root / "checkpoint-4")

    verify = run_cli("verify", "--deep", "--settle", "0", str(ckpt))
    assert verify.returncode == 1 and "unsafe_pickle" in verify.stdout and "builtins.exec" in verify.stdout
    latest = run_cli("latest", "--settle", "0", str(root))
    assert latest.stdout.strip() == str(root / "checkpoint-4")
    assert not marker.exists(), "judging the checkpoint ran the pickle"

    # The file is a real attack: a plain torch.load in a child process runs the payload.
    proof = tmp_path / "proof"
    proof_file = tmp_path / f"proof-{fmt}.bin"
    _save_attack(proof_file, proof, fmt)
    load = f"import torch; torch.load({str(proof_file)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", load], check=True, capture_output=True, timeout=120)
    assert proof.exists()


# --------------------------------------------------------------------------------------------------
# One stream per code-execution family (and the names that reach them through other modules)

FAMILIES = [
    ("builtins", "exec"), ("builtins", "eval"), ("builtins", "compile"), ("builtins", "getattr"),
    ("builtins", "__import__"), ("builtins", "open"), ("builtins", "breakpoint"), ("__builtin__", "eval"),
    ("builtins", "object.__subclasses__"), ("os", "system"), ("posix", "system"), ("nt", "system"),
    ("os.path", "join"), ("subprocess", "Popen"), ("subprocess", "check_output"),
    ("importlib", "import_module"), ("runpy", "run_path"), ("pickle", "loads"), ("_pickle", "loads"),
    ("marshal", "loads"), ("types", "FunctionType"), ("types", "CodeType"), ("ctypes", "CDLL"),
    ("socket", "create_connection"), ("shutil", "rmtree"), ("operator", "attrgetter"),
    ("operator", "methodcaller"), ("_operator", "attrgetter"), ("sys", "exit"),
    ("code", "InteractiveConsole"), ("pty", "spawn"), ("webbrowser", "open"), ("functools", "partial"),
    ("torch.serialization", "load"),
    ("torch.storage", "_load_from_bytes"), ("transformers.training_args", "os.system"),
    ("torch.serialization", "__builtins__.exec"), ("asyncio", "subprocess.create_subprocess_shell"),
]


def _reduce_stream(module: str, name: str, arg: str = "id") -> bytes:
    """``module.name(arg)`` as pickle opcodes (protocol 4, so dotted names resolve as in a real load)."""
    a = arg.encode()
    return (b"\x80\x04c" + module.encode() + b"\n" + name.encode() + b"\n"
            + b"X" + len(a).to_bytes(4, "little") + a + b"\x85R.")


def _torch_zip(path: Path, data_pkl: bytes, method: int = zipfile.ZIP_STORED) -> Path:
    """A zip laid out as torch.save writes one, holding ``data_pkl``."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl, compress_type=method)
        z.writestr("archive/byteorder", b"little")
        z.writestr("archive/version", b"3\n")
    return path


@pytest.mark.parametrize(("module", "name"), FAMILIES, ids=[f"{m}.{n}" for m, n in FAMILIES])
def test_each_family_is_unsafe_pickle_naming_the_global(tmp_path, module, name):
    p = _torch_zip(tmp_path / "optimizer.pt", _reduce_stream(module, name))
    fc = check_torch_file(str(p))
    assert _kinds(fc) == ["unsafe_pickle"]
    shown = "builtins" if module == "__builtin__" else module
    assert f"references {shown}.{name} (" in fc.problems[0].message and fc.problems[0].file == str(p)


def test_payload_after_garbage_is_still_named(tmp_path):
    """A payload followed by a malformed tail: unsafe_pickle (the global a real load resolves first)."""
    stream = _reduce_stream("os", "system")[:-1] + b"\x85\x85\x85."  # TUPLE1 on an empty stack
    fc = check_torch_file(str(_torch_zip(tmp_path / "x.pt", stream)))
    assert "unsafe_pickle" in _kinds(fc) and "os.system" in fc.problems[0].message


def test_unsafe_global_in_dcp_metadata(tmp_path):
    """DCP loads .metadata with plain pickle.load: a payload there is unsafe_pickle too."""
    from ckptwatch.formats.dcp import check_dcp_dir

    (tmp_path / ".metadata").write_bytes(_reduce_stream("subprocess", "getoutput"))
    fc = check_dcp_dir(str(tmp_path))
    assert "unsafe_pickle" in [p.kind for p in fc.problems]
    assert any("subprocess.getoutput" in p.message for p in fc.problems)


def test_harmless_globals_are_not_unsafe():
    ok = ["collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "argparse.Namespace",
          "transformers.training_args.TrainingArguments", "numpy.core.multiarray._reconstruct",
          "types.SimpleNamespace", "posixpath.join", "builtins.set", "pathlib.PosixPath", "enum.Enum",
          "accelerate.state.PartialState", "torch.optim.adamw.AdamW", "copyreg._reconstructor"]
    assert judge_globals(ok).unsafe == ()


# --------------------------------------------------------------------------------------------------
# weights_only: the advisory mirrors torch's own allow-list, and is not an error


def test_weights_only_table_is_torch_2_13s():
    from torch._weights_only_unpickler import _get_allowed_globals

    assert WEIGHTS_ONLY_GLOBALS == frozenset(_get_allowed_globals())


def test_real_training_args_is_advisory_and_torch_agrees(artefact):
    """transformers' training_args.bin: needs_weights_only_false (a warning), exactly as torch.load says."""
    import torch

    ckpt = artefact("hf_full") / "checkpoint-2"
    args = check_file(str(ckpt / "training_args.bin"), CheckOptions())
    (p,) = args.problems
    assert p.kind == "needs_weights_only_false" and severity_of(p.kind).value == "warning"
    assert "needs weights_only=False: transformers.training_args.TrainingArguments" in p.message
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt / "training_args.bin", weights_only=True)
    optim = check_file(str(ckpt / "optimizer.pt"), CheckOptions())
    assert optim.problems == ()
    torch.load(ckpt / "optimizer.pt", weights_only=True)


# --------------------------------------------------------------------------------------------------
# picklescan (the Hugging Face Hub's scanner): every file it calls dangerous, we flag


def test_every_file_picklescan_flags_we_flag(tmp_path):
    from picklescan.scanner import SafetyLevel, scan_file_path

    files = [_torch_zip(tmp_path / f"f{i}.pt", _reduce_stream(m, n)) for i, (m, n) in enumerate(FAMILIES)]
    for fmt in ("zip", "legacy"):
        _save_attack(tmp_path / f"attack-{fmt}.bin", tmp_path / "never", fmt)
        files.append(tmp_path / f"attack-{fmt}.bin")
    dangerous = 0
    for f in files:
        res = scan_file_path(str(f))
        if any(g.safety == SafetyLevel.Dangerous for g in res.globals):
            dangerous += 1
            assert "unsafe_pickle" in _kinds(check_torch_file(str(f))), f
    assert dangerous >= 30  # the comparison means something only if picklescan flagged most of them
    assert not (tmp_path / "never").exists()


# --------------------------------------------------------------------------------------------------
# Pickle-shaped hostile inputs: a finding, in bounded time and memory, never an exception


def _legacy(obj_stream: bytes, keys: bytes = pickle.dumps([], protocol=2)) -> bytes:
    sys_info = {"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return (pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(LEGACY_PROTOCOL, protocol=2)
            + pickle.dumps(sys_info, protocol=2) + obj_stream + keys)


def test_legacy_pickle_nested_200000_deep_in_a_trainer_checkpoint(artefact):
    """A legacy scheduler.pt whose protocol field is a list nested 200,000 deep: a finding, not exit 3."""
    root = artefact("hf_full")
    n = 200_000
    deep = b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b"."
    target = root / "checkpoint-6" / "scheduler.pt"
    magic, keys = pickle.dumps(LEGACY_MAGIC, protocol=2), pickle.dumps([], protocol=2)
    target.write_bytes(magic + deep + deep + deep + keys)
    r = run_cli("once", "--json", "--settle", "0", str(root), timeout=120)
    assert r.returncode == 1, r.stderr
    (run,) = json.loads(r.stdout)["runs"]
    v6 = next(c for c in run["checkpoints"] if c["path"].endswith("checkpoint-6"))
    assert [p["kind"] for p in v6["problems"] if p["file"] == str(target)] == ["bad_header"]


def test_legacy_protocol_field_as_a_deep_or_huge_value_is_named_briefly(tmp_path):
    for proto in (b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".", pickle.dumps(10 ** 5000, protocol=2)):
        data = (pickle.dumps(LEGACY_MAGIC, protocol=2) + proto + pickle.dumps({}, protocol=2)
                + pickle.dumps({}, protocol=2) + pickle.dumps([], protocol=2))
        p = tmp_path / "x.pt"
        p.write_bytes(data)
        fc = check_torch_file(str(p))
        assert _kinds(fc) == ["bad_header"] and len(fc.problems[0].message) < 400


def test_bzip2_bomb_record_costs_no_memory(tmp_path):
    """training_args.bin whose data.pkl is 200 MB of bzip2 in 177 bytes: bad_zip, nothing inflated."""
    import bz2

    p = tmp_path / "training_args.bin"
    payload = bz2.compress(b"\x00" * (200 << 20), 9)
    # a bzip2 record with a small declared size, as a hostile writer sets it: stored, then relabelled
    with zipfile.ZipFile(p, "w") as z:
        info = zipfile.ZipInfo("archive/data.pkl")
        info.compress_type = zipfile.ZIP_STORED
        z.writestr(info, payload)
    blob = bytearray(p.read_bytes())
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # method field: local header +8, central header +10
        at = blob.find(sig)
        off = at + (8 if sig == b"PK\x03\x04" else 10)
        blob[off:off + 2] = (12).to_bytes(2, "little")
    p.write_bytes(bytes(blob))
    before = _maxrss_mib()
    for deep in (False, True):
        fc = check_torch_file(str(p), deep=deep)
        assert _kinds(fc) == ["bad_zip"] and "compressed with method 12" in fc.problems[0].message
    assert _maxrss_mib() - before < 50


def test_repr_bomb_in_a_persistent_id(tmp_path):
    """A 7 KB-class stream whose persistent id's repr is 2**40 items: bad_pickle at once."""
    out = bytearray(b"\x80\x02]q\x00")  # memo 0: []
    for i in range(1, 41):
        out += b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86q" + bytes([i])  # (prev, prev)
    out += b"\x85Q."  # (L40,) as a persistent id
    p = _torch_zip(tmp_path / "x.pt", bytes(out))
    t0, before = time.monotonic(), _maxrss_mib()
    fc = check_torch_file(str(p))
    assert _kinds(fc) == ["bad_pickle"] and "persistent id of kind a tuple" in fc.problems[0].message
    assert time.monotonic() - t0 < 5 and _maxrss_mib() - before < 100


def test_deflated_pickle_with_a_64m_memo_index(tmp_path):
    """64 KB of deflate that inflates to a 64 MB stream asking for memo slot 64M: refused before the memo."""
    stream = b"\x80\x02X" + (64 << 20).to_bytes(4, "little") + b"\x00" * (64 << 20) + b"r" \
        + (64 << 20).to_bytes(4, "little") + b"."
    p = _torch_zip(tmp_path / "x.pt", stream, zipfile.ZIP_DEFLATED)
    assert p.stat().st_size < 128 << 10
    before = _maxrss_mib()
    fc = check_torch_file(str(p))
    assert _kinds(fc) == ["bad_pickle"] and "memo index 67108864" in fc.problems[0].message
    assert _maxrss_mib() - before < 400  # the inflated 64 MB stream itself, not a 1 GB memo


def _tensor_stream(size_token: bytes, numel_token: bytes, tail: bytes = b"") -> bytes:
    """``_rebuild_tensor_v2(storage('0', numel), 0, (size,), (1,), False, OrderedDict())`` by hand."""
    return (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
            b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpu" + numel_token + b"tQK\x00" + size_token
            + b"\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR" + tail + b".")


def _long(v: int) -> bytes:
    b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8b" + len(b).to_bytes(4, "little") + b


def test_integers_over_4300_digits_in_shape_and_numel(tmp_path):
    huge = 10 ** 5000
    p = _torch_zip(tmp_path / "x.pt", _tensor_stream(_long(huge), b"K\x04"))
    with zipfile.ZipFile(p, "a") as z:
        z.writestr("archive/data/0", b"\0" * 16)
    fc = check_torch_file(str(p))
    assert _kinds(fc) == ["size_mismatch"] and "bits" in fc.problems[0].message
    q = _torch_zip(tmp_path / "y.pt", _tensor_stream(b"K\x04", _long(huge)))
    with zipfile.ZipFile(q, "a") as z:
        z.writestr("archive/data/0", b"\0" * 16)
    fc = check_torch_file(str(q))
    assert _kinds(fc) == ["size_mismatch"] and "bits" in fc.problems[0].message


def test_build_cannot_rewrite_a_validated_tensor_record(tmp_path):
    """BUILD on the walker's TensorRef (dataclasses would give it a __setstate__): bad_pickle."""
    state = b"(NK\x00" + _long(10 ** 5000) + b"\x85K\x01\x85\x89Nt"  # a state tuple of all its fields
    p = _torch_zip(tmp_path / "x.pt", _tensor_stream(b"K\x04", b"K\x04", state + b"b"))
    fc = check_torch_file(str(p))
    assert _kinds(fc) == ["bad_pickle"] and "BUILD applied to a TensorRef" in fc.problems[0].message


def _in_child(fn) -> tuple[object, float]:
    """``fn()`` in a forked child: its result and how many MiB the child's peak RSS rose above this
    process's RSS at the fork (a high-water mark of this process would hide a rise after a larger test)."""
    import pickle as std_pickle

    with open("/proc/self/statm") as f:
        at_fork = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.write(w, std_pickle.dumps(fn()))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _pid, _status, usage = os.wait4(pid, 0)
    return std_pickle.loads(data), usage.ru_maxrss / 1024 - at_fork


@pytest.mark.parametrize("shape", ["zip", "legacy", "legacy 2 GB string", "pickle 2 GB string"])
def test_sparse_2gb_torch_file(tmp_path, shape):
    """A sparse 2 GB optimizer.pt (a zip whose directory spans the hole, a legacy file followed by the
    hole, a legacy or plain pickle opening a string as long as the hole): a finding in bounded memory,
    never the hole read (2.1 GB RSS once) nor a 256 MiB prefix read and copied (513 MiB)."""
    import struct

    p = tmp_path / "optimizer.pt"
    with open(p, "wb") as f:
        if shape == "legacy":
            f.write(_legacy(pickle.dumps({}, protocol=2)))
        elif shape == "legacy 2 GB string":  # the object pickle: BINUNICODE8 of ~2 GB, inside the file
            f.write(_legacy(b"\x80\x04\x8d" + struct.pack("<Q", (2 << 30) - 4096)))
        elif shape == "pickle 2 GB string":  # a plain pickle whose string runs past the end of the file
            f.write(b"\x80\x02X" + struct.pack("<I", (2 << 30) + 100))
        else:
            f.write(b"PK\x03\x04" + b"\0" * 26)
        f.truncate(2 << 30)
        if shape == "zip":  # an end record whose directory spans the whole hole
            f.seek(0, 2)
            f.write(b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, (2 << 30) - 64, 16, 0))
    t0 = time.monotonic()
    kinds, rise = _in_child(lambda: _kinds(check_file(str(p), CheckOptions())))  # as a layout checks it
    assert kinds and time.monotonic() - t0 < 10
    assert rise < 300, f"{rise:.0f} MiB"
    expected = {"zip": "bad_zip", "legacy": "trailing_data", "legacy 2 GB string": "bad_pickle",
                "pickle 2 GB string": "truncated"}[shape]
    assert expected in kinds, kinds
