"""Completeness of a ``torch.distributed.checkpoint`` (DCP) directory (§2.4, rules 1-6).

Why these rules: ``.metadata`` is written by the coordinator last (tmp + rename after every rank wrote
its ``__{r}_{n}.distcp`` files), so it is the directory's commit marker. But a re-save into the same
directory rewrites data files while the OLD ``.metadata`` is still there, so the marker must also be
newer than every file it covers (§1.3). The metadata is a plain pickle of dataclasses: it is walked
with the stub unpickler (never executed) and cross-checked: every ``storage_data`` entry names a safe,
existing file long enough for its byte window; every tensor's chunks tile its shape and each has a
storage entry; every non-tensor value has one too. ``deep=True`` opens every byte window as the
``torch.save`` zip it is and checks its CRC-32s and that its tensor matches the chunk.

Rank-local mode (``use_collectives=False``) has no global ``.metadata``; each rank commits its own
``__{r}.metadata`` covering its ``__{r}_*`` files, and each is judged the same way. Megatron's async
writer names files ``<group>__{r}_{n}.distcp``; the group prefix is accepted. DCP does not record the
world size: ``ranks_in_names`` (ranks seen in data file names) is the best evidence (§2.4 rule 5).
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

from ckptwatch.formats._io import FormatError, open_regular, open_regular_file
from ckptwatch.formats._show import show, show_int, show_shape
from ckptwatch.formats._stream import display, oserror_problem
from ckptwatch.formats.limits import KIND as LIMIT_KIND
from ckptwatch.formats.limits import file_budget, reserve, tick
from ckptwatch.formats.pickle_policy import pickle_problems
from ckptwatch.formats.pickle_stub import (
    MAX_PICKLE_BYTES,
    PickleMalformed,
    Stub,
    TensorRef,
    TorchDtype,
    get,
    walk_pickle,
)
from ckptwatch.model import FileCheck, Problem
from ckptwatch.vocabulary import file_ok

DISTCP = re.compile(r"^(?P<group>.*)__(?P<rank>\d+)_(?P<n>\d+)\.distcp\Z")
RANK_METADATA = re.compile(r"^__(?P<rank>\d+)\.metadata\Z")
GLOBAL_METADATA = ".metadata"
MTIME_SKEW = 2.0  # seconds of clock skew tolerated between writers (NFS/Lustre)
MAX_REPORTED = 5
MAX_PAIRWISE_CHUNKS = 64  # overlap is checked pairwise up to this many chunks per tensor
MAX_DIMS = 64  # dims of one tensor (torch's own limit); more is a malformed file, and costly to multiply
WALK_COST = 13  # peak bytes per byte of .metadata: the bytes plus the walked objects (measured: x11.6)


@dataclass(frozen=True)
class _Entry:
    fqn: Any
    index_offset: tuple[int, ...] | None
    path: str
    offset: int
    length: int
    transformed: bool


def rank_of(name: str) -> int | None:
    """The rank in a ``[group]__{r}_{n}.distcp`` file name, else None."""
    m = DISTCP.match(name)
    return int(m.group("rank")) if m else None


def check_dcp_dir(dir: str, *, deep: bool = False) -> FileCheck:  # noqa: A002 - the documented name
    """Judge one DCP checkpoint directory (global ``.metadata`` or rank-local ``__{r}.metadata``).

    facts: ``ranks_in_names`` (sorted ranks r of ``[group]__{r}_{n}.distcp`` names), ``referenced_files``
    ({relative_path: bytes needed}), ``version`` (Metadata.version or None), ``rank_local`` (bool),
    ``metadata`` ({metadata file name: walked Metadata object}).
    """
    shown = display(dir)
    facts: dict[str, Any] = {
        "ranks_in_names": [],
        "referenced_files": {},
        "version": None,
        "rank_local": False,
        "metadata": {},
    }
    try:
        with os.scandir(dir) as it:
            names = sorted(e.name for e in it)
    except OSError as exc:
        return FileCheck(shown, (oserror_problem(dir, exc),), facts)
    nameset = set(names)
    facts["ranks_in_names"] = sorted({r for n in names if (r := rank_of(n)) is not None})
    problems: list[Problem] = []

    if GLOBAL_METADATA in nameset:
        metas: list[tuple[str, int | None]] = [(GLOBAL_METADATA, None)]
        tmp = GLOBAL_METADATA + ".tmp"
        if tmp in nameset and (_mtime(dir, tmp) or 0) > (_mtime(dir, GLOBAL_METADATA) or 0):
            problems.append(
                Problem(
                    "in_progress",
                    display(os.path.join(dir, tmp)),
                    f"{display(os.path.join(dir, tmp))} "
                    "is newer than .metadata: a new save of this directory is committing",
                )
            )
    else:
        rank_metas = {int(m.group("rank")): n for n in names if (m := RANK_METADATA.match(n))}
        tmps = [
            n
            for n in names
            if n == GLOBAL_METADATA + ".tmp" or (n.endswith(".metadata.tmp") and RANK_METADATA.match(n[:-4]))
        ]
        if not rank_metas:
            if tmps:
                p = display(os.path.join(dir, tmps[0]))
                problems.append(
                    Problem("in_progress", p, f"{p} exists: the checkpoint metadata is being written")
                )
            else:
                p = display(os.path.join(dir, GLOBAL_METADATA))
                problems.append(
                    Problem(
                        "no_commit_marker",
                        p,
                        f"{p} is missing: DCP writes it after every rank "
                        "saved its data, so this save did not finish",
                    )
                )
            return FileCheck(shown, tuple(problems), facts)
        facts["rank_local"] = True
        metas = [(n, r) for r, n in sorted(rank_metas.items())]
        for r in facts["ranks_in_names"]:
            if r not in rank_metas:
                p = display(os.path.join(dir, f"__{r}.metadata"))
                if f"__{r}.metadata.tmp" in nameset:
                    problems.append(
                        Problem("in_progress", p, f"{p}.tmp exists: rank {r} is committing its metadata")
                    )
                else:
                    problems.append(
                        Problem(
                            "no_commit_marker",
                            p,
                            f"{p} is missing but rank {r} wrote data files: "
                            f"rank-local DCP writes it last, so rank {r} did not finish",
                        )
                    )

    referenced: dict[str, int] = {}
    parsed: list[_Items] = []
    for meta_name, _rank in metas:
        found, items = _check_metadata(dir, meta_name, deep, facts, referenced)
        problems.extend(found)
        if items is not None:
            parsed.append(items)
    facts["referenced_files"] = dict(sorted(referenced.items()))
    problems.extend(_judge_coverage(dir, metas, parsed, problems, facts["rank_local"]))
    if len(facts["metadata"]) == len(metas):  # unknown when a metadata file did not parse
        problems.extend(_unreferenced(dir, names, referenced))
    return FileCheck(shown, tuple(problems), facts)


def _judge_coverage(
    dirpath: str,
    metas: list[tuple[str, int | None]],
    parsed: list[_Items],
    problems: list[Problem],
    rank_local: bool,
) -> list[Problem]:
    """Rule 3: the chunks of every tensor tile it exactly (across all ranks' metadata in rank-local mode)."""
    if not parsed:
        return []
    if not rank_local:
        where = display(os.path.join(dirpath, metas[0][0]))
        gaps, overlaps = _coverage(parsed[0])
        out = [_listing("size_mismatch", where, where, gaps + overlaps)] if gaps or overlaps else []
        return out
    shown = display(dirpath)
    bad: list[str] = []
    gaps, overlaps = _coverage(_merge(parsed, bad))
    out = [_listing("bad_header", shown, f"{shown} (rank-local metadata)", bad)] if bad else []
    if overlaps:
        out.append(_listing("size_mismatch", shown, f"{shown} (rank-local metadata)", overlaps))
    # Missing coverage means ranks that have not committed (or whose files are gone): incomplete, and
    # already reported when a rank's marker is missing or unreadable.
    uncommitted = len(parsed) != len(metas) or any(
        p.kind in ("no_commit_marker", "in_progress") for p in problems
    )
    if gaps and not uncommitted:
        ranks = sorted(r for _, r in metas if r is not None)
        out.append(_listing("missing_rank", shown, f"{shown}: the committed ranks {ranks} leave gaps", gaps))
    return out


def _mtime(dirpath: str, name: str) -> float | None:
    try:
        return os.stat(os.path.join(dirpath, name)).st_mtime
    except OSError:
        return None


def _read_metadata(dirpath: str, meta_name: str, found: list[Problem]) -> tuple[Any, os.stat_result]:
    """The walked Metadata of one metadata file; its globals are judged into ``found`` first.

    DCP loads ``.metadata`` with plain ``pickle.load`` (torch 2.13 ``FileSystemReader.read_metadata``):
    a code-execution global there runs on every load, so it is ``unsafe_pickle`` even when the stream
    is otherwise malformed or holds no Metadata. The weights_only advisory does not apply.
    """
    path = os.path.join(dirpath, meta_name)
    shown = display(path)
    fd = open_regular(path)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FormatError("bad_header", f"{shown} is not a regular file")
        if st.st_size == 0:
            raise FormatError("empty_file", f"{shown} is empty (0 bytes)")
        if st.st_size > MAX_PICKLE_BYTES:
            raise FormatError(
                "bad_pickle",
                f"{shown} is {st.st_size} bytes, more than the {MAX_PICKLE_BYTES >> 20} MiB safety cap",
            )
        reserve(st.st_size * WALK_COST, f"reading and walking its {st.st_size}-byte pickle")
        buf = bytearray(st.st_size)  # one copy in memory, not chunks plus their join
        pos = 0
        with memoryview(buf) as view:
            while pos < st.st_size:
                got = os.preadv(fd, [view[pos : pos + (1 << 24)]], pos)
                if got <= 0:
                    break
                pos += got
        data = bytes(buf) if pos == st.st_size else bytes(buf[:pos])
        del buf
    finally:
        os.close(fd)
    try:
        walk = walk_pickle(data, what=shown)
    except PickleMalformed as exc:
        found.extend(pickle_problems(exc.globals, shown, shown, weights_only_applies=False))
        raise
    found.extend(pickle_problems(walk.globals, shown, shown, weights_only_applies=False))
    if walk.end != len(data):
        raise FormatError("trailing_data", f"{shown}: {len(data) - walk.end} bytes follow the pickle")
    md = walk.obj
    if not (isinstance(md, Stub) and md.stub_global.endswith("checkpoint.metadata.Metadata")):
        what = md.stub_global if isinstance(md, Stub) else type(md).__name__
        raise FormatError(
            "bad_header", f"{shown} holds a {what}, not a torch.distributed.checkpoint Metadata"
        )
    return md, st


def _check_metadata(
    dirpath: str, meta_name: str, deep: bool, facts: dict[str, Any], referenced: dict[str, int]
) -> tuple[list[Problem], _Items | None]:
    """One metadata file and what it references, within that file's time and memory budget."""
    mshown = display(os.path.join(dirpath, meta_name))
    try:
        with file_budget(mshown):
            return _judge_metadata(dirpath, meta_name, deep, facts, referenced)
    except FormatError as exc:  # a limit reached after the metadata was read
        return [Problem(exc.kind, mshown, exc.message)], None
    except (RecursionError, MemoryError) as exc:
        what = "nested deeper than the reader can follow" if isinstance(exc, RecursionError) \
            else "needs more memory than the reader could allocate"
        return [Problem(LIMIT_KIND, mshown, f"{mshown}: its structure is {what}")], None


def _judge_metadata(
    dirpath: str, meta_name: str, deep: bool, facts: dict[str, Any], referenced: dict[str, int]
) -> tuple[list[Problem], _Items | None]:
    meta_path = os.path.join(dirpath, meta_name)
    mshown = display(meta_path)
    judged: list[Problem] = []
    try:
        md, mst = _read_metadata(dirpath, meta_name, judged)
    except FormatError as exc:
        return [*judged, Problem(exc.kind, mshown, exc.message)], None
    except OSError as exc:
        return [*judged, oserror_problem(meta_path, exc)], None
    facts["metadata"][meta_name] = md
    version = get(md, "version")
    if facts["version"] is None and isinstance(version, str):
        facts["version"] = version
    problems: list[Problem] = judged
    sdm = get(md, "state_dict_metadata")
    storage = get(md, "storage_data")
    if not isinstance(sdm, dict) or not isinstance(storage, dict):
        return [
            Problem(
                "bad_header",
                mshown,
                f"{mshown}: Metadata lacks its state_dict_metadata or storage_data mapping",
            )
        ], None

    entries, entry_problems = _entries(storage, mshown)
    problems.extend(entry_problems)
    need: dict[str, int] = {}
    for e in entries:
        need[e.path] = max(need.get(e.path, 0), e.offset + e.length)
    for path, n in need.items():
        referenced[path] = max(referenced.get(path, 0), n)

    # Rule 2: every referenced file exists and is long enough; rule 1: the marker is not older.
    newest = 0.0
    for path, n in sorted(need.items()):
        tick("data files")
        full = os.path.join(dirpath, path)
        fshown = display(full)
        try:
            st = os.stat(full)
        except FileNotFoundError:
            r = rank_of(path)
            users = sorted({str(e.fqn) for e in entries if e.path == path})
            who = f" (rank {r})" if r is not None else ""
            problems.append(
                Problem(
                    "missing_shard",
                    fshown,
                    f"{fshown}{who} is missing; {mshown} stores {len(users)} items in it "
                    f"(e.g. {show(users[0])})",
                )
            )
            continue
        except OSError as exc:
            problems.append(oserror_problem(full, exc))
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(Problem("bad_header", fshown, f"{fshown} is not a regular file"))
            continue
        newest = max(newest, st.st_mtime)
        if st.st_size < n:
            problems.append(
                Problem(
                    "truncated",
                    fshown,
                    f"{fshown} is {st.st_size} bytes, but {mshown} places data up to byte {show_int(n)} "
                    "in it",
                )
            )
    if newest and mst.st_mtime < newest - MTIME_SKEW:
        problems.append(
            Problem(
                "stale_commit_marker",
                mshown,
                f"{mshown} is {newest - mst.st_mtime:.0f} s older than "
                "the newest data file it covers: those files were rewritten after it was committed",
            )
        )

    # Rule 3, per metadata file: chunk shapes, bounds and storage entries (coverage is judged by the caller).
    faults: list[str] = []
    items = _normalise(sdm, {(e.fqn, e.index_offset) for e in entries}, faults)
    if faults:
        problems.append(_listing("bad_header", mshown, mshown, faults))

    if deep and not any(p.kind in ("missing_shard", "truncated") for p in problems):
        problems.extend(_deep(dirpath, entries, sdm, mshown))
    elif not deep and not any(p.kind in ("missing_shard", "truncated") for p in problems):
        problems.extend(_byte_items(dirpath, entries, sdm))
    return problems, items


def _byte_items(dirpath: str, entries: list[_Entry], sdm: dict[Any, Any]) -> list[Problem]:
    """The default pass over non-tensor values: each is a torch.save zip that DCP's load planner opens with
    ``torch.load(weights_only=False)``, so its pickle is walked and judged like any other (tensors are
    loaded with ``weights_only=True``, which refuses foreign globals itself; ``--deep`` checks them all).
    """
    from ckptwatch.formats.torchzip import check_torch_window

    problems: list[Problem] = []
    for e in sorted(entries, key=lambda x: (x.path, x.offset)):
        if e.transformed or e.index_offset is not None:
            continue
        if not _is(_lookup(sdm, e.fqn), "BytesStorageMetadata"):
            continue
        full = os.path.join(dirpath, e.path)
        label = _window_label(full, e)
        fc = check_torch_window(full, e.offset, e.length, label=label)
        problems.extend(_dcp_window_problems(fc.problems))
    return problems


def _lookup(sdm: dict[Any, Any], key: Any) -> Any:
    try:
        return sdm.get(key)
    except TypeError:  # an unhashable fqn from a hostile stream
        return None


def _dcp_window_problems(problems: tuple[Problem, ...]) -> list[Problem]:
    """A window's findings without the weights_only advisory: DCP loads byte items with weights_only=False."""
    return [p for p in problems if p.kind != "needs_weights_only_false"]


def _entries(storage: dict[Any, Any], mshown: str) -> tuple[list[_Entry], list[Problem]]:
    entries: list[_Entry] = []
    malformed: list[str] = []
    unsafe: list[str] = []
    for n, (idx, info) in enumerate(storage.items()):
        if n & 1023 == 1023:
            tick("storage entries")
        fqn = get(idx, "fqn")
        off_idx = get(idx, "offset")
        path = get(info, "relative_path")
        offset, length = get(info, "offset"), get(info, "length")
        if (
            not isinstance(fqn, str)
            or not isinstance(path, str)
            or not _nonneg(offset)
            or not _nonneg(length)
            or not (off_idx is None or _int_tuple(off_idx))
        ):
            malformed.append(f"{show(fqn)} -> {show(path)} [{show(offset)}, +{show(length)}]")
            continue
        if path in ("", ".", "..") or "/" in path or "\\" in path or "\0" in path:
            unsafe.append(path)
            continue
        entries.append(
            _Entry(
                fqn,
                tuple(off_idx) if off_idx is not None else None,
                path,
                offset,
                length,
                bool(get(info, "transform_descriptors")),
            )
        )
    problems = []
    if malformed:
        problems.append(
            Problem(
                "bad_header",
                mshown,
                f"{mshown}: {len(malformed)} storage entries are malformed: "
                + "; ".join(malformed[:MAX_REPORTED]),
            )
        )
    if unsafe:
        problems.append(
            Problem(
                "unsafe_path",
                mshown,
                f"{mshown} places data outside the checkpoint directory: "
                + ", ".join(repr(p) for p in unsafe[:MAX_REPORTED]),
            )
        )
    return entries, problems


def _nonneg(v: Any) -> bool:
    return type(v) is int and v >= 0


def _window_label(full: str, e: _Entry) -> str:
    """A byte window for messages: the file, the byte range and the key it holds, each bounded (a key is
    shown as it is when short and printable, as DCP writes them, else quoted and cut)."""
    fqn = e.fqn if len(e.fqn) <= 80 and e.fqn.isprintable() else show(e.fqn, 80)
    return f"{display(full)}[{show_int(e.offset)}:{show_int(e.offset + e.length)}] ({fqn})"


def _int_tuple(v: Any) -> bool:
    return isinstance(v, (tuple, list)) and all(type(x) is int for x in v)


def _is(obj: Any, cls: str) -> bool:
    return isinstance(obj, Stub) and obj.stub_global.endswith("." + cls)


# A normalised state_dict_metadata entry: None for a byte item, else (size, {chunk offsets: chunk sizes}).
_Items = dict[Any, "tuple[tuple[int, ...], dict[tuple[int, ...], tuple[int, ...]]] | None"]


def _normalise(sdm: dict[Any, Any], keys: set[tuple[Any, Any]], bad: list[str]) -> _Items:
    """Check each entry's own shape (chunk rank, bounds, storage entry) and reduce it to plain tuples."""
    items: _Items = {}
    for n, (fqn, t) in enumerate(sdm.items()):
        if n & 255 == 255:
            tick("tensor metadata")
        if _is(t, "BytesStorageMetadata"):
            if (fqn, None) not in keys:
                bad.append(f"value {show(fqn)} has no storage entry")
            items[fqn] = None
            continue
        if not _is(t, "TensorStorageMetadata"):
            bad.append(f"{show(fqn)} has unknown metadata type {type(t).__name__}")
            continue
        size, chunks = get(t, "size"), get(t, "chunks")
        if not _int_tuple(size) or not isinstance(chunks, list):
            bad.append(f"tensor {show(fqn)} lacks an integer size or a chunk list")
            continue
        size = tuple(size)
        if len(size) > MAX_DIMS:
            bad.append(f"tensor {show(fqn)} has {len(size)} dims (at most {MAX_DIMS})")
            continue
        boxes: dict[tuple[int, ...], tuple[int, ...]] = {}
        for c in chunks:
            offs, sizes = get(c, "offsets"), get(c, "sizes")
            if not (_int_tuple(offs) and _int_tuple(sizes) and len(offs) == len(sizes) == len(size)):
                bad.append(f"tensor {show(fqn)} has a chunk without offsets/sizes of rank {len(size)}")
                break
            offs, sizes = tuple(offs), tuple(sizes)
            if any(o < 0 or s < 0 or o + s > d for o, s, d in zip(offs, sizes, size, strict=True)):
                bad.append(
                    f"chunk at {show_shape(offs)} (sizes {show_shape(sizes)}) of tensor {show(fqn)} lies "
                    f"outside its size {show_shape(size)}"
                )
                break
            if (fqn, offs) not in keys:
                bad.append(f"chunk at {show_shape(offs)} of tensor {show(fqn)} has no storage entry")
                break
            boxes[offs] = sizes
        else:
            items[fqn] = (size, boxes)
    return items


def _merge(per_rank: list[_Items], bad: list[str]) -> _Items:
    """Rank-local mode: each rank's metadata lists only its own chunks; the union must tile each tensor.

    The same chunk in several ranks' metadata is a replica (DCP dedups only with collectives).
    """
    merged: _Items = {}
    for items in per_rank:
        tick("rank-local metadata")
        for fqn, item in items.items():
            have = merged.get(fqn, item)
            if item is None or have is None:
                if (item is None) != (have is None):
                    bad.append(f"{show(fqn)} is a tensor in one rank's metadata and a value in another's")
                merged[fqn] = item
                continue
            if have[0] != item[0]:
                bad.append(
                    f"tensor {show(fqn)} has size {show_shape(have[0])} in one rank's metadata, "
                    f"{show_shape(item[0])} in another's"
                )
                continue
            boxes = dict(have[1])
            for offs, sizes in item[1].items():
                if boxes.setdefault(offs, sizes) != sizes:
                    bad.append(f"chunk at {show_shape(offs)} of tensor {show(fqn)} has different sizes "
                               "in two ranks")
            merged[fqn] = (have[0], boxes)
    return merged


def _coverage(items: _Items) -> tuple[list[str], list[str]]:
    """(tensors whose chunks cover too little or too much, tensors whose chunks overlap)."""
    gaps, overlaps = [], []
    for n, (fqn, item) in enumerate(items.items()):
        if n & 255 == 255:
            tick("chunk coverage")
        if item is None:
            continue
        size, boxes = item
        total = sum(math.prod(s) for s in boxes.values())
        if total != math.prod(size):
            gaps.append(f"chunks of {show(fqn)} cover {show_int(total)} of its {show_int(math.prod(size))} "
                        "elements")
        elif len(boxes) <= MAX_PAIRWISE_CHUNKS and _overlap(list(boxes.items())):
            overlaps.append(f"chunks of {show(fqn)} overlap")
    return gaps, overlaps


def _listing(kind: str, where: str, shown: str, lines: list[str]) -> Problem:
    more = f" (and {len(lines) - MAX_REPORTED} more)" if len(lines) > MAX_REPORTED else ""
    return Problem(kind, where, f"{shown}: " + "; ".join(lines[:MAX_REPORTED]) + more)


def _overlap(boxes: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> bool:
    live = [(o, s) for o, s in boxes if all(s)]
    for i, (oa, sa) in enumerate(live):
        for ob, sb in live[i + 1 :]:
            if all(a < b + bs and b < a + as_ for a, as_, b, bs in zip(oa, sa, ob, sb, strict=True)):
                return True
    return False


def _unreferenced(dirpath: str, names: list[str], referenced: dict[str, int]) -> list[Problem]:
    """Rule 4: data files no metadata refers to (empty buckets are normal; non-empty ones are reported)."""
    ref_ranks = [r for p in referenced if (r := rank_of(p)) is not None]
    top = max(ref_ranks, default=None)
    out = []
    for n in names:
        r = rank_of(n)
        if r is None or n in referenced:
            continue
        full = os.path.join(dirpath, n)
        try:
            size = os.stat(full).st_size
        except OSError:
            continue
        if size == 0:
            continue
        hint = (
            (
                f"; rank {r} is above every referenced rank (max {top}): a leftover of an earlier save with "
                "more "
                "ranks?"
            )
            if top is not None and r > top
            else ""
        )
        out.append(
            Problem(
                "unreferenced_file",
                display(full),
                f"{display(full)} ({size} bytes) is not referenced by the checkpoint metadata{hint}",
            )
        )
    return out


# --------------------------------------------------------------------------------------------------
# Rule 6 (deep): every byte window is a torch.save zip that checks out and matches its chunk


def _deep(dirpath: str, entries: list[_Entry], sdm: dict[Any, Any], mshown: str) -> list[Problem]:
    from ckptwatch.formats.safetensors import check_safetensors
    from ckptwatch.formats.torchzip import check_torch_window

    chunk_of: dict[tuple[Any, tuple[int, ...]], tuple[tuple[int, ...], TorchDtype | None]] = {}
    for fqn, t in sdm.items():
        if _is(t, "TensorStorageMetadata"):
            props = get(t, "properties")
            st = props.stub_state if isinstance(props, Stub) else None
            dtype = st[0] if isinstance(st, tuple) and st else get(props, "dtype")
            for c in get(t, "chunks", default=[]) or []:
                offs, sizes = get(c, "offsets"), get(c, "sizes")
                if _int_tuple(offs) and _int_tuple(sizes):
                    chunk_of[(fqn, tuple(offs))] = (
                        tuple(sizes),
                        dtype if isinstance(dtype, TorchDtype) else None,
                    )
    problems: list[Problem] = []
    safetensors_files: set[str] = set()
    for e in sorted(entries, key=lambda x: (x.path, x.offset)):
        tick("byte windows")
        full = os.path.join(dirpath, e.path)
        if e.transformed:
            continue  # an extension (e.g. compression) re-encoded this window; its bytes are not a zip
        if e.path in safetensors_files:
            continue
        if _looks_like_safetensors(full):
            safetensors_files.add(e.path)
            problems.extend(check_safetensors(full, deep=True).problems)
            continue
        label = _window_label(full, e)
        fc = check_torch_window(full, e.offset, e.length, deep=True, label=label)
        problems.extend(_dcp_window_problems(fc.problems))
        if not file_ok(fc) or e.index_offset is None:
            continue
        expect = chunk_of.get((e.fqn, e.index_offset))
        obj = fc.facts.get("object")
        if expect is None or not isinstance(obj, TensorRef):
            continue
        sizes, dtype = expect
        ref = obj.storage
        need = math.prod(sizes) * (dtype.itemsize if dtype else 0)
        have = getattr(ref, "nbytes", None)
        if obj.size != sizes:
            problems.append(
                Problem(
                    "size_mismatch",
                    display(full),
                    f"{label} holds a tensor of shape {show_shape(obj.size)} "
                    f"but {mshown} describes the chunk as {show_shape(sizes)}",
                )
            )
        elif dtype is not None and isinstance(have, int) and have < need:
            problems.append(
                Problem(
                    "size_mismatch",
                    display(full),
                    f"{label} stores {show_int(have)} bytes but the chunk needs {show_int(need)} "
                    f"({dtype} x {show_shape(sizes)})",
                )
            )
    return problems


def _looks_like_safetensors(path: str) -> bool:
    """DCP's SerializationFormat.SAFETENSORS writes one safetensors file per bucket instead of zips."""
    try:
        with open_regular_file(path) as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= 100_000_000
