"""The kinds of value a config key holds: each reads one TOML value, or says what it must be.

Messages follow one pattern, ``must be WHAT, not VALUE`` (``WHAT`` generated from the bounds unless a
field words it itself with ``why=``), so an operator sees both the rule and what the file said. Kinds
whose values may be secrets (the alert URLs in ``alerts.py``) never echo the value.

Kinds are plain classes, not dataclasses: the CLI imports this module on every ``verify``, and each
dataclass costs about a millisecond to create at import.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from ckptwatch.config.reader import Location, read_table
from ckptwatch.settle import parse_duration


def _within(value: float, minimum: float | None, above: bool, maximum: float | None, below: bool) -> bool:
    if minimum is not None and (value <= minimum if above else value < minimum):
        return False
    return maximum is None or (value < maximum if below else value <= maximum)


def _bounds(noun: str, minimum: float | None, above: bool, maximum: float | None, below: bool) -> str:
    if maximum is None:
        return f"{noun} {'>' if above else '>='} {minimum:g}" if minimum is not None else noun
    low = "-inf" if minimum is None else f"{minimum:g}"
    return f"{noun} in {'(' if above else '['}{low}, {maximum:g}{')' if below else ']'}"


class Number:
    """A TOML integer or float (never a boolean) within bounds -> ``float``.

    ``above``/``below`` exclude the bound itself. ``noun`` names the quantity ("a number of seconds").
    """

    __slots__ = ("above", "below", "maximum", "minimum", "noun", "why")

    def __init__(self, minimum: float | None = None, *, above: bool = False, maximum: float | None = None,
                 below: bool = False, noun: str = "a number", why: str | None = None) -> None:
        self.minimum, self.above, self.maximum, self.below, self.noun, self.why = \
            minimum, above, maximum, below, noun, why

    def read(self, value: Any, at: Location) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not _within(value, self.minimum, self.above, self.maximum, self.below):
            what = self.why or _bounds(self.noun, self.minimum, self.above, self.maximum, self.below)
            raise at.error(f"must be {what}, not {value!r}")
        return float(value)


class Whole:
    """A TOML integer (never a float or boolean) in ``[minimum, maximum]`` -> ``int``."""

    __slots__ = ("maximum", "minimum", "why")

    def __init__(self, minimum: int, maximum: int | None = None, *, why: str | None = None) -> None:
        self.minimum, self.maximum, self.why = minimum, maximum, why

    def read(self, value: Any, at: Location) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < self.minimum \
                or (self.maximum is not None and value > self.maximum):
            what = self.why or (f"a whole number >= {self.minimum}" if self.maximum is None
                                else f"a whole number from {self.minimum} to {self.maximum}")
            raise at.error(f"must be {what}, not {value!r}")
        return value


class Duration:
    """``"90s"``, ``"30m"``, ``"6h"``, ``"2d"`` or a number of seconds, within bounds -> seconds.

    ``why`` words the bounds (generated from them by default). ``off``: a word that means "never"
    (``stalled_after = "off"``); it reads as ``math.inf``, which the section turns into whatever
    "never" means for it.
    """

    __slots__ = ("above", "maximum", "minimum", "off", "why")

    def __init__(self, minimum: float = 0.0, *, above: bool = False, maximum: float | None = None,
                 off: str | None = None, why: str | None = None) -> None:
        self.minimum, self.above, self.maximum, self.off, self.why = minimum, above, maximum, off, why

    def read(self, value: Any, at: Location) -> float:
        if self.off is not None and value == self.off:
            return math.inf
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise at.error(f'must be a duration such as "30m", not {value!r}')
        try:
            seconds = parse_duration(str(value))
        except ValueError as exc:
            raise at.error(str(exc)) from None
        if not _within(seconds, self.minimum, self.above, self.maximum, False):
            what = self.why or _bounds("a duration", self.minimum, self.above, self.maximum, False)
            raise at.error(f"must be {what}, not {value!r}")
        return seconds


class Boolean:
    """``true`` or ``false``, nothing that merely looks like one."""

    __slots__ = ()

    def read(self, value: Any, at: Location) -> bool:
        if not isinstance(value, bool):
            raise at.error(f"must be true or false, not {value!r}")
        return value


class OneOf:
    """One string out of a closed list."""

    __slots__ = ("choices",)

    def __init__(self, *choices: str) -> None:
        self.choices = choices

    def read(self, value: Any, at: Location) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise at.error(f"{value!r} is not one of {', '.join(self.choices)}")
        return value


class Text:
    """A non-empty string."""

    __slots__ = ("what",)

    def __init__(self, what: str = "a non-empty string") -> None:
        self.what = what

    def read(self, value: Any, at: Location) -> str:
        if not isinstance(value, str) or not value.strip():
            raise at.error(f"must be {self.what}, not {value!r}")
        return value


class Path:
    """A filesystem path: ``~`` expanded; made absolute when ``absolute``; ``""`` allowed when ``empty``."""

    __slots__ = ("absolute", "empty", "what")

    def __init__(self, what: str, *, empty: bool = True, absolute: bool = False) -> None:
        self.what, self.empty, self.absolute = what, empty, absolute

    def read(self, value: Any, at: Location) -> str:
        if not isinstance(value, str) or (not value and not self.empty):
            raise at.error(f"must be {self.what}, not {value!r}")
        path = os.path.expanduser(value)
        return os.path.abspath(path) if self.absolute and path else path


class Strings:
    """A list of non-empty strings -> ``tuple``; ``single``: one string stands for a list of one."""

    __slots__ = ("non_empty", "single", "why")

    def __init__(self, why: str = "a list of non-empty strings", *, single: bool = False,
                 non_empty: bool = False) -> None:
        self.why, self.single, self.non_empty = why, single, non_empty

    def read(self, value: Any, at: Location) -> tuple[str, ...]:
        items = [value] if self.single and isinstance(value, str) else value
        if not isinstance(items, list) or (self.non_empty and not items) \
                or not all(isinstance(s, str) and s for s in items):
            raise at.error(f"must be {self.why}, not {items!r}")
        return tuple(items)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B?)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """``"50G"``, ``"500MiB"``, ``"1.5T"``, ``1000000`` -> bytes (binary units). Raises ValueError."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a size")  # noqa: TRY004 - callers turn ValueError into a ConfigError
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{text!r} is negative")
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a size (use e.g. 50G, 500M, 1T, or a number of bytes)")
    factor = 1024 ** ("KMGTP".find(m.group(2).upper()) + 1) if m.group(2) else 1
    return int(float(m.group(1)) * factor)


