"""Structural checks of ``torch.save`` files: the zip format (§2.1) and the legacy format (§2.2).

Why not ``torch.load``: it needs torch (seconds to import), executes pickled callables unless
``weights_only``, and even then loads a zip whose tensor bytes were bit-flipped (no CRC check, layouts
Appendix B E8). Here the cheap check reads only the zip central directory and ``data.pkl`` (walked with
the stub unpickler, never executed) and proves every storage the pickle references has a record big
enough for it; ``deep=True`` adds the CRC-32 of every record, streamed through a page-aligned buffer.

The zip reader works on a byte window of a file so DCP can check the torch zips embedded in its
``.distcp`` files (``check_torch_window``). Files that start with a pickle are the legacy format
(magic-number pickle, protocol, sys_info, object, storage keys, then raw storages; the size formula is
exact), or, when the first pickle is not torch's magic number, a plain pickle that must end at EOF.
"""

from __future__ import annotations

import errno
import io
import os
import struct
import zlib
from typing import TYPE_CHECKING, Any

from ckptwatch.formats._io import FormatError, open_regular_file, read_exact_at
from ckptwatch.formats._show import show, show_brief, show_int, show_shape
from ckptwatch.formats._stream import crc32_ranges, display, read_all, run_check
from ckptwatch.formats.limits import reserve, reserve_seconds, tick
from ckptwatch.formats.pickle_policy import pickle_problems
from ckptwatch.formats.pickle_stub import (
    MAX_PICKLE_BYTES,
    PickleMalformed,
    PickleTruncated,
    PickleWalk,
    StorageRef,
    Stub,
    TensorRef,
    walk_pickle,
)
from ckptwatch.model import FileCheck, Problem

if TYPE_CHECKING:  # imported where used: a structural check of a stored torch zip never needs it
    import zipfile

ZIP_MAGIC = b"PK\x03\x04"
EOCD_SIG = b"PK\x05\x06"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
MAX_REPORTED = 5  # per-kind problems listed one by one; the rest are counted in the last message
MAX_SINGLE_READ = MAX_PICKLE_BYTES + (1 << 20)  # central directory or data.pkl in one read


# --------------------------------------------------------------------------------------------------
# A byte window of a file, as the file object zipfile wants


class _BadSeek(OSError):
    """A seek before the window start: a format fault (zipfile probing a too-short file), not an I/O error."""


class _Window(io.RawIOBase):
    """Bytes ``[base, base+length)`` of ``fd`` as a seekable read-only file, read with pread."""

    def __init__(self, fd: int, base: int, length: int, label: str) -> None:
        super().__init__()
        self.fd, self.base, self.length, self.pos, self.label = fd, base, length, 0, label
        self.error: OSError | None = None  # zipfile turns read errors into BadZipFile; keep the real one

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        new = offset if whence == 0 else self.pos + offset if whence == 1 else self.length + offset
        if new < 0:
            raise _BadSeek(errno.EINVAL, "seek before the start of the data")
        self.pos = new
        return new

    def read(self, size: int = -1) -> bytes:
        # zipfile reads the whole central directory in one call, sized by the end record: a corrupt
        # record must not make us read a multi-GB file into memory.
        if size < 0 or size > MAX_SINGLE_READ:
            want = self.length - self.pos if size < 0 else size
            if want > MAX_SINGLE_READ:
                raise FormatError(
                    "bad_zip",
                    f"{self.label}: the zip asks to read {want} bytes at once (more than the "
                    f"{MAX_SINGLE_READ >> 20} MiB cap): its end record is corrupt",
                )
        return super().read(size)  # type: ignore[no-any-return]

    def readinto(self, b: Any) -> int:
        n = min(len(b), self.length - self.pos)
        if n <= 0:
            return 0
        try:
            got = os.preadv(self.fd, [memoryview(b)[:n]], self.base + self.pos)
        except OSError as exc:
            where = f"bytes {self.base + self.pos}..{self.base + self.pos + n}"
            exc.ckptwatch_where = where  # type: ignore[attr-defined]
            self.error = exc
            raise
        self.pos += got
        return got


# --------------------------------------------------------------------------------------------------
# Public API


def check_torch_file(path: str, *, deep: bool = False, read_pickle: bool = True,
                     opened: int | None = None) -> FileCheck:
    """Judge one ``torch.save`` file (zip or legacy) without torch and without executing its pickle.

    Every pickle is walked and its globals judged (``pickle_policy``): ``unsafe_pickle`` when loading the
    file would run code, ``needs_weights_only_false`` when ``torch.load(weights_only=True)`` refuses it.
    ``read_pickle`` is kept for callers that say whether they read ``facts["object"]``; a stored zip is
    read without ``zipfile`` either way (one directory read, one ``data.pkl`` read, a cached walk).

    facts: ``format`` ("zip" | "legacy" | "pickle"), ``prefix`` (zip top-level folder, "" otherwise),
    ``object`` (the walked object graph, for ``pickle_stub.get``), ``storages`` ({key: StorageRef}),
    ``globals`` (frozenset of "module.name"), ``size``. ``opened``: as in ``run_check``.
    """
    def body(fd: int, shown: str, size: int, problems: list[Problem], facts: dict[str, Any]) -> None:
        head = os.pread(fd, 4, 0)
        if head.startswith(ZIP_MAGIC):
            if not deep and _fast_zip_check(fd, shown, size, problems, facts):
                return
            _check_zip(fd, path, shown, 0, size, deep, problems, facts)
        elif head[:1] == b"\x80":
            _check_legacy(fd, path, shown, size, deep, problems, facts)
        elif len(head) < 4 and ZIP_MAGIC.startswith(head):
            raise FormatError("truncated", f"{shown} is {size} bytes, too short for a torch.save zip")
        else:
            raise FormatError(
                "bad_header",
                f"{shown} starts with {head!r}: neither a torch.save zip (PK\\x03\\x04) nor a pickle",
            )

    return run_check(path, body, opened=opened)


