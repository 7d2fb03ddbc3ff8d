"""The stub unpickler: walks any pickle, runs none of it, and stays linear on hostile streams."""

from __future__ import annotations

import collections
import dataclasses
import enum
import io
import os
import pickle
import resource
import struct
import sys
import time
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptwatch.formats import pickle_stub
from ckptwatch.formats._io import FormatError
from ckptwatch.formats.pickle_stub import (
    PickleTruncated,
    StorageRef,
    Stub,
    TensorRef,
    TorchDtype,
    get,
    walk_pickle,
)

# --------------------------------------------------------------------------------------------------
# Never executes anything


class _OpenForWrite:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


class _System:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _EvalCall:
    def __reduce__(self):
        return (eval, ("__import__('os').system('touch /tmp/ckptwatch-eval-pwned')",))


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_reduce_payloads_are_recorded_never_run(tmp_path, protocol):
    """A pickle whose __reduce__ opens a file for writing or runs os.system is walked; no file appears."""
    opened, touched = tmp_path / "opened", tmp_path / "touched"
    data = pickle.dumps(
        {"a": _OpenForWrite(str(opened)), "b": [_System(str(touched))], "c": _EvalCall()}, protocol=protocol
    )
    walk = walk_pickle(data, what="evil.pkl")
    assert not opened.exists() and not touched.exists()
    assert not os.path.exists("/tmp/ckptwatch-eval-pwned")
    assert {"io.open", "builtins.eval"} <= walk.globals
    assert any(g.endswith(".system") for g in walk.globals)  # posix.system
    a = walk.obj["a"]
    assert isinstance(a, Stub) and a.stub_global == "io.open" and a.stub_args == (str(opened), "w")


def test_stub_classes_are_fresh_per_walk():
    """Stubs of one walk cannot leak state into the next: each walk gets its own stub classes."""
    data = pickle.dumps(_OpenForWrite("/nonexistent/x"), protocol=2)
    a, b = walk_pickle(data, what="a").obj, walk_pickle(data, what="b").obj
    assert type(a) is not type(b)


# --------------------------------------------------------------------------------------------------
# A TrainingArguments-like object graph (the shape of transformers' training_args.bin)


def _fake_module(name: str, **members) -> types.ModuleType:
    mod = types.ModuleType(name)
    for k, v in members.items():
        v.__module__, v.__qualname__ = name, k
        setattr(mod, k, v)
    return mod


@pytest.fixture
def training_args_pickle(monkeypatch):
    """Bytes of a pickled graph with the classes of transformers' TrainingArguments (pickled by name)."""

    class IntervalStrategy(enum.Enum):
        STEPS = "steps"

    class DistributedType(enum.StrEnum):
        MULTI_GPU = "MULTI_GPU"

    class PartialState:  # accelerate keeps its fields in a shared __dict__
        _shared_state: dict = {}

        def __init__(self, n: int) -> None:
            self.__dict__ = self._shared_state
            self.num_processes = n
            self.process_index = 0
            self.distributed_type = DistributedType.MULTI_GPU

    @dataclasses.dataclass
    class TrainingArguments:
        output_dir: str
        save_steps: int = 500
        save_only_model: bool = False
        save_strategy: IntervalStrategy = IntervalStrategy.STEPS
        distributed_state: PartialState | None = None

    for pkg in ("transformers", "accelerate", "accelerate.utils"):  # so pickle never imports the real ones
        monkeypatch.setitem(sys.modules, pkg, types.ModuleType(pkg))
    for mod in (
        _fake_module("transformers.trainer_utils", IntervalStrategy=IntervalStrategy),
        _fake_module("accelerate.utils.dataclasses", DistributedType=DistributedType),
        _fake_module("accelerate.state", PartialState=PartialState),
        _fake_module("transformers.training_args", TrainingArguments=TrainingArguments),
    ):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    ta = TrainingArguments("out/run", save_steps=50, save_only_model=True, distributed_state=PartialState(4))
    return pickle.dumps(ta, protocol=2)


