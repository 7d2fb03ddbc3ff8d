"""Walk a pickle without executing it: every global becomes an inert stub (layouts.md §1.1).

Why: nearly every checkpoint holds a pickle (``data.pkl`` of a torch zip, legacy torch files, DCP
``.metadata``, ``training_args.bin``) and many legitimately reference classes that ``torch.load(...,
weights_only=True)`` rejects (``argparse.Namespace``, ``TrainingArguments``, DCP dataclasses), while
plain ``pickle.load`` would run whatever callable the file names. ``find_class`` here NEVER imports: it
returns a stub class recording ``(module, name)``; calling it records the arguments, ``BUILD`` records
the state. A short allow-list is replaced by local, side-effect-free equivalents: tensors become
``TensorRef``, storages ``StorageRef`` (collected in a table, so a checker knows every byte it must
find), ``torch.Size`` a tuple, torch dtypes ``TorchDtype``, ``pathlib`` paths ``str``.

Bounded time and memory, and why. No real callable can run, so the only work is the unpickler's own
opcodes and our stub code. Two blow-ups remain and are closed here:

* CPython's C unpickler grows its memo ARRAY to twice any ``PUT``/``LONG_BINPUT`` index and zero-fills
  it: a 12-byte stream ``\\x80\\x02 N r <1e8>`` costs 1.5 GB and 8 s (measured, Python 3.11.7). So a
  pure-Python pre-scan (``_scan``, ~0.3 us per opcode) walks the opcodes first and rejects any memo index
  no pickler writes (a pickler's indices count its memo writes, so they stay below the stream length);
  it also finds the exact end of the stream and counts opcodes.
* Stub code that copies its input (``*args`` tuples, ``torch.Size(list)``, ``OrderedDict(pairs)``)
  can be fed one memoised big container again and again: quadratic. Each copy is charged to a budget
  linear in the stream size (``_Budget``); a legitimate pickle copies each element about once.

Then every opcode does O(1 + its argument bytes) work, so time and memory are linear in the stream, with
the C unpickler's own constant: up to ~220 bytes of heap per opcode (an ``EMPTY_SET`` is one byte and a
216-byte set). ``MAX_PICKLE_OPCODES`` (16 Mi) therefore bounds a hostile stream at about 3.5 GiB, and
``MAX_PICKLE_BYTES`` (256 MiB) bounds the bytes read; a real ``data.pkl`` is KBs to a few MBs (a DCP
``.metadata`` of a large sharded run tens of MBs; walking runs at ~7 MB/s, half of it the pre-scan).
One cost is not linear: inserting keys whose hashes are equal into a dict or set is quadratic, and
ints, floats, tuples and frozensets have hashes an attacker can choose (60,000 keys took 25-36 s inside
one C call that no signal interrupts). ``_scan`` counts the literals such keys need; a stream with more
than ``MAX_COLLISION_MATERIAL`` of them goes to ``_GuardedWalker``, which inserts key by key and stops at
the file's CPU limit (``limits.tick``). Real pickles stay on the C walker.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import os
import pickle
import posixpath
from collections.abc import Mapping
from typing import Any

from ckptwatch.formats._io import FormatError
from ckptwatch.formats._show import show_brief
from ckptwatch.formats.limits import LimitExceeded, tick
from ckptwatch.model import Record

MAX_PICKLE_BYTES = 256 << 20
MAX_PICKLE_OPCODES = 16 << 20
MAX_GLOBALS = 10_000  # distinct (module, name) pairs; a real checkpoint has tens
# Collision material (``_scan``) above which a stream is walked by the guarded, interruptible walker:
# 4,096 colliding keys cost the C dict at most ~8 M comparisons (well under a second).
MAX_COLLISION_MATERIAL = 4096
# str and bytes keys collide only for someone who knows the hash key: a fixed PYTHONHASHSEED gives it away,
# and then every stream goes the guarded way.
STR_HASH_IS_SECRET = os.environ.get("PYTHONHASHSEED", "random") == "random"

# Element size in bytes of the legacy typed storage classes torch pickles (torch/storage.py
# _dtype_to_storage_type_map; UntypedStorage counts bytes). Float8 names never appear in torch 2.x files
# (those dtypes go through _rebuild_tensor_v3 + UntypedStorage) but cost nothing to know.
# fmt: off
STORAGE_ELEMENT_SIZE: dict[str, int] = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
    "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "UntypedStorage": 1, "QInt8Storage": 1,
    "QUInt8Storage": 1, "QInt32Storage": 4, "QUInt4x2Storage": 1, "QUInt2x4Storage": 1,
    "Float8_e4m3fnStorage": 1, "Float8_e5m2Storage": 1, "Float8_e4m3fnuzStorage": 1,
    "Float8_e5m2fnuzStorage": 1, "Float8_e8m0fnuStorage": 1,
}

# torch dtype name -> itemsize (bytes), as torch 2.13 reports ``getattr(torch, name).itemsize``.
TORCH_DTYPE_ITEMSIZE: dict[str, int] = {
    "bfloat16": 2, "bit": 1, "bits16": 2, "bits1x8": 1, "bits2x4": 1, "bits4x2": 1, "bits8": 1, "bool": 1,
    "cdouble": 16, "cfloat": 8, "chalf": 4, "complex128": 16, "complex32": 4, "complex64": 8, "double": 8,
    "float": 4, "float16": 2, "float32": 4, "float4_e2m1fn_x2": 1, "float64": 8, "float8_e4m3fn": 1,
    "float8_e4m3fnuz": 1, "float8_e5m2": 1, "float8_e5m2fnuz": 1, "float8_e8m0fnu": 1, "half": 2, "int": 4,
    "int1": 1, "int16": 2, "int2": 1, "int3": 1, "int32": 4, "int4": 1, "int5": 1, "int6": 1, "int64": 8,
    "int7": 1, "int8": 1, "long": 8, "qint32": 4, "qint8": 1, "quint2x4": 1, "quint4x2": 1, "quint8": 1,
    "short": 2, "uint1": 1, "uint16": 2, "uint2": 1, "uint3": 1, "uint32": 4, "uint4": 1, "uint5": 1,
    "uint6": 1, "uint64": 8, "uint7": 1, "uint8": 1,
}
# fmt: on


class PickleTruncated(FormatError):
    """The stream ended before its STOP opcode (a reader of a file prefix may fetch more and retry).

    ``needs``: how long the data must at least be for the stream to go on (the end of an argument whose
    declared length did not fit, plus one byte). A reader of a prefix uses it to tell, without reading
    gigabytes, a stream that declares more than the file holds or than the safety cap allows.
    """

    def __init__(self, kind: str, message: str, needs: int) -> None:
        super().__init__(kind, message)
        self.needs = needs


class PickleMalformed(FormatError):
    """The walk failed part-way; ``globals`` holds every ``module.name`` resolved before it did.

    A stream can be both malformed and hostile: a caller that judges globals still sees the ones that a
    real ``pickle.load`` would have imported (and run) before reaching the fault.
    """

    def __init__(self, kind: str, message: str, globals_: frozenset[str]) -> None:
        super().__init__(kind, message)
        self.globals = globals_


# --------------------------------------------------------------------------------------------------
# What the walker produces


def _refuse_build(self: Any, state: Any) -> None:
    """BUILD on one of our records: refused. Without it the stream could set a record's slots (a frozen
    slots dataclass even gets a ``__setstate__`` that writes with ``object.__setattr__``), overwriting a
    tensor's size or a storage's numel after the walker validated them."""
    raise pickle.UnpicklingError(f"BUILD applied to a {type(self).__name__} (the walker's own record)")


class _Record(Record):
    """The walker's records: ``model.Record`` (immutable slots, compared and hashed by value, shown as
    ``Name(field=...)``), with BUILD refused (``_refuse_build``), as the frozen slots dataclasses they were.

    Not dataclasses: each frozen slots dataclass cost ~0.8 ms of CPU to create when this module is
    imported, which every ``ckptwatch latest`` does (its start-up is measured: bench/startup.py).
    Not tuples either: a walked object graph indexes tuples (``get``), never our records.
    """

    __slots__ = ()
    __setstate__ = _refuse_build


_set = object.__setattr__  # how a record's __init__ fills its slots


class StorageType(_Record):
    """Marker for a pickled ``torch.<X>Storage`` class. ``element_size`` is None for unknown names."""

    __slots__ = ("name", "element_size")
    name: str
    element_size: int | None

    def __init__(self, name: str, element_size: int | None) -> None:
        _set(self, "name", name)
        _set(self, "element_size", element_size)


class TorchDtype(_Record):
    """A pickled ``torch.<dtype>`` global (pickled by name; never imported)."""

    __slots__ = ("name", "itemsize")
    name: str
    itemsize: int

    def __init__(self, name: str, itemsize: int) -> None:
        _set(self, "name", name)
        _set(self, "itemsize", itemsize)

    def __str__(self) -> str:
        return f"torch.{self.name}"


class StorageRef(_Record):
    """A persistent id ``('storage', type, key, location, numel[, view])``: bytes stored outside the pickle.

    ``numel`` counts elements of ``storage_type`` (bytes for ``UntypedStorage``); ``nbytes`` is None when
    the element size is unknown.
    """

    __slots__ = ("key", "storage_type", "element_size", "location", "numel")
    key: str
    storage_type: str
    element_size: int | None
    location: str
    numel: int

    def __init__(self, key: str, storage_type: str, element_size: int | None, location: str,
                 numel: int) -> None:
        _set(self, "key", key)
        _set(self, "storage_type", storage_type)
        _set(self, "element_size", element_size)
        _set(self, "location", location)
        _set(self, "numel", numel)

    @property
    def nbytes(self) -> int | None:
        return None if self.element_size is None else self.numel * self.element_size


class TensorRef(_Record):
    """``torch._utils._rebuild_tensor[_v2|_v3]`` arguments: a view of ``storage`` (counts in elements)."""

    __slots__ = ("storage", "offset", "size", "stride", "requires_grad", "dtype")
    storage: Any
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    requires_grad: bool
    dtype: TorchDtype | None  # v3 only; v2 takes the dtype from the storage class

    def __init__(self, storage: Any, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                 requires_grad: bool = False, dtype: TorchDtype | None = None) -> None:
        _set(self, "storage", storage)
        _set(self, "offset", offset)
        _set(self, "size", size)
        _set(self, "stride", stride)
        _set(self, "requires_grad", requires_grad)
        _set(self, "dtype", dtype)

    def storage_elements_needed(self) -> int:
        """Elements of the storage this view reaches (0 for an empty tensor)."""
        if any(s == 0 for s in self.size):
            return 0
        return self.offset + 1 + sum((s - 1) * st for s, st in zip(self.size, self.stride, strict=True))


class PickleWalk(_Record):
    """The result of walking one pickle stream.

    ``obj`` is the unpickled object graph made of builtins, stubs and the refs above; ``storages`` maps
    storage key -> ``StorageRef``; ``globals`` holds every ``module.name`` the stream referenced;
    ``tensors`` every ``TensorRef`` built; ``end`` the offset just past the STOP opcode.
    """

    __slots__ = ("obj", "storages", "globals", "tensors", "end", "protocol")
    obj: Any
    storages: dict[str, StorageRef]
    globals: frozenset[str]
    tensors: tuple[TensorRef, ...]
    end: int
    protocol: int

    def __init__(self, obj: Any, storages: dict[str, StorageRef], globals_: frozenset[str],
                 tensors: tuple[TensorRef, ...], end: int, protocol: int) -> None:
        _set(self, "obj", obj)
        _set(self, "storages", storages)
        _set(self, "globals", globals_)
        _set(self, "tensors", tensors)
        _set(self, "end", end)
        _set(self, "protocol", protocol)


# --------------------------------------------------------------------------------------------------
# Stubs


class _Budget:
    """Elements our stub code may copy in one walk (linear in the stream length; see module docstring)."""

    __slots__ = ("left",)

    def __init__(self, n: int) -> None:
        self.left = n

    def charge(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise pickle.UnpicklingError(
                "the stream re-uses containers to amplify work beyond the safety cap"
            )


class Stub:
    """Stand-in for any pickled global. Records args, state and items; never runs foreign code.

    Pickled state is readable as attributes (``stub.num_processes``) or, safer, through ``get``.
    """

    __slots__ = ("_pk_args", "_pk_kwargs", "_pk_state", "_pk_items", "_pk_list")
    _pk_args: tuple[Any, ...]
    _pk_kwargs: dict[str, Any]
    _pk_state: Any
    _pk_items: dict[Any, Any] | None
    _pk_list: list[Any] | None
    _pk_module = ""
    _pk_name = ""
    _pk_budget: _Budget | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Stub:
        if cls._pk_budget is not None:
            cls._pk_budget.charge(len(args) + len(kwargs))
        self = object.__new__(cls)
        self._pk_args = args
        self._pk_kwargs = kwargs
        self._pk_state = None
        self._pk_items = None
        self._pk_list = None
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        budget = type(self)._pk_budget
        if budget is not None:
            budget.charge(len(args) + len(kwargs))

    def __setstate__(self, state: Any) -> None:  # BUILD: keep by reference, O(1)
        self._pk_state = state

    def __call__(self, *args: Any, **kwargs: Any) -> Stub:  # REDUCE on a stub instance
        return type(self)(*args, **kwargs)

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEMS on a dict subclass
        if self._pk_items is None:
            self._pk_items = {}
        self._pk_items[key] = value

    def append(self, value: Any) -> None:  # APPENDS on a list subclass
        if self._pk_list is None:
            self._pk_list = []
        self._pk_list.append(value)

    def extend(self, values: list[Any]) -> None:
        if self._pk_list is None:
            self._pk_list = []
        self._pk_list.extend(values)

    @property
    def stub_global(self) -> str:
        return f"{self._pk_module}.{self._pk_name}"

    @property
    def stub_args(self) -> tuple[Any, ...]:
        return self._pk_args

    @property
    def stub_state(self) -> Any:
        return self._pk_state

    def _pk_lookup(self, key: Any, depth: int = 0) -> Any:
        """The pickled value named ``key``: state dict, slot state, dict items, then list/args by index."""
        st = self._pk_state
        slot = None
        if (
            isinstance(st, tuple)
            and len(st) == 2
            and (st[0] is None or isinstance(st[0], dict))
            and (st[1] is None or isinstance(st[1], dict))
        ):
            st, slot = st
        for d in (st, slot, self._pk_items):
            if isinstance(d, dict):
                try:
                    if key in d:
                        return d[key]
                except TypeError:  # unhashable key
                    return _MISSING
        if isinstance(st, Stub) and depth < 4:  # state held in a custom mapping (e.g. a SharedDict)
            found = st._pk_lookup(key, depth + 1)
            if found is not _MISSING:
                return found
        if isinstance(st, Mapping) and not isinstance(st, dict):
            try:
                if key in st:
                    return st[key]
            except TypeError:
                return _MISSING
        if isinstance(key, int) and not isinstance(key, bool):
            seq = self._pk_list if self._pk_list is not None else self._pk_args
            if -len(seq) <= key < len(seq):
                return seq[key]
        return _MISSING

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_pk_") or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)
        found = self._pk_lookup(name)
        if found is _MISSING:
            raise AttributeError(f"{self.stub_global} stub has no pickled attribute {name!r}")
        return found

    def __repr__(self) -> str:
        return f"<stub {self._pk_module}.{self._pk_name}>"


class _PickledOrderedDict(collections.OrderedDict):  # type: ignore[type-arg]
    """``collections.OrderedDict`` whose BUILD state (e.g. a state_dict's ``_metadata``) is kept aside."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_pk_state"] = state

    @property
    def stub_state(self) -> Any:
        return self.__dict__.get("_pk_state")


class _Callable:
    """An allow-listed global: a local function wrapped so BUILD cannot mutate shared state."""

    __slots__ = ("_fn", "_qual", "_budget")

    def __init__(self, fn: Any, qual: str, budget: _Budget) -> None:
        self._fn = fn
        self._qual = qual
        self._budget = budget

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._budget.charge(len(args) + len(kwargs))
        return self._fn(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"BUILD applied to the global {self._qual}")

    def __repr__(self) -> str:
        return f"<allow-listed {self._qual}>"


_MISSING = object()


def get(obj: Any, *path: Any, default: Any = None) -> Any:
    """Follow ``path`` (attribute names, dict keys, indices) through a walked object graph, safely.

    ``get(ta, "distributed_state", "num_processes")`` reads a stub's pickled state, dict entries and
    the fields of our refs; it never calls anything the pickle provided and returns ``default`` at
    the first step that does not exist.
    """
    cur = obj
    for key in path:
        cur = _step(cur, key)
        if cur is _MISSING:
            return default
    return cur


_REF_FIELDS = {cls: frozenset(cls.__slots__) for cls in (StorageRef, TensorRef, StorageType, TorchDtype)}


def _step(obj: Any, key: Any) -> Any:
    if isinstance(obj, Stub):
        return obj._pk_lookup(key)
    if isinstance(obj, Mapping):
        try:
            if key in obj:
                return obj[key]
        except TypeError:
            return _MISSING
        if isinstance(obj, _PickledOrderedDict) and isinstance(obj.stub_state, dict):
            return obj.stub_state.get(key, _MISSING) if _hashable(key) else _MISSING
        return _MISSING
    if isinstance(obj, (list, tuple)) and isinstance(key, int) and not isinstance(key, bool):
        return obj[key] if -len(obj) <= key < len(obj) else _MISSING
    names = _REF_FIELDS.get(type(obj))
    if names is not None and key in names:
        return getattr(obj, key)
    return _MISSING


def _hashable(key: Any) -> bool:
    try:
        hash(key)
    except TypeError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# Pre-scan: exact end, opcode count and memo indices, before the C unpickler sees the stream

# Argument shapes: >= 0 fixed length; negative codes below.
# fmt: off
_COUNT1, _COUNT4, _COUNT4S, _COUNT8, _LINE, _PUTLINE, _LINE2, _LONG_BINPUT, _PROTO, _STOP = \
    -1, -2, -3, -4, -5, -6, -7, -8, -9, -11
# Opcodes that make hash-collision material (see ``_scan``): their own codes, counted when met.
_FLOAT8, _LONG1, _LONG4, _NUMLINE, _FROZENSET = -12, -13, -14, -15, -16
_BAD = -99
_ARG = [_BAD] * 256
for _c in b"(0123NRbae}dls]ut)o\x81\x85\x86\x87\x88\x89\x8f\x90\x91\x92\x93\x94Q\x97\x98":
    _ARG[_c] = 0
for _ops, _n in ((b"Khq\x82", 1), (b"M\x83", 2), (b"Jj\x84", 4), (b"G\x95", 8)):
    for _x in _ops:
        _ARG[_x] = _n
for _c in b"UC\x8c\x8a":
    _ARG[_c] = _COUNT1
for _c in b"XB":
    _ARG[_c] = _COUNT4  # unsigned 4-byte length
for _c in b"T\x8b":
    _ARG[_c] = _COUNT4S  # signed: the C unpickler rejects a negative one
for _c in b"\x8d\x8e\x96":
    _ARG[_c] = _COUNT8
for _c in b"ILFSVgP":
    _ARG[_c] = _LINE
_ARG[ord("G")] = _FLOAT8
_ARG[0x8A] = _LONG1
_ARG[0x8B] = _LONG4
for _c in b"ILF":
    _ARG[_c] = _NUMLINE
_ARG[0x91] = _FROZENSET
_ARG[ord("p")] = _PUTLINE
_ARG[ord("c")] = _ARG[ord("i")] = _LINE2
_ARG[ord("r")] = _LONG_BINPUT
_ARG[0x80] = _PROTO
_ARG[ord(".")] = _STOP
# fmt: on


def _scan(data: bytes, start: int, what: str, end: int | None = None) -> tuple[int, int, int]:
    """Return (offset after STOP, protocol, collision material) of the pickle at ``start`` (looking at
    ``data`` only up to ``end``: a window without a copy).

    Raises on unsafe or broken streams. Memo rule: every PUT/LONG_BINPUT index must be below max(256,
    opcode count). A pickler's indices count its memo writes, which are fewer than its opcodes, so real
    streams always pass, and the C unpickler's memo array then stays within 16 bytes per opcode (a stream
    length rule let a 64 KB deflated zip record expand to 64 MB and ask for a 1 GB memo).

    Collision material: the literals from which dict keys or set members with chosen, equal hashes can
    be built. Python hashes ``str`` and ``bytes`` with a per-process random key, but ints, floats,
    tuples and frozensets without one: ``hash(k * (2**61 - 1)) == 0`` for every int ``k``, ``hash(0.5) ==
    hash(2**60)``, a 2-tuple can be completed to collide with any other by a solved 61-bit second
    member, and a frozenset's hash XORs its members' (linear algebra finds many equal ones among ~100
    small ints). Each colliding key needs its own wide literal (a float, an int of 40 bits or more) or a
    FROZENSET, so their count bounds how many colliding keys the stream can build; ``walk_pickle`` uses
    the C unpickler only below ``MAX_COLLISION_MATERIAL`` (C dict insertion cannot be interrupted).
    """
    n = len(data) if end is None else min(end, len(data))
    i = start
    ops = 0
    max_idx = -1
    protocol = 0
    risky = 0
    arg = _ARG
    find = data.find
    stopped = False
    while i < n:
        op = data[i]
        k = arg[op]
        ops += 1
        if k >= 0:  # most opcodes: a fixed-size argument (BINPUT's 1-byte index is always safe)
            i += 1 + k
        elif k == _COUNT1:
            i += 2 + (data[i + 1] if i + 1 < n else 0)
        elif k == _COUNT4:
            i += 5 + int.from_bytes(data[i + 1 : i + 5], "little")
        elif k == _LONG_BINPUT:
            idx = int.from_bytes(data[i + 1 : i + 5], "little")
            if idx > max_idx:
                max_idx = idx
            i += 5
        elif k == _STOP:
            i += 1
            stopped = True
            break
        elif k == _PROTO:
            if i + 1 < n:
                protocol = data[i + 1]
            i += 2
        elif k == _COUNT4S:
            ln = int.from_bytes(data[i + 1 : i + 5], "little", signed=True)
            if ln < 0:
                raise FormatError("bad_pickle", f"{what}: negative length {ln} at byte {i}")
            i += 5 + ln
        elif k == _COUNT8:
            i += 9 + int.from_bytes(data[i + 1 : i + 9], "little")
        elif k == _LONG1:
            width = data[i + 1] if i + 1 < n else 0
            risky += width >= 6  # 40 bits and more; a pickler writes smaller ints in fewer bytes
            i += 2 + width
        elif k == _FLOAT8:
            risky += 1
            i += 9
        elif k == _LONG4:
            ln = int.from_bytes(data[i + 1 : i + 5], "little", signed=True)
            if ln < 0:
                raise FormatError("bad_pickle", f"{what}: negative length {ln} at byte {i}")
            risky += 1
            i += 5 + ln
        elif k == _FROZENSET:
            risky += 1
            i += 1
        elif k == _NUMLINE:
            j = find(b"\n", i + 1, n)
            if j < 0:
                break
            risky += op == 0x46 or j - i > 12  # FLOAT, or INT/LONG of 12 digits or more
            i = j + 1
        elif k == _LINE or k == _PUTLINE or k == _LINE2:
            j = find(b"\n", i + 1, n)
            if k == _LINE2 and j >= 0:
                j = find(b"\n", j + 1, n)
            if k == _PUTLINE:
                # The C unpickler also accepts a last line without "\n" and any int() syntax.
                try:
                    idx = int(data[i + 1 : j if j >= 0 else n])
                except ValueError:
                    idx = -1
                max_idx = max(max_idx, idx)
            if j < 0:
                break  # the C unpickler would read the rest of the data as this line: truncated below
            i = j + 1
        else:
            raise FormatError("bad_pickle", f"{what}: byte {i} is 0x{op:02x}, not a pickle opcode")
    if not stopped or i > n:
        raise PickleTruncated("bad_pickle", f"{what}: pickle stream ends at byte {n} without its STOP opcode",
                              needs=max(i, n) + 1)
    if max_idx >= max(256, ops):
        raise FormatError(
            "bad_pickle",
            f"{what}: memo index {max_idx} in a stream of {ops} opcodes (a pickler numbers its memo writes, "
            "so no pickler writes that; refused because the C unpickler would allocate a memo of that size)",
        )
    if ops > MAX_PICKLE_OPCODES:  # checked once: the scan itself is bounded by MAX_PICKLE_BYTES
        raise FormatError(
            "bad_pickle", f"{what}: {ops} pickle opcodes, more than the {MAX_PICKLE_OPCODES} safety cap"
        )
    return i, protocol, risky


# --------------------------------------------------------------------------------------------------
# The walker


def _tuple_of_ints(value: Any, what: str, budget: _Budget) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)):
        raise pickle.UnpicklingError(f"tensor {what} is a {type(value).__name__}, not a tuple")
    budget.charge(len(value))
    if not all(type(v) is int for v in value):
        raise pickle.UnpicklingError(f"tensor {what} holds a non-integer")
    return tuple(value)