def check_torch_window(
    path: str, offset: int, length: int, *, deep: bool = False, label: str | None = None
) -> FileCheck:
    """Judge the torch zip held in bytes ``[offset, offset+length)`` of ``path`` (a DCP byte item).

    ``label`` names the window in messages (default "path[offset:offset+length]"). Problems name
    ``path`` as their file. Same facts as ``check_torch_file`` (format is always "zip").
    """
    label = label or f"{display(path)}[{offset}:{offset + length}]"

    def body(fd: int, shown: str, size: int, problems: list[Problem], facts: dict[str, Any]) -> None:
        head = os.pread(fd, 4, offset) if length >= 4 else b""
        if head != ZIP_MAGIC:
            raise FormatError(
                "bad_zip", f"{label} does not start with a zip record (PK\\x03\\x04); it starts with {head!r}"
            )
        _check_zip(fd, path, label, offset, length, deep, problems, facts, file_label=shown)

    return run_check(path, body)


# --------------------------------------------------------------------------------------------------
# Zip format


def _check_zip(
    fd: int,
    path: str,
    label: str,
    base: int,
    length: int,
    deep: bool,
    problems: list[Problem],
    facts: dict[str, Any],
    file_label: str | None = None,
    read_pickle: bool = True,
) -> None:
    import zipfile

    shown = file_label or label
    facts["format"] = "zip"
    count, cd_size, _ = _check_eocd(fd, path, label, base, length, problems, shown)
    # zipfile reads the directory in one uninterruptible call: charge its memory and time before it runs.
    reserve(cd_size + count * RECORD_COST, f"its zip central directory ({count} records, {cd_size} bytes)")
    reserve_seconds(count * RECORD_SECONDS, f"reading its zip central directory ({count} records)")
    window = _Window(fd, base, length, label)
    try:
        zf = zipfile.ZipFile(window)
    except _BadSeek:
        raise FormatError("truncated", f"{label} is {length} bytes, too short for a zip") from None
    except zipfile.BadZipFile as exc:
        if window.error is not None:
            raise window.error from None
        raise FormatError("bad_zip", f"{label}: unreadable zip central directory ({exc})") from None
    except (
        ValueError,
        OverflowError,
        EOFError,
        NotImplementedError,
        zipfile.LargeZipFile,
        UnicodeError,
    ) as exc:
        raise FormatError(
            "bad_zip", f"{label}: unreadable zip central directory ({type(exc).__name__}: {exc})"
        ) from None
    infos = zf.infolist()
    if not infos:
        raise FormatError("bad_zip", f"{label} is a zip with no records")
    first = infos[0].filename
    if "/" not in first:
        raise FormatError("bad_zip", f"{label}: first record {first!r} is not inside a top-level folder")
    prefix = first.split("/", 1)[0]
    facts["prefix"] = prefix
    outside = [i.filename for i in infos if not i.filename.startswith(prefix + "/")]
    if outside:
        raise FormatError(
            "bad_zip",
            f"{label}: {len(outside)} records lie outside the top-level folder "
            f"{prefix}/ (e.g. {outside[0]!r})",
        )
    for n, i in enumerate(infos):
        if n & 1023 == 1023:
            tick("zip records")
        name_len = len(i.orig_filename.encode("utf-8" if i.flag_bits & 0x800 else "cp437", "replace"))
        end = i.header_offset + 30 + name_len + i.compress_size
        if i.header_offset < 0 or end > zf.start_dir:
            raise FormatError(
                "bad_zip",
                f"{label}: record {i.filename} (at byte {i.header_offset}, "
                f"{i.compress_size} bytes) overlaps the central directory at byte {zf.start_dir}",
            )
    packed = [i for i in infos if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)]
    if packed:
        # Checked before anything is decompressed: zipfile inflates a bzip2/lzma record in one call, so
        # 2.3 KB of bzip2 would cost GBs, and torch.load (miniz) reads only stored and deflated records.
        raise FormatError(
            "bad_zip",
            f"{label}: record {packed[0].filename} is compressed with method {packed[0].compress_type} "
            "(torch.save writes stored records; torch.load reads only stored or deflated ones)",
        )
    names = {i.filename: i for i in infos}
    pkl_name = f"{prefix}/data.pkl"
    if pkl_name not in names:
        raise FormatError("bad_zip", f"{label} has no {pkl_name} record")

    bo = names.get(f"{prefix}/byteorder")
    if bo is not None:
        value = _read_member(zf, bo, 64, label)
        if value not in (b"little", b"big"):
            problems.append(
                Problem(
                    "bad_zip", shown, f"{label}: {bo.filename} says {value[:20]!r}, not 'little' or 'big'"
                )
            )

    pkl = names[pkl_name]
    if not read_pickle:
        facts.setdefault("object", None)
        return
    reserve(min(pkl.file_size, MAX_PICKLE_BYTES), f"its {pkl_name} record ({pkl.file_size} bytes)")
    if pkl.file_size > MAX_PICKLE_BYTES:
        raise FormatError(
            "bad_pickle",
            f"{label}: {pkl_name} is {pkl.file_size} bytes, more than the "
            f"{MAX_PICKLE_BYTES >> 20} MiB safety cap",
        )
    data = _read_member(zf, pkl, MAX_PICKLE_BYTES, label)
    walk = _walk_judged(data, f"{label}: {pkl_name}", shown, problems)
    if walk.end != len(data):
        problems.append(
            Problem(
                "bad_pickle",
                shown,
                f"{label}: {pkl_name} has {len(data) - walk.end} bytes after its pickle STOP opcode",
            )
        )
    _facts_from_walk(walk, facts)
    problems.extend(_storage_problems(walk, {n: i.file_size for n, i in names.items()}, prefix, pkl_name,
                                      shown, label))

    if deep:
        _crc_all(fd, path, zf, infos, base, label, shown, problems)