def test_training_arguments_like_graph_yields_fields(training_args_pickle):
    """get() reads dataclass fields, nested state and enum values out of a TrainingArguments-like pickle."""
    walk = walk_pickle(training_args_pickle, what="training_args.bin")
    ta = walk.obj
    assert ta.stub_global == "transformers.training_args.TrainingArguments"
    assert get(ta, "output_dir") == "out/run"
    assert get(ta, "save_steps") == 50 and get(ta, "save_only_model") is True
    assert get(ta, "distributed_state", "num_processes") == 4
    assert ta.distributed_state.process_index == 0  # attribute access to pickled state
    assert get(ta, "save_strategy", 0) == "steps"  # an enum member is a stub called with its value
    assert get(ta, "no_such_field", default="dflt") == "dflt"
    assert get(ta, "distributed_state", "num_processes", "deeper") is None
    assert "accelerate.state.PartialState" in walk.globals


# --------------------------------------------------------------------------------------------------
# torch structures (allow-list)


def test_torch_state_dict_gives_storages_and_views():
    """A real torch.save data.pkl yields StorageRefs (with element sizes), TensorRefs and dtypes."""
    torch = pytest.importorskip("torch")
    import zipfile

    buf = io.BytesIO()
    base = torch.arange(12, dtype=torch.float32)
    torch.save(
        collections.OrderedDict(
            w=base.view(3, 4),
            v=base[2:6],
            h=torch.ones(3, dtype=torch.bfloat16),
            f8=torch.zeros(2, dtype=torch.float8_e4m3fn),
        ),
        buf,
    )
    walk = walk_pickle(zipfile.ZipFile(buf).read("archive/data.pkl"), what="sd")
    assert set(walk.storages) == {"0", "1", "2"}
    s0 = walk.storages["0"]
    assert (s0.storage_type, s0.element_size, s0.numel, s0.nbytes) == ("FloatStorage", 4, 12, 48)
    w, v, f8 = walk.obj["w"], walk.obj["v"], walk.obj["f8"]
    assert isinstance(w, TensorRef) and w.size == (3, 4) and w.stride == (4, 1) and w.storage is s0
    assert v.offset == 2 and v.storage_elements_needed() == 6
    assert walk.storages["1"].storage_type == "BFloat16Storage"
    assert f8.dtype == TorchDtype("float8_e4m3fn", 1) and f8.storage.storage_type == "UntypedStorage"
    assert "torch._utils._rebuild_tensor_v2" in walk.globals


def test_persistent_id_must_be_a_storage_tuple():
    """A persistent id that is not ('storage', <torch storage class>, key, location, numel) is bad_pickle."""

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", "not-a-class", "0", "cpu", 4) if obj == "S" else None

    buf = io.BytesIO()
    P(buf, protocol=2).dump(["S"])
    with pytest.raises(FormatError) as e:
        walk_pickle(buf.getvalue(), what="x")
    assert e.value.kind == "bad_pickle" and "not a torch storage class" in e.value.message


# --------------------------------------------------------------------------------------------------
# Hostile streams stay linear


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize(
    "stream",
    [
        b"\x80\x02N" + b"r" + struct.pack("<I", 100_000_000) + b".",  # LONG_BINPUT
        b"Np100000000\n.",  # PUT
        b"Np 1_0000_0000 \n.",  # PUT with int() syntax
        b"N(p100000000",  # PUT on the last line, no newline
    ],
)
def test_memo_index_bomb_is_refused_in_constant_memory(stream):
    """A 12-byte pickle asking the C unpickler for a 1.5 GB memo is rejected before it runs."""
    before = _maxrss_mb()
    t = time.perf_counter()
    with pytest.raises(FormatError) as e:
        walk_pickle(stream, what="bomb")
    assert time.perf_counter() - t < 1.0
    assert _maxrss_mb() - before < 100
    assert e.value.kind == "bad_pickle"


def test_reused_container_amplification_hits_the_budget():
    """Calling a stub many times on one memoised 100k-element tuple stops at the copy budget, quickly."""
    parts = [b"\x80\x02", b"cmod\nCls\n", b"q\x00"]  # GLOBAL -> memo 0
    parts.append(b"(" + b"K\x07" * 100_000 + b"tq\x01")  # a 100k-element tuple -> memo 1
    parts.append(b"0(" + b"h\x00h\x01R0" * 5000 + b"l.")  # 5000 x Cls(*big), results dropped
    t = time.perf_counter()
    with pytest.raises(FormatError) as e:
        walk_pickle(b"".join(parts), what="amp")
    assert time.perf_counter() - t < 5.0
    assert "amplify" in e.value.message


