"""JSON side files (trainer_state.json, meta.json, index and adapter configs), read with findings.

Python's ``json`` is used on purpose: the Trainer writes ``trainer_state.json`` with
``allow_nan=True``, so a diverged run's file holds bare ``NaN``/``Infinity`` tokens that strict
RFC 8259 parsers reject (layouts.md §3.1).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ckptwatch.formats._io import display, open_regular, open_regular_file, problem_from_oserror, read_to_end
from ckptwatch.formats.limits import LimitExceeded, reserve_json
from ckptwatch.model import Problem

MAX_JSON_BYTES = 64 * 1024 * 1024  # trainer_state.json of a very long run is a few MB


def read_json(path: str, *, what: str = "", opened: int | None = None) -> tuple[Any, Problem | None]:
    """Parse ``path``; return (value, None) or (None, problem). Never raises for bad input.

    ``opened``: an fd of ``path`` from ``open_regular`` that the caller keeps and closes.
    """
    label = what or os.path.basename(path)
    try:
        fd = open_regular(path) if opened is None else opened
        try:
            size = os.fstat(fd).st_size
            if size <= MAX_JSON_BYTES:
                raw = read_to_end(fd, size, MAX_JSON_BYTES + 1)
                size = len(raw)  # it may have grown since the fstat
            if size > MAX_JSON_BYTES:
                return None, Problem("bad_json", path, f"{label} is {size} bytes, more than the "
                                     f"{MAX_JSON_BYTES} a JSON side file may have")
        finally:
            if opened is None:
                os.close(fd)
    except OSError as exc:
        return None, problem_from_oserror(path, exc)
    if not raw.strip():
        return None, Problem("empty_file", path, f"{label} is empty ({len(raw)} bytes)")
    return parse_json(raw, path, label)


def parse_json(raw: bytes, path: str, label: str) -> tuple[Any, Problem | None]:
    """``json.loads`` of a side file's bytes, bounded: (value, None) or (None, problem); never raises.

    The parse cannot be interrupted, so its cost is refused up front when the file's memory allowance
    cannot cover it (``limits.json_cost``); its time is bounded by ``MAX_JSON_BYTES`` (~1 s). Nesting
    deeper than the interpreter's recursion limit (~1,000; real side files nest under 10) and integers
    over 4,300 digits (Python's limit on int parsing) are malformed files, not crashes.
    """
    try:
        reserve_json(raw, f"parsing its {len(raw)} bytes of JSON", display(path))
    except LimitExceeded as exc:
        return None, Problem(exc.kind, path, exc.message)
    try:
        return json.loads(raw.decode("utf-8")), None
    except UnicodeDecodeError as exc:
        return None, Problem("bad_json", path, f"{label} is not UTF-8 (byte {exc.start})")
    except json.JSONDecodeError as exc:
        return None, Problem("bad_json", path, f"{label} is not valid JSON: {exc.msg} at line {exc.lineno} "
                             f"column {exc.colno} (file is {len(raw)} bytes; a save cut short?)")
    except RecursionError:
        return None, Problem("bad_json", path, f"{label} nests arrays or objects deeper than a JSON reader "
                             f"follows (file is {len(raw)} bytes); no framework writes such a file")
    except ValueError as exc:  # int(): "Exceeds the limit (4300 digits) for integer string conversion"
        return None, Problem("bad_json", path, f"{label} holds a number too long to be read "
                             f"({str(exc).split(';')[0]}); no framework writes such a file")


def read_text(path: str, *, limit: int = 4096) -> tuple[str | None, Problem | None]:
    """A small text pointer file (DeepSpeed ``latest``, Megatron tracker), stripped."""
    try:
        with open_regular_file(path) as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        return None, problem_from_oserror(path, exc)
    if len(raw) > limit:
        return None, Problem("pointer_unreadable", path,
                             f"{path} is larger than {limit} bytes; not a pointer")
    try:
        return raw.decode("utf-8").strip(), None
    except UnicodeDecodeError:
        return None, Problem("pointer_unreadable", path, f"{path} is not UTF-8 text")