_SORTED: dict[int, tuple[PickleWalk, list[tuple[str, StorageRef]]]] = {}


def _sorted_storages(walk: PickleWalk) -> list[tuple[str, StorageRef]]:
    """A walk's storages in key order, remembered like ``_view_faults`` (one sort per distinct pickle)."""
    hit = _SORTED.get(id(walk))
    if hit is not None and hit[0] is walk:
        return hit[1]
    out = sorted(walk.storages.items(), key=lambda kv: _key_order(kv[0]))
    if len(_SORTED) >= _WALK_CACHE_ENTRIES:
        _SORTED.pop(next(iter(_SORTED)))
    _SORTED[id(walk)] = (walk, out)
    return out


_NEEDS: dict[tuple[int, str], tuple[PickleWalk, list[tuple[str, int]]]] = {}


def _record_needs(walk: PickleWalk, prefix: str) -> list[tuple[str, int]]:
    """(record name, bytes it must hold) of every storage, remembered per distinct pickle and prefix.

    The Trainer writes the same optimizer/scheduler pickles in checkpoint after checkpoint: the names and
    sizes are computed once, and each checkpoint costs one dict lookup per storage.
    """
    hit = _NEEDS.get((id(walk), prefix))
    if hit is not None and hit[0] is walk:
        return hit[1]
    out = [(f"{prefix}/data/{key}", ref.nbytes or 0) for key, ref in _sorted_storages(walk)]
    if len(_NEEDS) >= _WALK_CACHE_ENTRIES:
        _NEEDS.pop(next(iter(_NEEDS)))
    _NEEDS[(id(walk), prefix)] = (walk, out)
    return out


def _storage_problems(walk: PickleWalk, record_sizes: dict[str, int], prefix: str, pkl_name: str,
                      shown: str, label: str) -> list[Problem]:
    """Storages the pickle references that have no record, or a record too short; views past their end."""
    get = record_sizes.get
    if all(get(rec, -1) >= needed for rec, needed in _record_needs(walk, prefix)):
        return _view_problems(walk.tensors, shown, label)  # the common case: every record is there
    problems: list[Problem] = []
    short: list[str] = []
    absent: list[str] = []
    for key, ref in _sorted_storages(walk):
        rec = f"{prefix}/data/{key}"
        size = record_sizes.get(rec)
        if size is None:
            absent.append(key)
        elif ref.nbytes is not None and size < ref.nbytes:
            short.append(
                f"{prefix}/data/{_key(key)} holds {size} bytes but its {ref.storage_type} of "
                f"{show_int(ref.numel)} elements needs {show_int(ref.nbytes)}"
            )
    if absent:
        problems.append(
            Problem(
                "missing_record",
                shown,
                f"{label}: {len(absent)} storages referenced by "
                f"{pkl_name} have no record: "
                + ", ".join(f"{prefix}/data/{k}" for k in absent[:MAX_REPORTED])
                + (" ..." if len(absent) > MAX_REPORTED else ""),
            )
        )
    if short:
        problems.append(
            Problem(
                "size_mismatch",
                shown,
                f"{label}: "
                + "; ".join(short[:MAX_REPORTED])
                + (f" (and {len(short) - MAX_REPORTED} more)" if len(short) > MAX_REPORTED else ""),
            )
        )
    problems.extend(_view_problems(walk.tensors, shown, label))
    return problems


_CDIR = struct.Struct("<4s2H2H2H3I5H2I")  # central directory file header, 46 bytes
_ZIP64_LOCATOR = b"PK\x06\x07"