class _Resolver:
    """Globals become stubs and persistent ids are recorded, never resolved: the part both walkers share."""

    def __init__(self, file: io.BytesIO, what: str, budget: _Budget) -> None:
        super().__init__(file, encoding="utf-8")
        self.what = what
        self.budget = budget
        self.storages: dict[str, StorageRef] = {}
        self.tensors: list[TensorRef] = []
        self.seen: dict[tuple[str, str], Any] = {}
        self.allowed = self._allow_list()

    def _allow_list(self) -> dict[tuple[str, str], Any]:
        b = self.budget
        tensors = self.tensors

        def make(storage: Any, offset: Any, size: Any, stride: Any, grad: Any, dtype: Any) -> TensorRef:
            if type(offset) is not int or offset < 0:
                raise pickle.UnpicklingError("tensor storage offset is not a non-negative int")
            size, stride = _tuple_of_ints(size, "size", b), _tuple_of_ints(stride, "stride", b)
            if len(size) != len(stride):
                raise pickle.UnpicklingError(f"tensor size has {len(size)} dims but its stride {len(stride)}")
            t = TensorRef(
                storage, offset, size, stride, grad is True, dtype if isinstance(dtype, TorchDtype) else None
            )
            tensors.append(t)
            return t

        def rebuild_v2(
            storage: Any,
            storage_offset: int,
            size: Any,
            stride: Any,
            requires_grad: Any = False,
            backward_hooks: Any = None,
            metadata: Any = None,
        ) -> TensorRef:
            return make(storage, storage_offset, size, stride, requires_grad, None)

        def rebuild_v1(storage: Any, storage_offset: int, size: Any, stride: Any) -> TensorRef:
            return rebuild_v2(storage, storage_offset, size, stride)

        def rebuild_v3(
            storage: Any,
            storage_offset: int,
            size: Any,
            stride: Any,
            requires_grad: Any,
            backward_hooks: Any,
            dtype: Any,
            metadata: Any = None,
        ) -> TensorRef:
            return make(storage, storage_offset, size, stride, requires_grad, dtype)

        def size(value: Any = ()) -> tuple[int, ...]:
            return _tuple_of_ints(value, "torch.Size", b)

        def ordered_dict(*args: Any) -> _PickledOrderedDict:
            if len(args) > 1:
                raise pickle.UnpicklingError("OrderedDict takes at most one argument")
            out = _PickledOrderedDict()
            if args:
                b.charge(len(args[0]) if isinstance(args[0], (list, tuple, dict)) else 0)
                if not isinstance(args[0], (list, tuple, dict)):
                    raise pickle.UnpicklingError("OrderedDict argument is not a list, tuple or dict")
                pairs = args[0].items() if isinstance(args[0], dict) else args[0]
                for n, pair in enumerate(pairs):  # one key at a time: colliding keys meet the deadline
                    if n % _INSERT_TICK == 0:
                        tick("building a pickled OrderedDict")
                    if not isinstance(pair, (tuple, list)) or len(pair) != 2:  # Python 2 wrote lists
                        raise pickle.UnpicklingError("OrderedDict item is not a (key, value) pair")
                    out[pair[0]] = pair[1]
            return out

        def make_set(items: Any = ()) -> set[Any] | list[Any]:
            if not isinstance(items, (list, tuple, set, frozenset)):
                raise pickle.UnpicklingError("set argument is not a sequence")
            b.charge(len(items))
            try:
                return _ticking_set(items)
            except TypeError:  # members are unhashable stubs' kin: keep them as a list
                return list(items)

        def make_frozenset(items: Any = ()) -> frozenset[Any] | list[Any]:
            s = make_set(items)
            return frozenset(s) if isinstance(s, set) else s

        def path(*parts: Any) -> str:
            if not all(isinstance(p, str) for p in parts):
                raise pickle.UnpicklingError("path part is not a string")
            b.charge(sum(len(p) for p in parts))  # the joined string is a copy
            return posixpath.join(*parts) if parts else "."

        def windows_path(*parts: Any) -> str:
            if not all(isinstance(p, str) for p in parts):
                raise pickle.UnpicklingError("path part is not a string")
            b.charge(sum(len(p) for p in parts))
            return "\\".join(parts)

        def layout(name: Any) -> str:
            if not isinstance(name, str):
                raise pickle.UnpicklingError("layout name is not a string")
            return name

        def codecs_encode(obj: Any, encoding: Any = "utf-8") -> bytes:
            # Protocol 2 pickles bytes as _codecs.encode(str, "latin1"); nothing else is accepted.
            if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
                raise pickle.UnpicklingError("_codecs.encode outside its bytes-pickling use")
            b.charge(len(obj))  # a copy: a memoised long str re-encoded many times must not multiply memory
            return obj.encode("latin-1")

        def reconstructor(cls: Any, base: Any, state: Any = None) -> Stub:
            if not (isinstance(cls, type) and issubclass(cls, Stub)):
                raise pickle.UnpicklingError("copyreg._reconstructor of a non-class")
            return cls.__new__(cls) if state is None else cls.__new__(cls, state)

        def newobj(cls: Any, *args: Any) -> Stub:
            if not (isinstance(cls, type) and issubclass(cls, Stub)):
                raise pickle.UnpicklingError("copyreg.__newobj__ of a non-class")
            return cls.__new__(cls, *args)

        def newobj_ex(cls: Any, args: Any, kwargs: Any) -> Stub:
            if (
                not (isinstance(cls, type) and issubclass(cls, Stub))
                or not isinstance(args, tuple)
                or not isinstance(kwargs, dict)
            ):
                raise pickle.UnpicklingError("copyreg.__newobj_ex__ misuse")
            return cls.__new__(cls, *args, **{str(k): v for k, v in kwargs.items()})

        table = {
            ("torch._utils", "_rebuild_tensor_v2"): rebuild_v2,
            ("torch._utils", "_rebuild_tensor"): rebuild_v1,
            ("torch._utils", "_rebuild_tensor_v3"): rebuild_v3,
            ("torch", "Size"): size,
            ("collections", "OrderedDict"): ordered_dict,
            ("builtins", "set"): make_set,
            ("builtins", "frozenset"): make_frozenset,
            ("_codecs", "encode"): codecs_encode,
            ("copyreg", "_reconstructor"): reconstructor,
            ("copyreg", "__newobj__"): newobj,
            ("copyreg", "__newobj_ex__"): newobj_ex,
            ("torch.serialization", "_get_layout"): layout,
        }
        for name in ("PosixPath", "PurePosixPath", "Path", "PurePath"):
            table[("pathlib", name)] = path
        for name in ("WindowsPath", "PureWindowsPath"):
            table[("pathlib", name)] = windows_path
        return {k: _Callable(fn, f"{k[0]}.{k[1]}", b) for k, fn in table.items()}

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (protocol < 3 streams) as the default find_class would map them; nothing imported.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        hit = self.seen.get(key)
        if hit is not None:
            return hit
        if len(self.seen) >= MAX_GLOBALS:
            raise pickle.UnpicklingError(f"more than {MAX_GLOBALS} distinct globals (safety cap)")
        if key in self.allowed:
            value: Any = self.allowed[key]
        elif module in ("torch", "torch.storage") and name.endswith(
            "Storage"
        ):  # UntypedStorage: torch.storage
            value = StorageType(name, STORAGE_ELEMENT_SIZE.get(name))
        elif module == "torch" and name in TORCH_DTYPE_ITEMSIZE:
            value = TorchDtype(name, TORCH_DTYPE_ITEMSIZE[name])
        else:
            value = type(
                name if name.isidentifier() else "Stub",
                (Stub,),
                {
                    "__slots__": (),
                    "_pk_module": module,
                    "_pk_name": name,
                    "_pk_budget": self.budget,
                    "__qualname__": f"stub:{module}.{name}",
                },
            )
        self.seen[key] = value
        return value

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"persistent id {type(pid).__name__} is not a tuple")
        if pid[0] == "module" and len(pid) == 4:  # legacy torch.save of an nn.Module class
            return pid[1]
        if pid[0] != "storage" or len(pid) not in (5, 6):
            raise pickle.UnpicklingError(f"persistent id of kind {show_brief(pid[0])} with {len(pid)} fields")
        _, stype, key, location, numel = pid[:5]
        if not isinstance(stype, StorageType):
            raise pickle.UnpicklingError(
                f"storage {show_brief(key)} has a type that is not a torch storage class"
            )
        if not isinstance(key, str) or not isinstance(location, str) or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError("storage persistent id has a malformed key, location or size")
        ref = StorageRef(key, stype.name, stype.element_size, location, numel)
        old = self.storages.get(key)
        if old is None or (old.nbytes or 0) < (ref.nbytes or 0):
            self.storages[key] = ref
        return ref


