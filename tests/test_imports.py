"""Imports flow one way (DESIGN.md, STYLE.md convention 12), and no module imports itself through others.

The floors, bottom up: the model; the vocabularies; pure decisions and the settings they read; readers
and adapters (one file, one library); layouts (a directory of files, and the rules over what they
gather); the engine; sinks and outputs (what consumes run reports); the daemon; the command line. A
module may import its own floor or a lower one, never a higher one.

Every import counts: at module level, inside a function (a lazy import is still a dependency, and a
cycle through one only waits for its first call) and under ``TYPE_CHECKING``. The modules are read with
``ast``, never imported, so the test is fast and sees every branch.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

MODEL, VOCABULARY, PURE, READERS, LAYOUTS, ENGINE, SINKS, DAEMON, CLI = range(9)
FLOOR_NAMES = ("model", "vocabulary", "pure", "readers", "layouts", "engine", "sinks", "daemon", "cli")

# Module prefix -> floor. The longest prefix wins, so a package's entry is the default of its modules and
# a module's own entry overrides it. A module that matches nothing fails the test: place it here.
FLOORS: dict[str, int] = {
    "ckptwatch": MODEL,  # the package itself only: __version__
    "ckptwatch.model": MODEL,
    "ckptwatch.errors": MODEL,
    "ckptwatch.losswatch.points": MODEL,  # the loss watch's data types
    "ckptwatch.vocabulary": VOCABULARY,  # problem and hazard kinds: severity, advice
    "ckptwatch.alerts.kinds": VOCABULARY,  # alert kinds and severities
    "ckptwatch.settle": PURE,
    "ckptwatch.findings": PURE,  # the one JSON form of a problem and a hazard
    "ckptwatch.resume": PURE,  # which checkpoint a resume should use
    "ckptwatch.config.reader": PURE,  # the typed table reader and the sections that need no layouts
    "ckptwatch.config.kinds": PURE,
    "ckptwatch.config.secrets": PURE,
    "ckptwatch.config.service": PURE,
    "ckptwatch.config.defaults": PURE,  # the [service] defaults latest reads without the section
    "ckptwatch.config.loss": PURE,
    "ckptwatch.config.alerts": PURE,
    "ckptwatch.config.retention": PURE,
    "ckptwatch.config.mirror": PURE,
    "ckptwatch.mirror": PURE,  # the package itself is a docstring; its modules have their own floors
    "ckptwatch.mirror.hashing": READERS,  # the one choice of content hash (hashlib; xxhash once added)
    "ckptwatch.mirror.target": READERS,  # the storage Protocol and the local backend
    "ckptwatch.mirror.fsspec_target": READERS,  # object storage (s3://) through fsspec/s3fs, lazily
    "ckptwatch.mirror.targets": READERS,  # which target a `to` value names (a path or a URL)
    "ckptwatch.mirror.cancel": READERS,  # a target wrapper whose writes stop once a cancel is set
    "ckptwatch.mirror.lag": PURE,  # how far a run's mirror is behind (status and metrics)
    "ckptwatch.mirror.manifest": READERS,  # manifest, commit marker, journal: format and I/O via a target
    "ckptwatch.mirror.restore": READERS,  # restore and verify a committed copy
    "ckptwatch.mirror.wrap": READERS,  # a Target passing every call on: the base of the two below
    "ckptwatch.mirror.throttle": READERS,  # max_rate: the token bucket around a target's uploads
    "ckptwatch.mirror.progress": READERS,  # byte counters around a target, percent steps
    "ckptwatch.mirror.lock": READERS,  # one writer per copy: flock locally, a lease object on S3
    "ckptwatch.mirror.pointer_record": READERS,  # the run's pointer record: format, read through a target
    "ckptwatch.mirror.pointers": LAYOUTS,  # run-level pointers (DeepSpeed latest, ...) recorded per run
    "ckptwatch.mirror.copy": LAYOUTS,  # one checkpoint's files (scan.tree) -> a committed copy
    "ckptwatch.mirror.status": LAYOUTS,  # once --json's mirror object: the target's markers
    "ckptwatch.retention.model": PURE,  # the plan's types, below policy and guards
    "ckptwatch.retention.policy": PURE,  # the keep rules and the plan
    "ckptwatch.retention.guards": PURE,  # the invariants no plan may break
    "ckptwatch.alerts.config": PURE,  # the [alerts] section, read by the pure conditions
    "ckptwatch.alerts.messages": PURE,
    "ckptwatch.alerts.conditions": PURE,
    "ckptwatch.alerts.plan": PURE,
    "ckptwatch.losswatch.settings": PURE,  # the [watch.loss] section, read by the pure rule
    "ckptwatch.losswatch.rule": PURE,
    "ckptwatch.losswatch.parse": PURE,
    "ckptwatch.losswatch.report": PURE,
    "ckptwatch.losswatch.signals": PURE,  # resume signals besides the writers: run config, initial level
    "ckptwatch.formats": READERS,
    "ckptwatch.adapters": READERS,  # PEFT adapter weights
    "ckptwatch.shellpath": READERS,  # is a path safe to print for a shell; its exact bytes
    "ckptwatch.losswatch": READERS,  # loss sources, tailing, plots and the watcher over them
    "ckptwatch.alerts.sender": READERS,  # apprise
    "ckptwatch.watch": READERS,  # watchdog
    "ckptwatch.poller": READERS,  # the checkpoint-aware polling observer
    "ckptwatch.writers": READERS,  # psutil: who holds a file open
    "ckptwatch.notify": READERS,  # sd_notify
    "ckptwatch.statedb": READERS,  # sqlite, its errors mapped to the state-store error tree
    "ckptwatch.statelock": READERS,  # one service per state dir (flock)
    "ckptwatch.pointer": READERS,  # the ckptwatch-latest files (read and write; its sink is sinks.pointer)
    "ckptwatch.scan": LAYOUTS,
    "ckptwatch.filecheck": LAYOUTS,
    "ckptwatch.layouts": LAYOUTS,
    "ckptwatch.discover": LAYOUTS,
    "ckptwatch.hazards": LAYOUTS,  # pure rules over the facts the layouts gather (paths shown by scan)
    "ckptwatch.packed": LAYOUTS,  # the engine cache's kept records, packed (knows Judgement, a layouts type)
    "ckptwatch.retention.facts": LAYOUTS,  # metrics, pins, framework pointers, the best checkpoint
    "ckptwatch.retention.delete": LAYOUTS,  # the one guarded deletion path (re-checks with the layouts)
    "ckptwatch.retention.access": LAYOUTS,  # may this user delete under a root (discovery + os.access)
    "ckptwatch.engine": ENGINE,
    "ckptwatch.passes": ENGINE,  # the service's pass: the engine with its caches and the open-files rule
    "ckptwatch.config": ENGINE,  # the whole file: the sections below, and the layouts' names
    "ckptwatch.retention": PURE,  # the package itself is a docstring; its modules have their own floors
    "ckptwatch.retention.execute": LAYOUTS,  # facts -> plan -> refusals -> the deletion path, for one run
    "ckptwatch.retention.service": SINKS,  # the retention sink
    "ckptwatch.mirror.service": SINKS,  # the mirror sink: copies on the background worker
    "ckptwatch.sinks": SINKS,  # the sink interface, the fault reporter, and the small sinks
    "ckptwatch.losswatch.service": SINKS,  # the loss watch's sink
    "ckptwatch.state": SINKS,
    "ckptwatch.alerts": SINKS,  # the service facade, the dispatcher and its ledger
    "ckptwatch.metrics": SINKS,
    "ckptwatch.report": SINKS,  # --json and the table of `once`
    "ckptwatch.verify": SINKS,  # `verify`: the engine on one checkpoint
    "ckptwatch.daemon": DAEMON,
    "ckptwatch.observers": DAEMON,  # the daemon's filesystem observers
    "ckptwatch.cli": CLI,
    "ckptwatch.cliargs": CLI,  # the check flags several commands share
    "ckptwatch.progressbar": CLI,  # tqdm bars on a terminal for mirror, restore, verify --deep
    "ckptwatch.__main__": CLI,
    "ckptwatch.alerts.cli": CLI,
    "ckptwatch.losswatch.cli": CLI,
    "ckptwatch.retention.cli": CLI,
    "ckptwatch.mirror.cli": CLI,
}

# Known exceptions, each with the reason it is still here; a fixed one must be removed from its list (the
# tests fail on an entry that no longer happens). Cycles are written as the sorted modules they join.
KNOWN_CYCLES: set[tuple[str, ...]] = set()
KNOWN_UPWARD: set[tuple[str, str]] = set()  # (importer, imported)


@dataclass(frozen=True)
class Import:
    """One import statement's target inside the same package, and where it is."""

    importer: str
    imported: str
    line: int