def _fast_zip_check(fd: int, shown: str, size: int, problems: list[Problem], facts: dict[str, Any]) -> bool:
    """The structural check of a stored torch zip without ``zipfile``: one read of the directory.

    ``zipfile.ZipFile`` builds a Python object per record (0.2-0.5 ms for an optimizer state); this
    parses the end record (zip64 aware: torch always writes one) and the central directory with
    ``struct`` and applies the same rules: one top-level folder, ``data.pkl`` present, every record
    before the directory, ``byteorder`` little or big. Returns False on anything unusual (compressed or
    encrypted records, a cut or malformed directory) so the full ``zipfile`` path gives the precise finding.
    Then ``data.pkl`` is read with one pread, its CRC-32 checked, walked (cached) and judged, as there.
    """
    # torch writes [zip64 end record (56)][zip64 locator (20)][end record (22)] with no comment.
    tail_len = min(size, 98)
    tail = os.pread(fd, tail_len, size - tail_len)
    idx = len(tail) - 22
    if idx < 0 or tail[idx:idx + 4] != EOCD_SIG:  # a comment, trailing bytes or a cut: let zipfile say
        return False
    count, cd_size, cd_offset = struct.unpack_from("<HII", tail, idx + 10)
    loc = idx - 20
    if loc >= 0 and tail[loc:loc + 4] == _ZIP64_LOCATOR:
        (z64_offset,) = struct.unpack_from("<Q", tail, loc + 8)
        rel = z64_offset - (size - tail_len)
        if rel != loc - 56 or rel < 0:  # not where torch writes it: the full path applies miniz's rules
            return False
        rec = tail[rel:rel + 56]
        if rec[:4] != b"PK\x06\x06":
            return False
        count, cd_size, cd_offset = struct.unpack_from("<QQQ", rec, 32)
    if cd_offset + cd_size > size or count == 0 or cd_size > MAX_SINGLE_READ or cd_size < 46 * count:
        return False  # the zipfile path names the fault (and refuses a directory over the read cap)
    reserve(cd_size + count * 200, f"its zip central directory ({count} records, {cd_size} bytes)")
    cd = os.pread(fd, cd_size, cd_offset)
    if len(cd) != cd_size:
        return False
    pos = 0
    names: dict[bytes, tuple[int, int, int]] = {}  # name -> (local header offset, size, crc)
    unpack, end = _CDIR.unpack_from, len(cd)
    for n in range(count):
        if n & 1023 == 1023:
            tick("zip records")
        if pos + 46 > end:
            return False
        (sig, _vm, _vn, flags, method, _t, _d, crc, csize, usize, nlen, xlen, clen, _disk, _ia, _ea,
         lho) = unpack(cd, pos)
        if sig != b"PK\x01\x02" or method != 0 or flags & 0x1:
            return False
        name = cd[pos + 46:pos + 46 + nlen]
        if 0xFFFFFFFF in (csize, usize, lho):
            wanted = [v == 0xFFFFFFFF for v in (usize, csize, lho)]
            values = _zip64_extra(cd[pos + 46 + nlen:pos + 46 + nlen + xlen], sum(wanted))
            if values is None:
                return False
            it = iter(values)
            usize, csize, lho = (next(it) if w else v for w, v in zip(wanted, (usize, csize, lho)))
        if csize != usize or lho + 30 + nlen + csize > cd_offset:
            return False
        names[name] = (lho, csize, crc)
        pos += 46 + nlen + xlen + clen
    first = next(iter(names))
    prefix = first.split(b"/", 1)[0] + b"/" if b"/" in first else b""
    if not prefix or b"".join(names).count(prefix) < len(names) or prefix + b"data.pkl" not in names:
        return False
    if any(not n.startswith(prefix) for n in names):
        return False
    bo = names.get(prefix + b"byteorder")
    if bo is not None:
        value = _stored_member(fd, bo, 64)
        if value not in (b"little", b"big"):
            return False
    pkl = names[prefix + b"data.pkl"]
    if pkl[1] > MAX_PICKLE_BYTES:
        return False  # the full path names the cap
    data = _stored_member(fd, pkl, pkl[1])
    if data is None or len(data) != pkl[1] or (zlib.crc32(data) & 0xFFFFFFFF) != pkl[2]:
        return False
    try:
        text_names = {n.decode("utf-8"): v[1] for n, v in names.items()}
    except UnicodeDecodeError:
        return False
    text_prefix = prefix[:-1].decode("utf-8")
    pkl_name = f"{text_prefix}/data.pkl"
    mark = len(problems)
    walk = _walk_judged(data, f"{shown}: {pkl_name}", shown, problems)
    if walk.end != len(data):
        del problems[mark:]  # the full path reports the trailing bytes, and judges the pickle again
        return False
    facts.update(format="zip", prefix=text_prefix)
    _facts_from_walk(walk, facts)
    problems.extend(_storage_problems(walk, text_names, text_prefix, pkl_name, shown, shown))
    return True


def _stored_member(fd: int, rec: tuple[int, int, int], cap: int) -> bytes | None:
    """The bytes of a stored record (at most ``cap``), found through its local header; None if it has none."""
    lho, n = rec[0], rec[1]
    header = os.pread(fd, 30, lho)
    if len(header) != 30 or header[:4] != ZIP_MAGIC:
        return None
    nlen, xlen = struct.unpack_from("<HH", header, 26)
    return os.pread(fd, min(n, cap), lho + 30 + nlen + xlen)


def _zip64_extra(extra: bytes, wanted: int) -> list[int] | None:
    pos = 0
    while pos + 4 <= len(extra):
        tag, n = struct.unpack_from("<HH", extra, pos)
        if tag == 1 and n >= 8 * wanted:
            return list(struct.unpack_from(f"<{wanted}Q", extra, pos + 4))
        pos += 4 + n
    return None


_WALKS: dict[bytes, PickleWalk] = {}
_WALK_CACHE_ENTRIES = 64
_WALK_CACHE_MAX_BYTES = 1 << 20


