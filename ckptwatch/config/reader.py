"""The typed table reader: a TOML table + a frozen keyword-only dataclass -> a validated instance.

A section is declared once, as a dataclass whose fields carry their defaults and, in their metadata,
the *kind* of value the key holds (``kinds.py``). ``read_table`` then does what every section needs:

- reject a key that no field reads, listing the known ones (a config must not promise a behaviour
  ckptwatch does not have);
- convert each key present with its field's kind; a key absent keeps the dataclass default, so the
  dataclass is the only place a default is written;
- report a field without a default and without its key as required;
- run the section's ``checked(at)`` hook, if it has one, for rules that span keys (``min_points`` not
  above ``window``; route names resolved against ``[alerts.channels]``; overlapping watch roots).

Every error is a ``ConfigError`` of the form ``FILE: dotted.key: why``, the dotted key built by
``Location`` as the reader descends (``watch[0].loss.jump_ratio``).

A field is declared with ``setting(kind, default=...)``. A field declared without a kind is not a
key: the section computes it (``AlertsConfig.stalled``) or the caller passes it (``Config.source``).

``override`` applies values from elsewhere (command-line flags) by key, through the same kinds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import MISSING
from typing import Any, Protocol, TypeVar

from ckptwatch.errors import ConfigError

T = TypeVar("T")

KIND = "ckptwatch.config.kind"  # field metadata: the Kind that reads the key
KEY = "ckptwatch.config.key"  # field metadata: the key's name where it differs from the field's
DOC = "ckptwatch.config.doc"  # field metadata: what a required key is, for "is required: ..."


class Location:
    """Where a value sits: the config file and the dotted key (``""`` for the file's top level)."""

    __slots__ = ("path", "source")

    def __init__(self, source: str, path: str = "") -> None:
        self.source, self.path = source, path

    def key(self, name: str) -> Location:
        return Location(self.source, f"{self.path}.{name}" if self.path else name)

    def item(self, index: int) -> Location:
        return Location(self.source, f"{self.path}[{index}]")

    def error(self, why: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.path}: {why}" if self.path else f"{self.source}: {why}")


class Kind(Protocol):
    """Reads one TOML value into its Python value, or raises ``at.error(why)``."""

    def read(self, value: Any, at: Location) -> Any: ...


def setting(kind: Kind, *, default: Any = MISSING, factory: Any = MISSING, key: str | None = None,
            doc: str | None = None, hashed: bool | None = None) -> Any:
    """A dataclass field read from the key ``key`` (default: the field's name) by ``kind``.

    No ``default`` and no ``factory``: the key is required, and ``doc`` says what it is. ``hashed=False``
    leaves a dict-valued field out of the section's hash.
    """
    metadata: dict[str, Any] = {KIND: kind}
    if key is not None:
        metadata[KEY] = key
    if doc is not None:
        metadata[DOC] = doc
    return dataclasses.field(default=default, default_factory=factory, hash=hashed, metadata=metadata)


def keys_of(cls: type) -> dict[str, dataclasses.Field]:
    """The keys a section dataclass reads, in declaration order, each with its field."""
    return {f.metadata.get(KEY, f.name): f for f in dataclasses.fields(cls) if KIND in f.metadata}


def _unknown_key(names: Collection[str]) -> str:
    return f"unknown key (known: {', '.join(sorted(names))})"


def read_table(raw: Any, at: Location, cls: type[T], *, why: str = "a table", extra: Collection[str] = (),
               **given: Any) -> T:
    """Validate the TOML table ``raw`` found at ``at`` into the section dataclass ``cls``.

    ``why`` completes "must be ..." when ``raw`` is no table. ``extra`` names keys the caller reads
    itself (a switch such as ``enabled``), so they are not unknown; ``given`` sets fields that are no
    key (``source``).
    """
    if not isinstance(raw, dict):
        raise at.error(f"must be {why}")
    keys = keys_of(cls)
    for name in raw:
        if name not in keys and name not in extra:
            raise at.key(name).error(_unknown_key([*keys, *extra]))
    values = dict(given)
    for name, f in keys.items():
        if name in raw:
            values[f.name] = f.metadata[KIND].read(raw[name], at.key(name))
        elif f.default is MISSING and f.default_factory is MISSING:
            doc = f.metadata.get(DOC)
            raise at.key(name).error(f"is required: {doc}" if doc else "is required")
    return _checked(cls(**values), at)


def override(section: T, values: Mapping[str, Any], source: str = "command line") -> T:
    """A copy of ``section`` with some keys replaced, each read by its field's kind; ``None`` = not given.

    Keys are dotted config keys relative to ``section``: ``{"settle_seconds": 5}`` on a
    ``ServiceConfig``, ``{"service.settle_seconds": 5}`` on a ``Config``. The sections' ``checked``
    rules run again on the result. A bad value raises ``ConfigError("{source}: {key}: {why}")``; an
    unknown key is a ``KeyError`` (a bug in the caller).
    """
    return _override(section, {k: v for k, v in values.items() if v is not None}, Location(source))


def _override(section: T, values: Mapping[str, Any], at: Location) -> T:
    if not values:
        return section
    keys = keys_of(type(section))
    nested: dict[str, dict[str, Any]] = {}
    changes: dict[str, Any] = {}
    for dotted, value in values.items():
        name, _, rest = dotted.partition(".")
        if name not in keys:
            raise KeyError(f"{type(section).__name__} has no key {name!r}")
        if rest:
            nested.setdefault(name, {})[rest] = value
        else:
            changes[keys[name].name] = keys[name].metadata[KIND].read(value, at.key(name))
    for name, inner in nested.items():
        field_name = keys[name].name
        current = getattr(section, field_name)
        if current is None:
            raise KeyError(f"{at.key(name).path}: the table is switched off; there is nothing to override")
        changes[field_name] = _override(current, inner, at.key(name))
    return _checked(dataclasses.replace(section, **changes), at)


def _checked(section: T, at: Location) -> T:
    check = getattr(section, "checked", None)
    return check(at) if check is not None else section
