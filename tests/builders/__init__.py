"""Builders of real checkpoints for the tests.

Each builder writes one realistic training output into ``dest`` using the real framework (or, where the
framework cannot run here, a synthetic layout written with torch/protobuf; such builders say so in
their docstring). Builders are registered by name; ``tests/conftest.py`` builds each one at most once
per test run and hands tests a *copy*, so a test may damage its copy freely.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

Builder = Callable[[Path], None]
REGISTRY: dict[str, Builder] = {}


def builder(name: str) -> Callable[[Builder], Builder]:
    """Register ``fn(dest: Path) -> None`` under ``name``; ``dest`` exists and is empty."""

    def register(fn: Builder) -> Builder:
        if name in REGISTRY:
            raise ValueError(f"builder {name!r} registered twice")
        REGISTRY[name] = fn
        return fn

    return register


def load_all() -> None:
    """Import every builder module so its builders register themselves."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