def _walk_cached(data: bytes, what: str) -> PickleWalk:
    """``walk_pickle``, remembered for small pickles seen before in this process.

    Every checkpoint of a Trainer run holds a byte-identical ``training_args.bin`` (and often identical
    scheduler/RNG pickles); walking it costs ~0.5 ms, a dict lookup on the bytes ~1 us. Walks are read,
    never modified, by their consumers.
    """
    if len(data) > _WALK_CACHE_MAX_BYTES:
        return walk_pickle(data, what=what)
    walk = _WALKS.get(data)
    if walk is None:
        walk = walk_pickle(data, what=what)
        if len(_WALKS) >= _WALK_CACHE_ENTRIES:
            _WALKS.pop(next(iter(_WALKS)))
        _WALKS[data] = walk
    return walk


def _walk_judged(data: bytes, what: str, shown: str, problems: list[Problem], *,
                 cached: bool = True) -> PickleWalk:
    """Walk one stream and judge its globals into ``problems`` (``unsafe_pickle``, or the advisory).

    A stream that fails part-way is still judged on the globals it resolved before the fault: a payload
    followed by garbage is reported as unsafe, not merely malformed.
    """
    try:
        walk = _walk_cached(data, what) if cached else walk_pickle(data, what=what)
    except PickleMalformed as exc:
        problems.extend(p for p in pickle_problems(exc.globals, shown, what) if p.kind == "unsafe_pickle")
        raise
    problems.extend(pickle_problems(walk.globals, shown, what, root=_root_class(walk.obj)))
    return walk


def _root_class(obj: Any) -> str | None:
    return obj.stub_global if isinstance(obj, Stub) else None


_EOCD = struct.Struct("<4s4H2IH")  # end of central directory record, 22 bytes
_ZIP64_END = struct.Struct("<4sQ2H2I4Q")  # zip64 end of central directory record, 56 bytes
_U32_MAX = 0xFFFFFFFF
RECORD_COST = 600  # bytes of heap per record zipfile builds (ZipInfo and its strings), measured
RECORD_SECONDS = 10e-6  # seconds per record for zipfile to read a directory, measured on a loaded 2-core box


def _check_eocd(
    fd: int, path: str, label: str, base: int, length: int, problems: list[Problem], shown: str
) -> tuple[int, int, int]:
    """Find the end records; (record count, directory size, directory offset), or raise ``FormatError``.

    "truncated" when the end record is absent or cut. The zip64 rules are those of miniz, torch's zip
    reader (``mz_zip_reader_read_central_dir``), because Python's ``zipfile`` ignores the locator's
    offset and would call complete a file ``torch.load`` refuses: the locator must place the zip64 end
    record inside the data, its record count and directory size must fit 32 bits, one disk only, and
    the directory must lie inside the data and hold at least 46 bytes per record.
    """
    if length < 22:
        raise FormatError("truncated", f"{label} is {length} bytes, too short for a zip (22-byte end record)")
    tail_len = min(length, 22 + 65535)
    tail = read_exact_at(fd, base + length - tail_len, tail_len, path)
    idx = tail.rfind(EOCD_SIG)
    if idx < 0 or idx + 22 > len(tail):
        raise FormatError(
            "truncated",
            f"{label} ({length} bytes) has no zip end-of-central-directory record: "
            "the file was cut short or is still being written",
        )
    comment_len = int.from_bytes(tail[idx + 20 : idx + 22], "little")
    end = idx + 22 + comment_len
    if end > len(tail):
        raise FormatError(
            "truncated",
            f"{label}: the zip end record at byte {length - tail_len + idx} announces a "
            f"{comment_len}-byte comment past the end of the data",
        )
    if end < len(tail):
        problems.append(
            Problem(
                "trailing_data",
                shown,
                f"{label}: {len(tail) - end} bytes follow the zip "
                f"end-of-central-directory record (torch.load ignores them)",
            )
        )
    eocd_at = length - tail_len + idx
    _sig, this_disk, cd_disk, on_disk, count, cd_size, cd_offset, _clen = _EOCD.unpack_from(tail, idx)
    if eocd_at >= 20 + 56:
        loc = read_exact_at(fd, base + eocd_at - 20, 20, path)
        if loc[:4] == _ZIP64_LOCATOR:
            z64_at, disks = struct.unpack_from("<QI", loc, 8)
            if z64_at > length - 56:
                raise FormatError(
                    "bad_zip",
                    f"{label}: the zip64 locator at byte {eocd_at - 20} places the zip64 end record at byte "
                    f"{z64_at}, past the end of the data ({length} bytes); torch.load refuses this file",
                )
            rec = read_exact_at(fd, base + z64_at, 56, path)
            if rec[:4] == b"PK\x06\x06":
                (_s, rec_size, _vm, _vn, this_disk, cd_disk, on_disk, count, cd_size,
                 cd_offset) = _ZIP64_END.unpack(rec)
                why = ""
                if rec_size < 44:
                    why = f"declares its own size as {rec_size} bytes (at least 44)"
                elif disks != 1:
                    why = f"says the zip spans {disks} disks"
                elif count > _U32_MAX or on_disk > _U32_MAX:
                    why = f"declares {count} records (torch reads at most {_U32_MAX})"
                elif cd_size > _U32_MAX:
                    why = f"declares a {cd_size}-byte central directory (torch reads at most {_U32_MAX})"
                if why:
                    raise FormatError("bad_zip", f"{label}: the zip64 end record at byte {z64_at} {why}; "
                                      "torch.load refuses this file")
    if count != on_disk or ((this_disk | cd_disk) and (this_disk, cd_disk) != (1, 1)):
        raise FormatError("bad_zip", f"{label}: the zip end records describe a multi-disk zip "
                          f"({on_disk} of {count} records on this disk); torch.load refuses it")
    if cd_size < count * 46:
        raise FormatError("bad_zip", f"{label}: the zip end records declare {count} records in a "
                          f"{cd_size}-byte central directory, less than 46 bytes each")
    if cd_offset + cd_size > length:
        raise FormatError("bad_zip", f"{label}: the zip end records place the central directory at bytes "
                          f"{cd_offset}..{cd_offset + cd_size}, past the end of the data ({length} bytes)")
    if count and read_exact_at(fd, base + cd_offset, 4, path) != b"PK\x01\x02":
        raise FormatError("bad_zip", f"{label}: the zip end records place the central directory at byte "
                          f"{cd_offset}, but no directory record starts there")
    return count, cd_size, cd_offset


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, label: str) -> bytes:
    """Read one small member; zipfile checks its local header and CRC-32 on the way."""
    import zipfile

    try:
        with zf.open(info) as f:
            return f.read(cap + 1)
    except zipfile.BadZipFile as exc:
        kind = "crc_mismatch" if "CRC" in str(exc) else "bad_zip"
        raise FormatError(kind, f"{label}: record {info.filename}: {exc}") from None
    except _BadSeek:
        raise FormatError(
            "bad_zip", f"{label}: record {info.filename} lies before the start of the data"
        ) from None
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - zlib.error, encrypted members (RuntimeError), bad sizes
        raise FormatError(
            "bad_zip", f"{label}: record {info.filename}: {type(exc).__name__}: {exc}"
        ) from None