class Size:
    """``"50G"``, ``"10GiB"`` or a number of bytes (binary units) -> bytes."""

    __slots__ = ()

    def read(self, value: Any, at: Location) -> int:
        try:
            return parse_size(value)
        except ValueError as exc:
            raise at.error(str(exc)) from None


class Table:
    """A sub-table -> an instance of the section dataclass ``cls`` (read by ``read_table``).

    ``switch``: a boolean key (``enabled``) that, when false, makes the whole table read as ``None``.
    """

    __slots__ = ("cls", "switch", "why")

    def __init__(self, cls: type, why: str = "a table", *, switch: str | None = None) -> None:
        self.cls, self.why, self.switch = cls, why, switch

    def read(self, value: Any, at: Location) -> Any:
        if self.switch is None:
            return read_table(value, at, self.cls, why=self.why)
        if not isinstance(value, dict):
            raise at.error(f"must be {self.why}")
        if not Boolean().read(value.get(self.switch, True), at.key(self.switch)):
            return None
        return read_table(value, at, self.cls, why=self.why, extra=(self.switch,))


class Tables:
    """An array of tables (``[[watch]]``) -> a tuple of ``cls``, each located as ``key[i]``."""

    __slots__ = ("cls", "why")

    def __init__(self, cls: type, why: str = "an array of tables") -> None:
        self.cls, self.why = cls, why

    def read(self, value: Any, at: Location) -> tuple[Any, ...]:
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise at.error(f"must be {self.why}")
        return tuple(read_table(t, at.item(i), self.cls) for i, t in enumerate(value))
