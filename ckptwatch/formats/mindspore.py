"""Structural check of a MindSpore ``.ckpt`` (protobuf) file without protobuf or MindSpore (§2.5).

Why a hand-written walker: MindSpore's loader parses the whole file into memory with protobuf; a 10 GB
checkpoint must instead be judged by walking the wire format with seeks. The file is a concatenation of
``Checkpoint`` messages, i.e. a sequence of field-1 length-delimited ``Value`` records (tag + TensorProto
or MapTensorProto). Each length is checked against the file size (an overrun is a cut file:
``truncated``), the wire structure inside each record is checked (``bad_protobuf``), and per parameter
(consecutive records with one tag are chunks of it) the ``tensor_content`` bytes must equal
``ceil(numel * bits / 8)`` (``size_mismatch``). Tensor bytes are never read on the cheap path: only
varints, tags and type strings are.

An optional trailer ``b"crc_num" + crc.to_bytes(10, "big")`` holds the CRC-32 of every message byte;
``deep=True`` verifies it (streamed, bounded memory). Limits the format imposes: a file cut exactly at a
record boundary parses as a valid shorter file; the CRC trailer (``has_crc``) and MindFormers'
append-info tags written last (``append_tags_last``) are the evidence of a complete write. Encrypted
files (``enc_key``) do not parse and are reported as such. MindSpore's ``format="safetensors"``
variant is plain safetensors (``__metadata__ {"format": "ms", ...}``): ``safetensors.check_safetensors``
judges it; nothing here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from ckptwatch.formats._io import FormatError
from ckptwatch.formats._show import show, show_int, show_shape
from ckptwatch.formats._stream import crc32_concat, read_all, run_check
from ckptwatch.formats.limits import reserve, tick
from ckptwatch.model import FileCheck, Problem

CRC_TRAILER = b"crc_num"
TRAILER_LEN = 17
APPEND_TAGS = frozenset({"epoch_num", "step_num", "global_step", "loss_scale", "global_batch_size"})
# fmt: off
MS_BITS: dict[str, int] = {"Int8": 8, "UInt8": 8, "Int16": 16, "UInt16": 16, "Int32": 32, "UInt32": 32,
                           "Int64": 64, "UInt64": 64, "Float16": 16, "Float32": 32, "Float64": 64, "Bool": 8,
                           "BFloat16": 16, "Int4": 4}
# fmt: on
MAX_TAG = 1 << 20  # bytes of a tag or type string we are willing to read
MAX_DIMS = 64  # dims of one tensor; MindSpore's own limit is 8 (kMaxDims), numpy's 64
PARAM_COST = 400  # bytes of heap per parameter kept while walking (the _Param, its tag and dims)
WINDOW = 64 << 10
MAX_REPORTED = 5


class _Reader:
    """Small random-access reads of ``fd`` through one cached 64 KiB window (pread, no seeks needed)."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd, self.path = fd, path
        self.base, self.buf = 0, b""

    def read(self, pos: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``pos`` (fewer only at end of file)."""
        off = pos - self.base
        if 0 <= off and off + n <= len(self.buf):
            return self.buf[off : off + n]
        self.buf = os.pread(self.fd, max(n, WINDOW), pos)
        self.base = pos
        return self.buf[:n]

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        """Decode a varint at ``pos`` that must end before ``end``; (value, position after it)."""
        b = self.read(pos, min(10, end - pos))
        result = shift = 0
        for i, x in enumerate(b):
            result |= (x & 0x7F) << shift
            if not x & 0x80:
                return result, pos + i + 1
            shift += 7
        if len(b) >= 10:
            raise _WireError(f"varint at byte {pos} is longer than 10 bytes")
        raise _Overrun(f"varint at byte {pos} runs past byte {end}")


class _WireError(Exception):
    pass


class _Overrun(_WireError):
    pass


@dataclass
class _Tensor:
    dims: list[int] = field(default_factory=list)
    type: str | None = None
    content: tuple[int, int] | None = None  # (file offset, length) of tensor_content


def _fields(r: _Reader, start: int, end: int) -> Any:
    """Yield (field number, wire type, value) of the message in ``[start, end)`` (spans for lengths)."""
    pos = start
    n = 0
    while pos < end:
        n += 1
        if not n & 4095:
            tick("protobuf fields")
        key_at = pos
        key, pos = r.varint(pos, end)
        fno, wt = key >> 3, key & 7
        if fno == 0:
            raise _WireError(f"field number 0 at byte {key_at}")
        if wt == 0:
            value, pos = r.varint(pos, end)
            yield fno, wt, value
        elif wt == 2:
            n, pos = r.varint(pos, end)
            if pos + n > end:
                raise _Overrun(f"field {fno} at byte {key_at} declares {n} bytes, past byte {end}")
            yield fno, wt, (pos, pos + n)
            pos += n
        elif wt in (1, 5):
            pos += 8 if wt == 1 else 4
            if pos > end:
                raise _Overrun(f"fixed-width field {fno} at byte {key_at} runs past byte {end}")
            yield fno, wt, None
        else:
            raise _WireError(f"wire type {wt} (field {fno}) at byte {key_at}")


def _string(r: _Reader, span: tuple[int, int], what: str) -> str:
    s, e = span
    if e - s > MAX_TAG:
        raise _WireError(f"{what} at byte {s} is {e - s} bytes long")
    return r.read(s, e - s).decode("utf-8", "backslashreplace")


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_tensor(r: _Reader, span: tuple[int, int], t: _Tensor) -> None:
    for fno, wt, v in _fields(r, *span):
        if fno == 1 and wt == 0:
            t.dims.append(_signed64(v))
        elif fno == 1 and wt == 2:  # packed dims (accepted like protobuf does)
            pos, end = v
            while pos < end and len(t.dims) <= MAX_DIMS:
                d, pos = r.varint(pos, end)
                t.dims.append(_signed64(d))
        elif fno == 2 and wt == 2:
            t.type = _string(r, v, "tensor_type")
        elif fno == 3 and wt == 2:
            t.content = v  # last one wins, as protobuf merges a repeated singular field
        elif fno in (1, 2, 3):
            raise _WireError(f"TensorProto field {fno} has wire type {wt} in the record at byte {span[0]}")
        if len(t.dims) > MAX_DIMS:
            raise _WireError(f"a tensor in the record at byte {span[0]} has more than {MAX_DIMS} dims")


@dataclass
class _Param:
    tag: str
    dims: tuple[int, ...]
    type: str | None
    nbytes: int
    at: int  # file offset of the first record
    map: bool = False
    content: tuple[int, int] | None = None  # first chunk's content span, to read small scalars


def _walk(r: _Reader, end: int, shown: str) -> list[_Param]:
    params: list[_Param] = []
    pos = 0
    while pos < end:
        if params and not len(params) & 1023:
            tick("records")
            reserve(len(params) * PARAM_COST, f"its {len(params)} parameters")
        rec_at = pos
        try:
            key, pos = r.varint(pos, end)
        except _Overrun:
            raise FormatError(
                "truncated", f"{shown}: record at byte {rec_at} is cut off at byte {end}"
            ) from None
        except _WireError as exc:
            raise FormatError("bad_protobuf", f"{shown}: {exc}") from None
        if key != 0x0A:
            raise FormatError(
                "bad_protobuf",
                f"{shown}: byte {rec_at} starts field {key >> 3} with wire type "
                f"{key & 7}, not a Checkpoint.value record (field 1, length-delimited); an encrypted "
                "checkpoint looks like this too",
            )
        try:
            n, pos = r.varint(pos, end)
        except _WireError:
            raise FormatError(
                "truncated", f"{shown}: record at byte {rec_at} is cut off at byte {end}"
            ) from None
        if pos + n > end:
            raise FormatError(
                "truncated",
                f"{shown}: record at byte {rec_at} declares {n} bytes, but the data ends at "
                f"byte {end} ({pos + n - end} bytes missing)",
            )
        try:
            params_add(params, r, rec_at, (pos, pos + n))
        except _WireError as exc:
            raise FormatError("bad_protobuf", f"{shown}: record at byte {rec_at}: {exc}") from None
        pos += n
    return params


def params_add(params: list[_Param], r: _Reader, rec_at: int, span: tuple[int, int]) -> None:
    """Parse one Value record and add it to ``params`` (merging chunks of the previous parameter)."""
    tag: str | None = None
    tensor: _Tensor | None = None
    is_map = False
    for fno, wt, v in _fields(r, *span):
        if fno == 1:
            if wt != 2:
                raise _WireError(f"Value.tag has wire type {wt}")
            tag = _string(r, v, "tag")
        elif fno == 2:
            if wt != 2:
                raise _WireError(f"Value.tensor has wire type {wt}")
            tensor = tensor or _Tensor()
            _parse_tensor(r, v, tensor)
        elif fno == 3:
            if wt != 2:
                raise _WireError(f"Value.maptensor has wire type {wt}")
            is_map = True
    if tag is None:
        raise _WireError("Value has no tag (a required field)")
    if is_map:
        params.append(_Param(tag, (), "map", 0, rec_at, map=True))
        return
    if tensor is None:
        raise _WireError(f"Value {show(tag)} has neither a tensor nor a maptensor")
    if tensor.type is None or tensor.content is None:
        raise _WireError(f"TensorProto of {show(tag)} lacks its required tensor_type or tensor_content")
    nbytes = tensor.content[1] - tensor.content[0]
    last = params[-1] if params else None
    if last is not None and last.tag == tag and not last.map:  # another chunk of the same parameter
        last.nbytes += nbytes
        return
    params.append(_Param(tag, tuple(tensor.dims), tensor.type, nbytes, rec_at, content=tensor.content))


def _expected_bytes(p: _Param) -> int | None:
    bits = MS_BITS.get(p.type or "")
    if bits is None or any(d < 0 for d in p.dims):
        return None
    numel = 1 if p.dims in ((), (0,)) else math.prod(p.dims)  # MindSpore writes a scalar as dims [0]
    return (numel * bits + 7) // 8  # integers: dims of 2^63 overflow a float


def check_ms_ckpt(path: str, *, deep: bool = False, opened: int | None = None) -> FileCheck:
    """Judge one MindSpore protobuf checkpoint by walking its records with seeks.

    facts: ``params`` ({tag: (dims, type, nbytes)}), ``has_crc`` (bool), ``append_tags_last`` (bool: the
    file ends with MindFormers' epoch_num/step_num/global_step/loss_scale tags), ``step`` (global_step or
    step_num value when stored as a small integer tensor, else None), ``size``. ``opened``: as in
    ``run_check``.
    """
    return run_check(path, lambda fd, shown, size, problems, facts:
                     _check(fd, path, shown, size, deep, problems, facts), opened=opened)


def _check(
    fd: int, path: str, shown: str, size: int, deep: bool, problems: list[Problem], facts: dict[str, Any]
) -> None:
    r = _Reader(fd, path)
    end = size
    trailer = os.pread(fd, TRAILER_LEN, size - TRAILER_LEN) if size >= TRAILER_LEN else b""
    has_crc = trailer[:7] == CRC_TRAILER
    if has_crc:
        end = size - TRAILER_LEN
    facts["has_crc"] = has_crc
    params = _walk(r, end, shown)
    facts["params"] = {p.tag: (p.dims, p.type, p.nbytes) for p in params}
    tags = [p.tag for p in params]
    appended = [t in APPEND_TAGS for t in tags]
    n_app = sum(appended)
    facts["append_tags_last"] = n_app > 0 and all(appended[len(tags) - n_app :])
    facts["step"] = _step(r, params)

    wrong = []
    for p in params:
        want = _expected_bytes(p)
        if want is not None and want != p.nbytes:
            wrong.append(
                f"{show(p.tag)} ({p.type} {show_shape(p.dims)}, record at byte {p.at}) holds {p.nbytes} "
                f"bytes, needs {show_int(want)}"
            )
    if wrong:
        problems.append(
            Problem(
                "size_mismatch",
                shown,
                f"{shown}: "
                + "; ".join(wrong[:MAX_REPORTED])
                + (f" (and {len(wrong) - MAX_REPORTED} more)" if len(wrong) > MAX_REPORTED else ""),
            )
        )
    if deep:
        if has_crc:
            stored = int.from_bytes(trailer[7:], "big")
            crc = crc32_concat(fd, [(0, end)], path)
            if crc != stored:
                problems.append(
                    Problem(
                        "crc_mismatch",
                        shown,
                        f"{shown}: CRC-32 of bytes 0..{end} is {crc}, the trailer says {stored}",
                    )
                )
        else:
            read_all(fd, 0, size, path)


def _step(r: _Reader, params: list[_Param]) -> int | None:
    by_tag = {p.tag: p for p in params}
    for tag in ("global_step", "step_num"):
        p = by_tag.get(tag)
        if p is None or p.content is None or p.type not in ("Int32", "Int64", "UInt32", "UInt64"):
            continue
        s, e = p.content
        if e - s not in (4, 8) or p.nbytes != e - s:
            continue
        return int.from_bytes(r.read(s, e - s), "little", signed=p.type.startswith("Int"))
    return None
