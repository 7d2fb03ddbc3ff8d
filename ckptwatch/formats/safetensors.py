"""Structural check of a ``.safetensors`` file: the Rust reader's rules, in pure Python (§2.3).

Why not the ``safetensors`` library: ``safe_open`` does the same header validation but its error
strings are not a stable API, it cannot tell *truncated* from *trailing data*, and it mmaps the whole
file (a file truncated under a reader then faults with SIGBUS). The rules replicated here are those of
``SafeTensors::read_metadata`` and ``Metadata::validate`` (safetensors 0.8.0; a property test compares
verdicts with the real library): 8-byte little-endian header length ``N <= 100_000_000``; ``8 + N <=
size``; a UTF-8 JSON object whose entries have a known ``dtype``, a ``shape`` of non-negative integers
and 2 ``data_offsets``; entries sorted by offsets tile the buffer from 0 with no gap or overlap; each
spans exactly ``prod(shape) * bits / 8`` bytes (overflow-checked as Rust does); and ``8 + N + last_end``
equals the file size exactly, which tells a cut file (``truncated``) from one with junk at the end
(``trailing_data``).

Only the header is read by default, so the cost depends on the tensor count, not the file size. One
more cheap hint comes from the filesystem: safetensors builds between commits 987b738 and 24b0b285 (tag
v0.8.0-rc.0) set the final size before writing, so a crashed writer leaves a file that passes every
size rule but whose tail was never written. Such a tail is a sparse hole; when ``st_blocks`` shows the
file is not fully allocated we ask ``SEEK_DATA``/``SEEK_HOLE`` whether the data region ends in a hole
(``zero_filled``, a warning). It cannot be an error: a sparse copy (``cp --sparse=always``, ``rsync -S``)
of a file whose last tensor is legitimately all zeros (a LoRA B matrix at initialisation) looks the
same, as do filesystems that store zero blocks as holes (ZFS with compression).

``deep=True`` reads every byte (page-aligned 4 MiB buffer) so I/O errors surface; ``scan_values=True``
also flags NaN/Inf in F16/BF16/F32/F64 tensors and all-zero float tensors, without numpy: strided byte
slices pick the exponent bytes and ``bytes.find`` spots candidates (about 2 GB/s for F32 here).
"""

from __future__ import annotations

import errno
import functools
import json
import os
from typing import Any, NamedTuple

from ckptwatch.formats._io import FormatError, read_exact_at
from ckptwatch.formats._show import show
from ckptwatch.formats._stream import read_all, run_check
from ckptwatch.formats.limits import reserve, reserve_json, tick
from ckptwatch.model import FileCheck, Problem

MAX_HEADER_SIZE = 100_000_000
USIZE_MAX = (1 << 64) - 1
MAX_REPORTED = 5
SCAN_PIECE = 256 << 10  # bytes handed to the value scan at a time

# Dtype -> bits (safetensors/src/tensor.rs Dtype::bitsize).
# fmt: off
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
    "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
FLOAT_DTYPES = frozenset({"F4", "F6_E2M3", "F6_E3M2", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ",
                          "F8_E5M2FNUZ", "F16", "BF16", "F32", "F64", "C64"})
# fmt: on


class TensorInfo(NamedTuple):
    """One header entry. ``begin``/``end`` are offsets into the data buffer (file offset ``data_start + x``).

    A NamedTuple: immutable, and cheaper than the slots dataclass it was, both to create at import (~0.1
    against ~0.5 ms; every ``latest`` imports this module) and per tensor (~0.7 against ~1.3 us to build).
    """

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class _NegativeInt:
    """A JSON integer literal with a minus sign (serde reads ``-0`` as a float; every one is invalid)."""

    def __init__(self, text: str) -> None:
        self.text = text


