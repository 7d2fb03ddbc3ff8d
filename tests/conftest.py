"""Shared fixtures: real checkpoints built once per test run, copied per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.builders import REGISTRY, load_all
from tests.s3server import s3, s3_server, s3_target  # noqa: F401 - the S3 endpoint fixtures (moto)

load_all()


@pytest.fixture(scope="session")
def _artefact_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {}


@pytest.fixture(scope="session")
def _artefact_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artefacts")


@pytest.fixture
def artefact(_artefact_cache: dict[str, Path], _artefact_root: Path, tmp_path: Path):
    """``artefact(name)`` -> a private copy of the output dir the named builder writes.

    The real build runs once per test run (it may take seconds: real frameworks); every test gets its
    own copy (symlinks kept as symlinks, modes and mtimes preserved) so it may truncate, delete or chmod.
    """

    def get(name: str) -> Path:
        if name not in REGISTRY:
            raise KeyError(f"no builder named {name!r}; known: {sorted(REGISTRY)}")
        if name not in _artefact_cache:
            dest = _artefact_root / name
            dest.mkdir()
            REGISTRY[name](dest)
            _artefact_cache[name] = dest
        copy = tmp_path / name
        shutil.copytree(_artefact_cache[name], copy, symlinks=True)
        return copy

    return get
