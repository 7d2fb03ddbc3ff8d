"""Is a checkpoint path safe to print for a shell, what are its exact bytes, and how is it shown to a person?

``latest`` is used as ``ckpt=$(ckptwatch latest RUN) && torchrun train.py --resume "$ckpt"``. What it
prints must be, byte for byte, the checkpoint it judged: ``$(...)`` strips trailing newlines (a
complete ``checkpoint-30<newline>`` would become the incomplete ``checkpoint-30``), a newline inside a
name splits it for ``read`` and ``for`` loops, and a terminal control byte rewrites what the operator
sees. So a path with a control character is refused (``--print0`` and ``--json`` carry it instead).

The verdicts carry paths as ``display`` made them (``formats._io.display``: a byte that is not UTF-8
becomes the four characters ``\\xNN``), so the exact bytes are recovered here and checked against the
disk: a name that really contains a backslash and one whose bytes were escaped can look alike, and
when the disk cannot tell them apart the path is refused rather than guessed.
"""

from __future__ import annotations

import os
import re
from typing import BinaryIO

from ckptwatch.model import Record, set_field

_ESCAPE = re.compile(r"\\x([0-9a-f]{2})")


class ShellPath(Record):
    """The exact bytes of a shown path, and why it must not be printed bare (``None``: it may be)."""

    __slots__ = ("raw", "refusal")
    raw: bytes | None  # None: the bytes could not be recovered unambiguously
    refusal: str | None

    def __init__(self, raw: bytes | None, refusal: str | None) -> None:
        set_field(self, "raw", raw)
        set_field(self, "refusal", refusal)


def _display(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def exact_bytes(shown: str) -> bytes | None:
    """The bytes of the existing path that ``shown`` displays, or None when none or two paths fit."""
    literal = os.fsencode(shown)
    candidates = {literal}
    if "\\x" in shown:
        candidates.add(_ESCAPE.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), shown).encode(
            "utf-8", "surrogateescape"))
    fits = [c for c in candidates if _display(c) == shown and os.path.lexists(c)]
    return fits[0] if len(fits) == 1 else None


def control_characters(raw: bytes) -> list[str]:
    """The control characters in ``raw``, named (``\\n``, ``\\x1b``...), in order of appearance."""
    return [repr(chr(b))[1:-1] for b in raw if b < 0x20 or b == 0x7F]


def for_shell(shown: str) -> ShellPath:
    """Whether ``shown`` may be printed as a bare line for a shell script, and its exact bytes."""
    raw = exact_bytes(shown)
    if raw is None:
        return ShellPath(None, f"{shown!r} cannot be mapped back to one path on disk (its name has bytes "
                               "that are not UTF-8 and a backslash); use --print0 or --json")
    bad = control_characters(raw)
    if bad:
        return ShellPath(raw, f"{shown!r} contains the control character(s) {' '.join(sorted(set(bad)))}: "
                              "a shell's $(...) or read would not give back this path; rename it, or use "
                              "--print0 or --json")
    return ShellPath(raw, None)


def write_path(shown: str, out: BinaryIO, *, print0: bool = False) -> str | None:
    """Write ``shown``'s exact bytes and a newline (or a NUL with ``print0``) to ``out``; else the refusal.

    With ``print0`` only an ambiguous path is refused: NUL cannot occur in a path, so every other one
    goes through ``xargs -0`` or ``read -d ''`` intact.
    """
    sp = for_shell(shown)
    if sp.raw is None or (sp.refusal and not print0):
        return sp.refusal
    out.write(sp.raw + (b"\0" if print0 else b"\n"))
    out.flush()
    return None


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Unicode categories escaped: controls, format (bidi overrides), lone surrogates, line/paragraph breaks.
_UNSEEN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def for_terminal(shown: str) -> str:
    """``shown`` for a line a person reads: control and layout characters escaped (``\\n``, ``\\x1b``,
    ``\\u202e``), so a name with a newline stays on its note's line and an escape sequence or a bidi
    override in a name cannot rewrite or reorder what the terminal shows. For reading, not for reuse:
    the exact bytes are what ``write_path`` and ``path_b64`` give."""
    if shown.isprintable():  # nearly every path
        return shown
    import unicodedata  # only here: its import is ~0.3 ms of every `latest`, which prints a plain path

    return "".join(_escaped(c) if unicodedata.category(c) in _UNSEEN else c for c in shown)


def _escaped(c: str) -> str:
    named = _NAMED.get(c)
    if named:
        return named
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def path_b64(shown: str) -> str | None:
    """The exact bytes of ``shown`` in base64 for ``--json`` (None when they cannot be recovered)."""
    import base64

    raw = exact_bytes(shown)
    return base64.b64encode(raw).decode("ascii") if raw is not None else None