def _parse_int(text: str) -> int | _NegativeInt:
    return _NegativeInt(text) if text.startswith("-") else int(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _size_text(n: int) -> str:
    for unit, shift in (("GB", 30), ("MB", 20), ("KB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.0f} {unit}" if v >= 10 or v == int(v) else f"{v:.1f} {unit}"
    return f"{n} bytes"


# --------------------------------------------------------------------------------------------------
# Header


def parse_header(header: bytes, shown: str) -> tuple[dict[str, TensorInfo], dict[str, str] | None, int]:
    """Validate the JSON header bytes; (tensors, metadata, end of the tensor data in the buffer).

    Raises ``FormatError`` for everything the Rust reader rejects, except the final size equality,
    which the caller turns into truncated / trailing_data.
    """
    # The parse cannot be interrupted: refuse it up front when the objects it would build do not fit the
    # file's memory allowance (a 40 MB header of empty objects builds ~1 GB of dicts).
    reserve_json(header, f"parsing its {len(header)}-byte JSON header")
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(
            "bad_header", f"{shown}: header is not valid UTF-8 (byte {8 + exc.start})"
        ) from None
    try:
        # serde reads "-0" as a float (rejected); Python as int 0. Hook ints only when "-0" occurs at all.
        hook = _parse_int if "-0" in text else int
        doc = json.loads(text, parse_int=hook, parse_constant=_reject_constant)
    except RecursionError:
        raise FormatError("bad_header", f"{shown}: header JSON is nested too deeply") from None
    except ValueError as exc:
        pos = getattr(exc, "pos", None)
        where = f" at byte {8 + len(text[:pos].encode('utf-8'))}" if isinstance(pos, int) else ""
        raise FormatError(
            "bad_header", f"{shown}: header is not valid JSON{where} ({getattr(exc, 'msg', exc)})"
        ) from None
    if not isinstance(doc, dict):
        raise FormatError("bad_header", f"{shown}: header is a JSON {type(doc).__name__}, not an object")
    metadata: dict[str, str] | None = None
    tensors: dict[str, TensorInfo] = {}
    for i, (name, entry) in enumerate(doc.items()):
        if i & 1023 == 1023:
            tick("header entries")
        if not name.isascii():
            _check_text(name, shown, "a tensor name")
        if name == "__metadata__":
            if entry is None:
                continue
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise FormatError("bad_header", f"{shown}: __metadata__ must map strings to strings")
            for k, v in entry.items():
                _check_text(k, shown, "a __metadata__ key")
                _check_text(v, shown, "a __metadata__ value")
            metadata = entry
            continue
        tensors[name] = _tensor_info(name, entry, shown)

    # Metadata::validate: sorted by (begin, end), contiguous from 0, exact byte spans.
    start = 0
    if len(tensors) > 1024:
        tick("sorting the tensors")
    for i, (_, _, name, t) in enumerate(sorted((t.begin, t.end, name, t) for name, t in tensors.items())):
        if i & 1023 == 1023:
            tick("tensor offsets")
        if t.begin != start or t.end < t.begin:
            if t.begin > start:
                why = f"starts at {t.begin} but the previous tensor ends at {start} (a gap)"
            elif t.end < t.begin:
                why = f"ends at {t.end}, before its start {t.begin}"
            else:
                why = f"starts at {t.begin}, inside the previous tensor which ends at {start}"
            raise FormatError("bad_header", f"{shown}: tensor {name!r} {why}")
        start = t.end
        nelements = 1
        for d in t.shape:
            nelements *= d
            if nelements > USIZE_MAX:
                raise FormatError(
                    "bad_header", f"{shown}: tensor {name!r} shape {list(t.shape)} overflows 64 bits"
                )
        nbits = nelements * DTYPE_BITS[t.dtype]
        if nbits > USIZE_MAX:
            raise FormatError(
                "bad_header", f"{shown}: tensor {name!r} shape {list(t.shape)} overflows 64 bits"
            )
        if nbits % 8:
            raise FormatError(
                "bad_header",
                f"{shown}: tensor {name!r} ({t.dtype} x {nelements}) is not a whole number of bytes",
            )
        if t.end - t.begin != nbits // 8:
            raise FormatError(
                "size_mismatch",
                f"{shown}: tensor {name!r} spans {t.end - t.begin} bytes "
                f"[{t.begin}, {t.end}) but {t.dtype} x {list(t.shape)} needs {nbits // 8}",
            )
    return tensors, metadata, start


def _check_text(s: str, shown: str, what: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # a lone \ud800 escape: Python accepts it, serde_json does not
        raise FormatError("bad_header", f"{shown}: {what} holds an invalid \\u surrogate escape") from None


def _tensor_info(name: str, entry: Any, shown: str) -> TensorInfo:
    if type(entry) is not dict:
        raise FormatError(
            "bad_header", f"{shown}: tensor {name!r} is a JSON {type(entry).__name__}, not an object"
        )
    try:
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    except KeyError as exc:
        raise FormatError("bad_header", f"{shown}: tensor {name!r} has no {exc.args[0]}") from None
    if type(dtype) is not str or dtype not in DTYPE_BITS:
        raise FormatError("bad_header", f"{shown}: tensor {name!r} has unknown dtype {show(dtype, 40)}")
    if type(shape) is not list or not _usizes(shape):
        raise FormatError(
            "bad_header",
            f"{shown}: tensor {name!r} shape {_show_json(shape)} is not a list of non-negative integers",
        )
    if type(offsets) is not list or len(offsets) != 2 or not _usizes(offsets):
        raise FormatError(
            "bad_header",
            f"{shown}: tensor {name!r} data_offsets {_show_json(offsets)} are not 2 non-negative integers",
        )
    return TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])


def _usizes(values: list[Any]) -> bool:
    for v in values:
        if type(v) is not int or v < 0 or v > USIZE_MAX:
            return False
    return True


def _show_json(v: Any) -> str:
    """A header value in a message: bounded, whatever it holds (see formats/_show.py)."""
    if isinstance(v, list):
        return (
            "["
            + ", ".join(x.text[:40] if isinstance(x, _NegativeInt) else show(x, 40) for x in v[:8])
            + (", ...]" if len(v) > 8 else "]")
        )
    return show(v, 60) if not isinstance(v, _NegativeInt) else v.text[:60]


# --------------------------------------------------------------------------------------------------
# The check


def check_safetensors(path: str, *, deep: bool = False, scan_values: bool = False,
                      opened: int | None = None) -> FileCheck:
    """Judge one safetensors file; read only its header unless ``deep`` (``scan_values`` implies deep).

    facts: ``tensors`` ({name: TensorInfo}), ``metadata`` (the ``__metadata__`` dict or None),
    ``header_len`` (N), ``data_start`` (8 + N), ``size`` (file size). ``opened``: as in ``run_check``.
    """
    return run_check(path, lambda fd, shown, size, problems, facts: _check(
        fd, path, shown, size, deep or scan_values, scan_values, problems, facts), opened=opened)


def _check(
    fd: int,
    path: str,
    shown: str,
    size: int,
    deep: bool,
    scan_values: bool,
    problems: list[Problem],
    facts: dict[str, Any],
) -> None:
    if size < 8:
        raise FormatError("truncated", f"{shown} is {size} bytes, shorter than the 8-byte header length")
    n = int.from_bytes(read_exact_at(fd, 0, 8, path), "little")
    facts["header_len"] = n
    if n > MAX_HEADER_SIZE:
        raise FormatError(
            "bad_header",
            f"{shown} header says {_size_text(n)} ({n} bytes), more than the 100 MB the format allows",
        )
    if 8 + n > size:
        raise FormatError(
            "truncated",
            f"{shown} header says {n} bytes, but the file ends at byte {size} "
            f"(the header needs bytes 8..{8 + n})",
        )
    if n == 0 and _unwritten_from(fd, 0, size) == 0:
        raise FormatError(
            "bad_header",
            f"{shown} ({size} bytes) is an unwritten sparse hole from byte 0: the header was never written",
        )
    reserve(n, f"its {n}-byte header")
    header = read_exact_at(fd, 8, n, path)
    tensors, metadata, buffer_end = parse_header(header, shown)
    facts.update(tensors=tensors, metadata=metadata, data_start=8 + n)
    expected = 8 + n + buffer_end
    if expected > size:
        raise FormatError(
            "truncated",
            f"{shown} is {size} bytes, but its header places tensor data up to byte "
            f"{expected} ({expected - size} bytes missing)",
        )
    if expected < size:
        raise FormatError(
            "trailing_data",
            f"{shown} is {size} bytes, but its header places the last tensor byte "
            f"at {expected} ({size - expected} extra bytes)",
        )
    hole = _unwritten_from(fd, 8 + n, size)
    if hole is not None:
        problems.append(_zero_filled_problem(shown, tensors, 8 + n, hole, size))
    if deep:
        scan = _ValueScan(tensors, 8 + n) if scan_values else None
        read_all(fd, 0, size, path, scan.feed if scan else None)
        if scan:
            problems.extend(scan.problems(shown))


def _unwritten_from(fd: int, start: int, size: int) -> int | None:
    """Offset where a trailing never-written (sparse) region begins, if ``[start, size)`` ends in one."""
    st = os.fstat(fd)
    if st.st_blocks * 512 >= size or not hasattr(os, "SEEK_DATA"):
        return None
    pos, last_end = start, start
    for _ in range(100_000):  # extents; a pathological file is simply not judged
        if pos >= size:
            break
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                break
            return None  # SEEK_DATA unsupported here
        h = os.lseek(fd, d, os.SEEK_HOLE)
        last_end = pos = h
    else:
        return None
    return last_end if last_end < size else None


def _zero_filled_problem(
    shown: str, tensors: dict[str, TensorInfo], data_start: int, hole: int, size: int
) -> Problem:
    rel = hole - data_start
    first = min(
        (t for t in tensors.items() if t[1].end > rel and t[1].end > t[1].begin),
        key=lambda kv: kv[1].begin,
        default=None,
    )
    total = size - data_start
    pct = 100.0 * (size - max(hole, data_start)) / total if total else 100.0
    where = f"; the first tensor affected is {first[0]!r}" if first else ""
    return Problem(
        "zero_filled",
        shown,
        f"{shown}: bytes {max(hole, data_start)}..{size} ({pct:.0f}% of the "
        f"tensor data) are an unwritten sparse hole, as a writer that preallocated the file and died "
        f"leaves it{where}",
    )


# --------------------------------------------------------------------------------------------------
# Value scan (--scan-values)


# Per float dtype: element size, index of the exponent's high byte, bytes that may start a NaN/Inf there,
# and (index, bytes) of the low exponent byte that must also match (None when one byte decides).
def _table(pred: Any) -> bytes:
    return bytes(1 if pred(v) else 0 for v in range(256))


@functools.cache
def _nan_rules() -> dict[str, tuple[int, int, bytes, tuple[int, bytes] | None]]:
    """Built on first use (``--scan-values`` only), not at import (~0.3 ms of every start)."""
    # fmt: off
    return {
        "F16": (2, 1, _table(lambda v: v & 0x7C == 0x7C), None),
        "BF16": (2, 1, _table(lambda v: v & 0x7F == 0x7F), (0, _table(lambda v: v & 0x80))),
        "F32": (4, 3, _table(lambda v: v & 0x7F == 0x7F), (2, _table(lambda v: v & 0x80))),
        "C64": (4, 3, _table(lambda v: v & 0x7F == 0x7F), (2, _table(lambda v: v & 0x80))),
        "F64": (8, 7, _table(lambda v: v & 0x7F == 0x7F), (6, _table(lambda v: v & 0xF0 == 0xF0))),
    }
    # fmt: on


_CANDIDATES: dict[bytes, tuple[bytes, ...]] = {}


def _candidates(table: bytes) -> tuple[bytes, ...]:
    """The byte values a translate table marks (2 for F32/BF16/F64, 8 for F16)."""
    hit = _CANDIDATES.get(table)
    if hit is None:
        hit = _CANDIDATES[table] = tuple(bytes([v]) for v in range(256) if table[v])
    return hit


class _ValueScan:
    """Fed the file in order (offset, chunk); tracks NaN/Inf and all-zero per float tensor."""

    def __init__(self, tensors: dict[str, TensorInfo], data_start: int) -> None:
        items = [
            (data_start + t.begin, data_start + t.end, name, t.dtype)
            for name, t in tensors.items()
            if t.dtype in FLOAT_DTYPES and t.end > t.begin
        ]
        self.items = sorted(items)
        self.i = 0
        self.carry = b""
        self.seen = 0  # elements of the current tensor already scanned
        self.nonzero = False
        self.nan_at: int | None = None
        self.nan: list[tuple[str, int]] = []
        self.zero: list[str] = []

    def feed(self, off: int, chunk: memoryview) -> None:
        end = off + len(chunk)
        while self.i < len(self.items):
            b, e, name, dtype = self.items[self.i]
            if b >= end:
                return
            lo, hi = max(b, off), min(e, end)
            # Small pieces: multi-MiB temporaries make glibc map and trim memory on every chunk (3x slower).
            for a in range(lo, hi, SCAN_PIECE):
                self._feed_tensor(dtype, bytes(chunk[a - off : min(hi, a + SCAN_PIECE) - off]))
            if e > end:
                return
            self._finish(name)
            self.i += 1

    def _feed_tensor(self, dtype: str, data: bytes) -> None:
        if not self.nonzero and data != bytes(len(data)):
            self.nonzero = True
        rule = _nan_rules().get(dtype)
        if rule is None or self.nan_at is not None:
            return
        es, hi_i, hi_t, lo = rule
        if self.carry:
            data = self.carry + data
        whole = len(data) - len(data) % es
        self.carry = data[whole:]
        if whole != len(data):
            data = data[:whole]
        hi_raw = data[hi_i::es]
        # Cheap screen: memchr for the few byte values that can start a NaN/Inf (real weights have none).
        if all(hi_raw.find(v) < 0 for v in _candidates(hi_t)):
            self.seen += whole // es
            return
        hi = hi_raw.translate(hi_t)
        first = hi.find(1)
        if first >= 0 and lo is not None:
            both = int.from_bytes(hi, "little") & int.from_bytes(data[lo[0] :: es].translate(lo[1]), "little")
            first = ((both & -both).bit_length() - 1) // 8 if both else -1
        if first >= 0:
            self.nan_at = self.seen + first
        self.seen += whole // es

    def _finish(self, name: str) -> None:
        if self.nan_at is not None:
            self.nan.append((name, self.nan_at))
        if not self.nonzero:
            self.zero.append(name)
        self.carry, self.seen, self.nonzero, self.nan_at = b"", 0, False, None

    def problems(self, shown: str) -> list[Problem]:
        out = []
        if self.nan:
            listed = ", ".join(f"{n!r} (first at element {at})" for n, at in self.nan[:MAX_REPORTED])
            more = f" and {len(self.nan) - MAX_REPORTED} more" if len(self.nan) > MAX_REPORTED else ""
            out.append(
                Problem("nan_inf", shown, f"{shown}: {len(self.nan)} tensors hold NaN or Inf: {listed}{more}")
            )
        if self.zero:
            listed = ", ".join(repr(n) for n in self.zero[:MAX_REPORTED])
            more = f" and {len(self.zero) - MAX_REPORTED} more" if len(self.zero) > MAX_REPORTED else ""
            out.append(
                Problem(
                    "all_zero_tensor",
                    shown,
                    f"{shown}: {len(self.zero)} float tensors are all zeros: {listed}{more}",
                )
            )
        return out