def _crc_all(
    fd: int,
    path: str,
    zf: zipfile.ZipFile,
    infos: list[zipfile.ZipInfo],
    base: int,
    label: str,
    shown: str,
    problems: list[Problem],
) -> None:
    """CRC-32 of every record: stored records streamed from disk, compressed ones through zipfile."""
    import zipfile

    stored: list[tuple[zipfile.ZipInfo, int, int]] = []
    bad: list[str] = []
    for n, i in enumerate(sorted(infos, key=lambda z: z.header_offset)):
        if n & 255 == 255:
            tick("zip record headers")
        hdr = read_exact_at(fd, base + i.header_offset, 30, path)
        if hdr[:4] != ZIP_MAGIC:
            raise FormatError(
                "bad_zip", f"{label}: record {i.filename} has no local header at byte {i.header_offset}"
            )
        name_len = int.from_bytes(hdr[26:28], "little")
        local_name = read_exact_at(fd, base + i.header_offset + 30, name_len, path)
        cd_name = i.orig_filename.encode("utf-8" if i.flag_bits & 0x800 else "cp437", "replace")
        if local_name != cd_name:
            bad.append(
                f"{i.filename} (its local header at byte {i.header_offset} names it {local_name[:80]!r})"
            )
            continue
        start = i.header_offset + 30 + name_len + int.from_bytes(hdr[28:30], "little")
        if i.compress_type == zipfile.ZIP_STORED:
            if i.compress_size != i.file_size:
                raise FormatError(
                    "bad_zip",
                    f"{label}: stored record {i.filename} has compressed size "
                    f"{i.compress_size} but size {i.file_size}",
                )
            if start + i.compress_size > zf.start_dir:
                raise FormatError("bad_zip", f"{label}: record {i.filename} runs into the central directory")
            stored.append((i, base + start, base + start + i.compress_size))
        else:
            try:
                with zf.open(i) as f:
                    while f.read(1 << 20):
                        tick(f"decompressing record {i.filename}")
            except zipfile.BadZipFile as exc:
                bad.append(f"{i.filename} ({exc})")
            except OSError:
                raise
            except Exception as exc:  # noqa: BLE001 - zlib.error etc. on hostile bytes
                bad.append(f"{i.filename} ({type(exc).__name__}: {exc})")
    crcs = crc32_ranges(fd, [(s, e) for _, s, e in stored], path)
    for (i, s, e), crc in zip(stored, crcs, strict=True):
        if crc != i.CRC:
            bad.append(
                f"{i.filename} (bytes {s}..{e}: CRC-32 {crc:08x}, the central directory says {i.CRC:08x})"
            )
    if bad:
        problems.append(
            Problem(
                "crc_mismatch",
                shown,
                f"{label}: {len(bad)} records fail their CRC-32 or name check: "
                + "; ".join(bad[:MAX_REPORTED])
                + (" ..." if len(bad) > MAX_REPORTED else ""),
            )
        )


def _key_order(key: str) -> tuple[int, int | str]:
    return (0, int(key)) if key.isdigit() else (1, key)


def _facts_from_walk(walk: PickleWalk, facts: dict[str, Any]) -> None:
    facts["object"] = walk.obj
    facts["storages"] = walk.storages
    facts["globals"] = walk.globals


def _key(key: str) -> str:
    """A storage key for a message: as it is when short and printable (torch writes "0", "1", ...)."""
    return key if len(key) <= 40 and key.isprintable() else show(key, 40)


def _view_problems(tensors: tuple[TensorRef, ...], shown: str, label: str) -> list[Problem]:
    """Tensors whose (offset, size, stride) reach past their storage: torch.load would refuse them."""
    out = _view_faults(tensors)
    if not out:
        return []
    return [
        Problem(
            "size_mismatch",
            shown,
            f"{label}: "
            + "; ".join(out[:MAX_REPORTED])
            + (f" (and {len(out) - MAX_REPORTED} more)" if len(out) > MAX_REPORTED else ""),
        )
    ]