def test_build_cannot_mutate_allow_listed_globals():
    """BUILD applied to an allow-listed global (here torch.Size) is bad_pickle, not a silent mutation."""
    data = b"\x80\x02ctorch\nSize\n}(X\x03\x00\x00\x00_fnK\x01ub."
    with pytest.raises(FormatError) as e:
        walk_pickle(data, what="build")
    assert e.value.kind == "bad_pickle"
    walk = walk_pickle(b"\x80\x02ctorch\nSize\n(K\x02K\x03t\x85R.", what="size")
    assert walk.obj == (2, 3)


def test_size_cap(monkeypatch):
    """A stream longer than MAX_PICKLE_BYTES is refused as bad_pickle without being walked."""
    monkeypatch.setattr(pickle_stub, "MAX_PICKLE_BYTES", 1000)
    data = pickle.dumps(list(range(2000)), protocol=2)
    with pytest.raises(FormatError) as e:
        walk_pickle(data, what="big")
    assert "safety cap" in e.value.message


def test_opcode_cap(monkeypatch):
    """More opcodes than MAX_PICKLE_OPCODES (a heap bound: ~220 bytes per opcode) is bad_pickle."""
    monkeypatch.setattr(pickle_stub, "MAX_PICKLE_OPCODES", 100)
    with pytest.raises(FormatError) as e:
        walk_pickle(b"\x80\x02" + b"]" * 200 + b".", what="flood")
    assert "opcodes" in e.value.message


def test_truncated_stream_at_every_cut_point():
    """Every prefix of a real pickle raises FormatError (PickleTruncated when the bytes just end)."""
    data = pickle.dumps({"a": [1, 2.5, "x" * 300], "b": (None, True)}, protocol=2)
    for cut in range(len(data)):
        with pytest.raises(FormatError) as e:
            walk_pickle(data[:cut], what="cut")
        assert e.value.kind == "bad_pickle"
    with pytest.raises(PickleTruncated):
        walk_pickle(data[: len(data) // 2], what="half")


def test_unknown_opcode_is_reported_with_its_offset():
    """A byte that is no pickle opcode is named with its position."""
    with pytest.raises(FormatError) as e:
        walk_pickle(b"\x80\x02N\xff.", what="junk")
    assert "byte 3 is 0xff" in e.value.message


def test_walk_reports_end_for_sequential_pickles():
    """PickleWalk.end lets a reader walk pickles written back to back (the legacy torch format)."""
    data = pickle.dumps(1, protocol=2) + pickle.dumps([2, 3], protocol=2) + b"raw tail"
    first = walk_pickle(data, what="one")
    second = walk_pickle(data, what="two", start=first.end)
    assert (first.obj, second.obj, data[second.end :]) == (1, [2, 3], b"raw tail")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_pickles_never_escape(data):
    """Random byte edits of a realistic pickle give an object or FormatError, never another exception."""
    base = bytearray(
        pickle.dumps(
            {
                "model": collections.OrderedDict(w=[1.5, 2]),
                "args": _OpenForWrite("/x"),
                "s": {1, 2},
                "t": (b"bytes", None),
            },
            protocol=data.draw(st.integers(0, 5)),
        )
    )
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(base) - 1))
        base[i] = data.draw(st.integers(0, 255))
    try:
        walk_pickle(bytes(base), what="fuzz")
    except FormatError:
        pass


# --------------------------------------------------------------------------------------------------
# get()


def test_get_walks_dicts_lists_stubs_and_refs():
    """get() follows dict keys, indices, stub state and ref fields, and returns default on any miss."""
    ref = StorageRef("0", "FloatStorage", 4, "cpu", 3)
    t = TensorRef(ref, 0, (3,), (1,))
    obj = {"a": [10, {"b": t}]}
    assert get(obj, "a", 1, "b", "storage", "numel") == 3
    assert get(obj, "a", 5) is None and get(obj, "a", "x") is None and get(obj, "zz", default=0) == 0
    assert get(obj, "a", 1, "b", "__class__") is None  # only declared fields of refs are visible
    assert get(obj) is obj
