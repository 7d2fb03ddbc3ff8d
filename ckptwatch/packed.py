"""Kept verdicts held small: what the judgement cache remembers of a settled checkpoint, shared.

Why: the service keeps, for every settled checkpoint, the judgement and verdict its rescans reuse. As
objects that cost ~4.5 KB a checkpoint (450 MiB at 100,000 checkpoints, issue 13): every real Trainer
checkpoint carries two ``needs_weights_only_false`` findings of ~300 characters, a LoRA checkpoint its
adapter's safetensors header, and each of those strings embeds the checkpoint's own path. Take that
path out and nearly everything is the same from one checkpoint to the next: the same findings, the same
ranks, the same weights files and sizes.

So a kept record is encoded as nested tuples in which the checkpoint's path is replaced by ``MARK``, and
its strings and containers are shared through one table: the parts 100,000 checkpoints have in common
are held once, and a checkpoint costs its own numbers (step, size, mtime) and a few references.
``decode`` builds equal objects again (new ones: nothing may rely on identity). A value of a type this
module does not know, or a string that already holds ``MARK``, raises ``Unpackable``; the caller then
keeps the objects as they are (correct, only larger).

Exactness: ``decode(encode(x, p), p) == x`` for every value encode accepts. Types survive: ``True``,
``1`` and ``1.0`` are equal in Python, so a table keyed by equality would merge them; booleans,
integral floats and enum members are therefore tagged with their type, never shared bare.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from ckptwatch.layouts.base import Judgement
from ckptwatch.model import Record

MARK = "\x00"  # never part of a path: POSIX names cannot hold NUL
MAX_SHARED = 200_000  # entries of the sharing table; when full it starts afresh (a bound, not a cache)

_shared: dict[Any, Any] = {}


class Unpackable(Exception):
    """The value holds something ``encode`` does not know how to rebuild exactly."""


class _Const:
    """A packed part that holds no path and cannot change (a ``Ranks``, a ``Status``, a tuple of them, an
    integral float): decoded once, when packed, and handed out as it is by ``decode``. Why: a rescan decodes
    every kept checkpoint, and rebuilding these each time doubled its cost; an immutable value may be
    shared. Equal and hashed by its packed form (so ``1`` and ``True`` stay apart)."""

    __slots__ = ("_hash", "key", "value")

    def __init__(self, key: tuple[Any, ...], value: Any) -> None:
        self.key = key
        self.value = value
        self._hash = hash(key)

    def __eq__(self, other: object) -> bool:
        return type(other) is _Const and self.key == other.key

    def __hash__(self) -> int:
        return self._hash


def _fixed(part: Any) -> bool:
    """Whether a packed child decodes to the same immutable value for every path."""
    t = type(part)
    return t is _Const or part is None or t is int or (t is float) or (t is str and MARK not in part)


def encode(value: Any, path: str) -> Any:
    """``value`` as hashable nested tuples, ``path`` replaced by ``MARK`` in its strings, parts shared."""
    t = type(value)
    if t is str:
        if MARK in value:
            raise Unpackable("a string holds the mark")
        if path in value:
            value = value.replace(path, MARK)
        return _share(value)
    if value is None or t is int:
        return value
    if t is float:  # 1.0 is not 1, and -0.0 is not 0.0: integral floats are tagged
        return value if not value.is_integer() else _share(_Const((float, repr(value)), value))
    if t is bool:
        return _share(_Const((bool, value), value))
    immutable = False  # its decoded value cannot change: a candidate for _Const
    if t is tuple or t is list:
        out: tuple[Any, ...] = (t, *[encode(v, path) for v in value])
        immutable = t is tuple
    elif t is dict:
        out = (dict, *[x for k, v in value.items() for x in (encode(k, path), encode(v, path))])
    elif isinstance(value, tuple) and hasattr(t, "_fields"):  # a NamedTuple (a safetensors TensorInfo)
        out = (t, *[encode(v, path) for v in value])
        immutable = True
    elif isinstance(value, enum.Enum):
        return _share(_Const((t, value.value), value))
    elif isinstance(value, Record):  # read-only fields (model.Record)
        out = (t, *[encode(getattr(value, name), path) for name in t.__slots__])
        immutable = True
    elif t is Judgement:
        if value.__dict__.keys() != _JUDGEMENT_FIELDS_SET:
            raise Unpackable("a judgement with fields of its own")
        out = (t, *[encode(getattr(value, name), path) for name in _JUDGEMENT_FIELDS])
    elif dataclasses.is_dataclass(value) and all(f.init for f in dataclasses.fields(value)):
        out = (t, *[encode(getattr(value, f.name), path) for f in dataclasses.fields(value)])
    else:
        raise Unpackable(f"cannot pack a {t.__name__}")
    if immutable and all(_fixed(part) for part in out[1:]):
        return _share(_Const(out, decode(out, path)))
    return _share(out)


def decode(packed: Any, path: str) -> Any:
    """The value ``encode`` was given (equal; the same object only for an immutable part with no path)."""
    t = type(packed)
    if t is str:
        if packed == MARK:
            return path  # the checkpoint's own path: the caller's string, not a copy
        return packed.replace(MARK, path) if MARK in packed else packed
    if t is _Const:
        return packed.value
    if t is not tuple:
        return packed
    tag = packed[0]
    if tag is list:
        return [decode(v, path) for v in packed[1:]]
    if tag is tuple:
        return tuple([decode(v, path) for v in packed[1:]])
    if tag is dict:
        items = packed[1:]
        return {decode(items[i], path): decode(items[i + 1], path) for i in range(0, len(items), 2)}
    return tag(*[decode(v, path) for v in packed[1:]])


def decode_fields(packed: Any, path: str, start: int = 1) -> list[Any]:
    """The decoded fields of a packed record from ``start`` (1: all): for a caller that builds the
    record itself with some fields of its own (the engine's kept verdicts)."""
    return [decode(v, path) for v in packed[start:]]


def _share(value: Any) -> Any:
    found = _shared.get(value)
    if found is not None:
        return found
    if len(_shared) >= MAX_SHARED:
        _shared.clear()  # records packed before keep their parts; new ones share among themselves
    _shared[value] = value
    return value


_JUDGEMENT_FIELDS = ("problems", "present_ranks", "expected_ranks", "step", "rank_file", "facts")
_JUDGEMENT_FIELDS_SET = frozenset(_JUDGEMENT_FIELDS)