_VIEW_FAULTS: dict[int, tuple[tuple[TensorRef, ...], list[str]]] = {}


def _view_faults(tensors: tuple[TensorRef, ...]) -> list[str]:
    """The faults of one walk's tensor views, remembered by identity while the walk is cached.

    Every checkpoint of a run repeats the same optimizer pickle: its walk comes from ``_walk_cached`` and
    the 0.1-0.3 ms of arithmetic over its tensors is done once. Keyed by ``id`` of the tuple, which the
    entry keeps alive, so an id is never reused while its entry exists.
    """
    hit = _VIEW_FAULTS.get(id(tensors))
    if hit is not None and hit[0] is tensors:
        return hit[1]
    out = _compute_view_faults(tensors)
    if len(_VIEW_FAULTS) >= _WALK_CACHE_ENTRIES:
        _VIEW_FAULTS.pop(next(iter(_VIEW_FAULTS)))
    _VIEW_FAULTS[id(tensors)] = (tensors, out)
    return out


def _compute_view_faults(tensors: tuple[TensorRef, ...]) -> list[str]:
    out: list[str] = []
    for t in tensors:
        s = t.storage
        if not isinstance(s, StorageRef) or any(x < 0 for x in t.size) or any(x < 0 for x in t.stride):
            continue
        need = t.storage_elements_needed()
        if t.dtype is not None:  # v3: UntypedStorage counts bytes, the view counts dtype elements
            need *= t.dtype.itemsize
        if need > s.numel:
            out.append(
                f"a tensor of shape {show_shape(t.size)} at offset {show_int(t.offset)} needs "
                f"{show_int(need)} elements of storage {_key(s.key)}, which holds {show_int(s.numel)}"
            )
    return out


# --------------------------------------------------------------------------------------------------
# Legacy format and plain pickles


def _walk_prefix(fd: int, path: str, shown: str, size: int) -> tuple[list[PickleWalk], bool]:
    """Walk the leading pickles, reading a growing prefix of the file; (walks, is_legacy_torch)."""
    limit = min(size, MAX_PICKLE_BYTES + (1 << 20))
    have = min(limit, 1 << 20)
    while True:
        data = read_exact_at(fd, 0, have, path)
        walks: list[PickleWalk] = []
        pos = 0
        try:
            first = walk_pickle(data, what=f"{shown}: pickle #1")
            walks.append(first)
            legacy = type(first.obj) is int and first.obj == LEGACY_MAGIC
            count = 5 if legacy else 1
            pos = first.end
            for k in range(2, count + 1):
                w = walk_pickle(data, what=f"{shown}: pickle #{k}", start=pos)
                walks.append(w)
                pos = w.end
            return walks, legacy
        except PickleTruncated as exc:
            # A length the stream declares is believed only as far as the file and the cap go: a sparse
            # 2 GB file whose pickle opens a 2 GB string is judged from its first bytes, not from 513 MB.
            if exc.needs > size:
                raise FormatError(
                    "truncated",
                    f"{shown} ends at byte {size} inside pickle #{len(walks) + 1} (begun at byte {pos}), "
                    f"which declares data up to byte {show_int(exc.needs - 1)}",
                ) from None
            if exc.needs - pos > MAX_PICKLE_BYTES:
                raise FormatError(
                    "bad_pickle",
                    f"{shown}: pickle #{len(walks) + 1} (begun at byte {pos}) declares data up to byte "
                    f"{show_int(exc.needs - 1)}, beyond the {MAX_PICKLE_BYTES >> 20} MiB safety cap",
                ) from None
            if have < limit:
                have = min(limit, max(have * 4, exc.needs + (1 << 16)))
                continue
            if have >= size:
                raise FormatError(
                    "truncated",
                    f"{shown} ends at byte {size} inside pickle #{len(walks) + 1} (begun at byte {pos})",
                ) from None
            raise FormatError(
                "bad_pickle",
                f"{exc.message}: the leading pickles exceed the {MAX_PICKLE_BYTES >> 20} MiB safety cap",
            ) from None