class _Walker(_Resolver, pickle.Unpickler):
    """The C unpickler with stub globals: fast, for streams without much collision material."""


_INSERT_TICK = 64  # insertions between two looks at the file's deadline on the guarded path


class _GuardedWalker(_Resolver, pickle._Unpickler):
    """The pure-Python unpickler with stub globals, for streams rich in hash-collision material.

    Every opcode runs as Python code, and the opcodes that insert into a dict or set do it one key at a
    time, looking at the file's deadline (``limits.tick``) every ``_INSERT_TICK`` keys: a dict of 60,000
    keys with equal hashes then stops at the limit as ``exceeds_limits`` instead of holding the thread for
    minutes inside one C call. About 10x slower than the C walker; real pickles never come this way.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def _insert_pairs(self, target: Any, items: list[Any]) -> None:
        for n in range(0, len(items) - 1, 2):
            if n % (2 * _INSERT_TICK) == 0:
                tick("building a pickled dict")
            target[items[n]] = items[n + 1]

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._insert_pairs(self.stack[-1], items)

    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_dict(self) -> None:
        items = self.pop_mark()
        d: dict[Any, Any] = {}
        self._insert_pairs(d, items)
        self.append(d)

    dispatch[pickle.DICT[0]] = load_dict

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        for n, item in enumerate(items):
            if n % _INSERT_TICK == 0:
                tick("building a pickled set")
            target.add(item)

    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_frozenset(self) -> None:
        items = self.pop_mark()
        members = _ticking_set(items)
        tick("building a pickled frozenset")
        self.append(frozenset(members))

    dispatch[pickle.FROZENSET[0]] = load_frozenset


def _ticking_set(items: Any) -> set[Any]:
    """``set(items)``, one member at a time with a look at the deadline every ``_INSERT_TICK`` members."""
    out: set[Any] = set()
    for n, item in enumerate(items):
        if n % _INSERT_TICK == 0:
            tick("building a pickled set")
        out.add(item)
    return out


def _error_text(exc: BaseException) -> str:
    """At most 200 characters of an exception's text; never raises (a repr may recurse or be huge)."""
    try:
        return str(exc)[:200]
    except Exception:  # noqa: BLE001 - str() of an error built from hostile values
        return "unprintable"


