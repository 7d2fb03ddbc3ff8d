"""Text for values read from a file, safe to put in a message whatever the file holds.

Why a module of its own: a message must never raise. Values that come out of a pickle or a header can
be integers of any size (``str()`` of one over 4,300 digits raises ValueError, and a 1 MB one takes
seconds to convert), containers nested 200,000 deep (``repr`` raises RecursionError) or a million items
long. ``show`` renders any of them in bounded time and length; readers use it, never ``repr``/``str``,
on what a file declared. This is the one home of such text: the pickle walker, the torch, DCP, MindSpore
and safetensors readers and the layouts all use it, so a fix here covers every message.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

MAX_DIGITS = 40  # integers longer than this are described, not printed
MAX_ITEMS = 8
MAX_DEPTH = 3
MAX_TEXT = 80
_LOG10_2 = 0.30102999566398120
_SCALARS = (bool, int, float, str, bytes, bytearray)


def show_int(n: int) -> str:
    """``n`` in decimal, or "a 5001-digit integer of 16610 bits" when it is too long to be a real size
    or step (the digit count is estimated from the bits, so it is never ``str()``'d)."""
    if -(10 ** MAX_DIGITS) < n < 10 ** MAX_DIGITS:
        return str(n)
    bits = abs(n).bit_length()
    digits = int(bits * _LOG10_2) + 1
    return f"{'a negative' if n < 0 else 'a'} {digits}-digit integer of {bits} bits"


def show(value: Any, limit: int = MAX_TEXT) -> str:
    """A short, never-raising rendering of ``value`` (as ``repr`` would show it, cut to ``limit``)."""
    try:
        text = _show(value, MAX_DEPTH)
    except Exception:  # noqa: BLE001 - a message must not fail, whatever the object's __repr__ does
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show_brief(value: Any, limit: int = 40) -> str:
    """A scalar as ``show`` renders it; anything else only by its kind: "a tuple", "a torch.Foo object".

    Why: where a message names one value in passing (a persistent id's kind, a protocol version) the
    value should have been a plain scalar, and what it is instead is the finding, not its contents.
    """
    t = type(value)
    if t in _SCALARS or value is None:
        return show(value, limit)
    name = getattr(value, "stub_global", None)  # a pickle stub: name its global, never call its repr
    if isinstance(name, str):
        return f"a {name[:limit]} object"
    return f"a {t.__name__}"


def show_shape(dims: Any) -> str:
    """A shape or index list: ``[4096, 4096]``, with long lists and huge numbers shortened."""
    return show(list(dims) if isinstance(dims, tuple) else dims, limit=160)


def _show(v: Any, depth: int) -> str:
    t = type(v)
    if t is bool or v is None:
        return repr(v)
    if t is int:
        return show_int(v)
    if t is float:
        return repr(v)
    if t is str:
        return repr(v[:MAX_TEXT]) + ("..." if len(v) > MAX_TEXT else "")
    if t in (bytes, bytearray):
        return repr(bytes(v[:MAX_TEXT // 2])) + ("..." if len(v) > MAX_TEXT // 2 else "")
    if t in (list, tuple, set, frozenset, dict):
        if depth <= 0:
            return {list: "[...]", tuple: "(...)", dict: "{...}"}.get(t, "{...}")
        if t is dict:
            parts = [f"{_show(k, depth - 1)}: {_show(x, depth - 1)}" for k, x in islice(v.items(), MAX_ITEMS)]
        else:
            parts = [_show(x, depth - 1) for x in islice(v, MAX_ITEMS)]
        more = [f"... {len(v) - MAX_ITEMS} more"] if len(v) > MAX_ITEMS else []
        inner = ", ".join(parts + more)
        if t is list:
            return f"[{inner}]"
        if t is tuple:
            return f"({inner}{',' if len(v) == 1 else ''})"
        return f"{{{inner}}}"
    name = getattr(v, "stub_global", None)  # a pickle stub: name its global, never call its repr
    if isinstance(name, str):
        return f"<{name[:MAX_TEXT]}>"
    return f"<{t.__name__}>"