def _modules(package: str, root: Path) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (a package by its own name, not ``__init__``)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` is, or the innermost module it lives in (``pkg.mod.func`` -> ``pkg.mod``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(package: str, root: Path = REPO) -> tuple[dict[str, Path], list[Import]]:
    """The modules of ``package`` (a directory under ``root``) and every import between two of them."""
    modules = _modules(package, root)
    found = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importer's package, one level up per extra dot
                    here = name if is_package else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        here = here.rpartition(".")[0]
                    base = f"{here}.{base}" if base else here
                # ``from pkg import mod`` imports the module ``pkg.mod``; ``from mod import f``, ``mod``
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for t in targets:
                if t.split(".")[0] != package:
                    continue
                imported = _target(t, modules)
                if imported and imported != name:
                    found.append(Import(name, imported, node.lineno))
    return modules, found


def _cycles(modules: dict[str, Path], imports: list[Import]) -> list[list[Import]]:
    """One import cycle per strongly connected group of modules, as the imports that close it."""
    edges: dict[str, dict[str, Import]] = {m: {} for m in modules}
    for imp in imports:
        edges[imp.importer].setdefault(imp.imported, imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(m: str) -> None:  # Tarjan: the graph is small, recursion is fine
        index[m] = low[m] = len(index)
        stack.append(m)
        for n in edges[m]:
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            group = []
            while True:
                n = stack.pop()
                group.append(n)
                if n == m:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    return [_cycle_in(set(g), edges) for g in groups]


def _cycle_in(group: set[str], edges: dict[str, dict[str, Import]]) -> list[Import]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths: dict[str, list[Import]] = {start: []}
    frontier = [start]
    while frontier:
        nxt = []
        for m in frontier:
            for n, imp in sorted(edges[m].items()):
                if n == start:
                    return [*paths[m], imp]
                if n in group and n not in paths:
                    paths[n] = [*paths[m], imp]
                    nxt.append(n)
        frontier = nxt
    raise AssertionError(f"no cycle in {group}")


def _show(cycle: list[Import]) -> str:
    return " -> ".join([cycle[0].importer, *(f"{i.imported} (line {i.line} of {i.importer})" for i in cycle)])


def floor_of(module: str) -> int | None:
    """The floor of ``module``: its longest prefix in FLOORS (the root package matches only itself)."""
    name = module
    while "." in name:
        if name in FLOORS:
            return FLOORS[name]
        name = name.rpartition(".")[0]
    return FLOORS.get(module)


def _floor_name(module: str) -> str:
    floor = floor_of(module)
    return "no floor" if floor is None else FLOOR_NAMES[floor]


@pytest.mark.parametrize("package", ["ckptwatch", "bench", "tests"])
def test_no_import_cycles(package: str) -> None:
    """No module of ckptwatch, bench or tests imports itself through other modules, not even lazily."""
    modules, imports = _imports(package)
    cycles = _cycles(modules, imports)
    found = {tuple(sorted({i.importer for i in c})): c for c in cycles}
    new = [_show(c) for key, c in found.items() if key not in KNOWN_CYCLES]
    fixed = [key for key in KNOWN_CYCLES if key[0].split(".")[0] == package and key not in found]
    assert not new, "import cycles:\n" + "\n".join(new)
    assert not fixed, f"no longer cycles, remove them from KNOWN_CYCLES: {fixed}"


def test_every_module_has_a_floor() -> None:
    """A new module is placed on a floor on purpose, not by accident of its name."""
    modules, _ = _imports("ckptwatch")
    assert [m for m in modules if floor_of(m) is None] == []


def test_imports_flow_down() -> None:
    """No module imports one on a higher floor (model -> ... -> cli), counting lazy imports."""
    _, imports = _imports("ckptwatch")
    upward = {}
    for imp in imports:
        src, dst = floor_of(imp.importer), floor_of(imp.imported)
        if src is not None and dst is not None and dst > src:
            upward.setdefault((imp.importer, imp.imported), imp)
    new = [f"{i.importer} ({_floor_name(i.importer)}) imports {i.imported} ({_floor_name(i.imported)}) "
           f"at line {i.line}" for key, i in sorted(upward.items()) if key not in KNOWN_UPWARD]
    assert not new, "upward imports:\n" + "\n".join(new)
    assert not KNOWN_UPWARD - set(upward), f"fixed, remove from KNOWN_UPWARD: {KNOWN_UPWARD - set(upward)}"


def test_model_is_the_leaf() -> None:
    """ckptwatch.model imports nothing of ours: every other module may use it."""
    _, imports = _imports("ckptwatch")
    assert [i for i in imports if i.importer == "ckptwatch.model"] == []


def test_the_package_imports_neither_bench_nor_tests() -> None:
    """The shipped package never depends on the benchmarks or the test helpers."""
    bad = []
    for path in sorted((REPO / "ckptwatch").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names
                    if n.split(".")[0] in ("bench", "tests")]
    assert bad == []


def test_the_checker_sees_what_it_must(tmp_path: Path) -> None:
    """The checker itself: lazy, relative and TYPE_CHECKING imports count; a cycle is shown with its lines."""
    files = {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from pkg import b\n",  # lazy, and ``from package import module``
        "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub.c import C\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "import os\nfrom ..a import f\nfrom . import d\n",  # relative
        "pkg/sub/d.py": "import pkg.sub\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules, imports = _imports("pkg", tmp_path)
    assert {(i.importer, i.imported, i.line) for i in imports} == {
        ("pkg.a", "pkg.b", 2), ("pkg.b", "pkg.sub.c", 3), ("pkg.sub.c", "pkg.a", 2),
        ("pkg.sub.c", "pkg.sub.d", 3), ("pkg.sub.d", "pkg.sub", 1)}
    assert [_show(c) for c in _cycles(modules, imports)] == [
        "pkg.a -> pkg.b (line 2 of pkg.a) -> pkg.sub.c (line 3 of pkg.b) -> pkg.a (line 2 of pkg.sub.c)"]
    assert floor_of("ckptwatch.formats.safetensors") == READERS
    assert floor_of("ckptwatch.losswatch.cli") == CLI
    assert floor_of("ckptwatch.nowhere") is None


def test_the_longest_prefix_wins() -> None:
    """A module's own entry overrides its package's; the root package's entry covers only itself."""
    assert floor_of("ckptwatch.formats.safetensors") == READERS
    assert floor_of("ckptwatch.losswatch.cli") == CLI
    assert floor_of("ckptwatch") == MODEL
    assert floor_of("ckptwatch.nowhere") is None