def walk_pickle(data: bytes, *, what: str, start: int = 0) -> PickleWalk:
    """Unpickle ``data[start:]`` (one stream, up to its STOP) into stubs; never runs pickled code.

    ``what`` names the stream in messages (e.g. ``"optimizer.pt: optimizer/data.pkl"``). Raises
    ``FormatError("bad_pickle", ...)`` on any malformed, oversized or unsafe stream, and its subclass
    ``PickleTruncated`` when the bytes end before the stream does.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) - start > MAX_PICKLE_BYTES:
        # Only the stream itself counts: scan a capped window (not a copy) so a long file tail costs nothing.
        try:
            end, protocol, risky = _scan(data, start, what, end=start + MAX_PICKLE_BYTES)
        except PickleTruncated:
            raise FormatError(
                "bad_pickle", f"{what}: pickle larger than the {MAX_PICKLE_BYTES >> 20} MiB safety cap"
            ) from None
    else:
        end, protocol, risky = _scan(data, start, what)
    budget = _Budget(4 * (end - start) + (1 << 20))
    stream = io.BytesIO(memoryview(data)[start:end])
    guarded = risky > MAX_COLLISION_MATERIAL or not STR_HASH_IS_SECRET
    walker = (_GuardedWalker if guarded else _Walker)(stream, what, budget)
    try:
        obj = walker.load()
    except LimitExceeded:
        raise
    # UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, RecursionError,
    # MemoryError, struct.error, ...: no fault in hostile bytes may escape as a traceback.
    except Exception as exc:  # noqa: BLE001 - hostile bytes may raise anything
        raise PickleMalformed(
            "bad_pickle", f"{what}: malformed pickle ({type(exc).__name__}: {_error_text(exc)})",
            frozenset(f"{m}.{n}" for m, n in walker.seen),
        ) from None
    return PickleWalk(
        obj,
        dict(walker.storages),
        frozenset(f"{m}.{n}" for m, n in walker.seen),
        tuple(walker.tensors),
        end,
        protocol,
    )