def _check_legacy(
    fd: int, path: str, shown: str, size: int, deep: bool, problems: list[Problem], facts: dict[str, Any]
) -> None:
    try:
        walks, legacy = _walk_prefix(fd, path, shown, size)
    except PickleMalformed as exc:
        problems.extend(p for p in pickle_problems(exc.globals, shown, shown) if p.kind == "unsafe_pickle")
        raise
    facts["prefix"] = ""
    problems.extend(pickle_problems(frozenset().union(*(w.globals for w in walks)), shown, shown,
                                    root=_root_class(walks[-2].obj if legacy else walks[0].obj)))
    if not legacy:
        facts["format"] = "pickle"
        _facts_from_walk(walks[0], facts)
        if walks[0].end < size:
            problems.append(
                Problem(
                    "trailing_data",
                    shown,
                    f"{shown} is a plain pickle that ends at byte "
                    f"{walks[0].end}, but the file has {size} bytes",
                )
            )
        if deep:
            read_all(fd, 0, size, path)
        return
    facts["format"] = "legacy"
    _magic, proto, sys_info, obj, keys = walks
    if type(proto.obj) is not int or proto.obj != LEGACY_PROTOCOL:
        raise FormatError(
            "bad_header",
            f"{shown}: legacy torch protocol version is {show_brief(proto.obj)}, not {LEGACY_PROTOCOL}",
        )
    little = True
    if isinstance(sys_info.obj, dict):
        little = sys_info.obj.get("little_endian", True) is not False
    _facts_from_walk(obj, facts)
    facts["globals"] = frozenset().union(*(w.globals for w in walks))
    key_list = keys.obj
    if not isinstance(key_list, list) or not all(isinstance(k, str) for k in key_list):
        raise FormatError("bad_pickle", f"{shown}: pickle #5 (storage keys) is not a list of strings")
    storages = obj.storages
    unknown = [k for k in key_list if k not in storages]
    if unknown:
        raise FormatError(
            "bad_pickle",
            f"{shown}: the storage key list names {len(unknown)} storages the object "
            f"never references (e.g. {unknown[0]!r})",
        )
    unlisted = sorted(set(storages) - set(key_list), key=_key_order)
    if unlisted:
        problems.append(
            Problem(
                "missing_record",
                shown,
                f"{shown}: {len(unlisted)} referenced storages are not "
                f"in the storage key list (e.g. {unlisted[0]!r})",
            )
        )
    problems.extend(_view_problems(obj.tensors, shown, shown))

    if deep:
        read_all(fd, keys.end, size, path)
    unsized = [k for k in key_list if storages[k].nbytes is None]
    if unsized:
        facts["size_unchecked"] = f"storage {unsized[0]} has unknown type {storages[unsized[0]].storage_type}"
        return
    pos = keys.end
    mismatched: list[str] = []
    for key in key_list:
        ref = storages[key]
        assert ref.nbytes is not None
        if pos + 8 <= size and len(mismatched) < MAX_REPORTED:
            count = int.from_bytes(os.pread(fd, 8, pos), "little" if little else "big")
            if count != ref.numel:
                mismatched.append(
                    f"storage {_key(key)} at byte {show_int(pos)} records {count} elements, the pickle says "
                    f"{show_int(ref.numel)}"
                )
        pos += 8 + ref.nbytes
    if mismatched:
        problems.append(Problem("size_mismatch", shown, f"{shown}: " + "; ".join(mismatched)))
    if pos > size:
        problems.append(
            Problem(
                "truncated",
                shown,
                f"{shown} is {size} bytes, but its {len(key_list)} storages end at byte {show_int(pos)}",
            )
        )
    elif pos < size:
        problems.append(
            Problem(
                "trailing_data",
                shown,
                f"{shown} is {size} bytes, but its {len(key_list)} "
                f"storages end at byte {show_int(pos)} ({show_int(size - pos)} extra bytes)",
            )
        )


# --------------------------------------------------------------------------------------------------
# One scalar's value (retention reads a Lightning ModelCheckpoint's scores this way)

_SCALAR_TYPES = {  # storage class or dtype name -> (struct code, bytes); "bf16": the high half of a float32
    "FloatStorage": ("f", 4), "DoubleStorage": ("d", 8), "HalfStorage": ("e", 2),
    "BFloat16Storage": ("bf16", 2),
    "float32": ("f", 4), "float64": ("d", 8), "float16": ("e", 2), "bfloat16": ("bf16", 2),
}
MAX_SCALAR_OFFSET = 1 << 16  # bytes into its storage: a score is a storage of its own, at offset 0


def read_scalar(path: str, tensor: Any, prefix: str) -> float | None:
    """The value of a one-element floating-point tensor of the torch zip ``path``, without torch.

    ``tensor`` is a ``TensorRef`` of the file's walked pickle (``check_torch_file`` facts ``object``) and
    ``prefix`` the zip's top-level folder (facts ``prefix``). Only the storage record's few bytes are
    read, through ``zipfile`` on an ``open_regular`` fd; None for anything else (not a one-element float
    tensor, a compressed or missing record, any read error). Never raises for what the file holds.
    """
    import zipfile

    if not isinstance(tensor, TensorRef) or not isinstance(tensor.storage, StorageRef):
        return None
    if any(s != 1 for s in tensor.size) or not 0 <= tensor.offset:
        return None
    name = tensor.dtype.name if tensor.dtype is not None else tensor.storage.storage_type
    code, size = _SCALAR_TYPES.get(name, (None, 0))
    start = tensor.offset * size
    if code is None or start > MAX_SCALAR_OFFSET:
        return None
    try:
        with open_regular_file(path) as f, zipfile.ZipFile(f) as zf:
            info = zf.getinfo(f"{prefix}/data/{tensor.storage.key}")
            if info.compress_type != zipfile.ZIP_STORED or info.file_size < start + size:
                return None
            order = b"little"
            if f"{prefix}/byteorder" in zf.NameToInfo:
                order = zf.read(f"{prefix}/byteorder")[:8]
            with zf.open(info) as member:
                raw = member.read(start + size)[start:]
    except (OSError, EOFError, KeyError, ValueError, RuntimeError, NotImplementedError, zipfile.BadZipFile):
        return None
    if len(raw) != size or order not in (b"little", b"big"):
        return None
    endian = "<" if order == b"little" else ">"
    if code == "bf16":  # the high half of a float32: zero low bytes come first in little-endian order
        raw = b"\0\0" + raw if order == b"little" else raw + b"\0\0"
        code = "f"
    (value,) = struct.unpack(endian + code, raw)
    return float(value)
