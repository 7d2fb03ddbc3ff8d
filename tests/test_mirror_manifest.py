"""The manifest, the commit marker and [watch.mirror] as plain values: what is accepted, what is refused."""

from __future__ import annotations

import json

import pytest

from ckptwatch.config.mirror import MirrorConfig
from ckptwatch.config.reader import Location, read_table
from ckptwatch.errors import ConfigError
from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror.cli import COPY_NAMES
from ckptwatch.mirror.hashing import ALGORITHM, digest_of, new_hasher
from ckptwatch.mirror.restore import RestoreRefused, restore
from ckptwatch.mirror.target import LocalTarget, TargetPathError, check_name
from ckptwatch.scan import MIRROR_PREFIX


def _manifest(*paths: str) -> mf.Manifest:
    files = tuple(mf.FileEntry(p, 3, digest_of(b"abc"), 1, 2, 3) for p in paths)
    return mf.Manifest(algorithm=ALGORITHM, files=files, verdict="complete", layout="dcp", step=3, run="r",
                       checkpoint="step_3", source_host="h", source_path="/src/r/step_3", created=1.5)


def test_manifest_round_trips_and_marker_binds_its_bytes():
    """parse(to_bytes(m)) == m, and the marker commits exactly those bytes (one changed byte: no match)."""
    m = _manifest("a.bin", "sub/b.bin")
    data = m.to_bytes()
    assert mf.parse(data, "x") == m
    marker = mf.marker_bytes(data)
    assert mf.marker_matches(marker, data)
    assert marker == mf.marker_bytes(data)  # deterministic: racing writers write the same marker
    assert not mf.marker_matches(marker, data.replace(b'"size": 3', b'"size": 4', 1))
    assert not mf.marker_matches(b"garbage", data)


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "a/../../b", "a//b", "", "./a",
                                  mf.MARKER_NAME, mf.MANIFEST_NAME])
def test_manifest_paths_that_escape_or_shadow_are_refused(path):
    """A manifest naming a path outside the copy, an absolute path or one of our own names is no manifest."""
    doc = json.loads(_manifest("a.bin").to_bytes())
    doc["files"][0]["path"] = path
    with pytest.raises(mf.ManifestError):
        mf.parse(json.dumps(doc).encode(), "copy/.ckptwatch-mirror.json")


@pytest.mark.parametrize(("key", "value"), [("version", 2), ("algorithm", "md4-nope"), ("files", {}),
                                            ("verdict", None), ("step", "3")])
def test_manifest_with_bad_fields_is_refused(key, value):
    """Wrong version, an algorithm nobody can compute, or fields of the wrong type: a ManifestError."""
    doc = json.loads(_manifest("a.bin").to_bytes())
    doc[key] = value
    with pytest.raises(mf.ManifestError):
        mf.parse(json.dumps(doc).encode(), "m")


def test_restore_never_writes_outside_dest(tmp_path):
    """A committed copy whose manifest names ../escape (marker forged to match) is refused before any
    write: nothing appears beside DEST."""
    copy = tmp_path / "copy"
    copy.mkdir()
    doc = json.loads(_manifest("a.bin").to_bytes())
    doc["files"][0]["path"] = "../escape"
    data = json.dumps(doc).encode()
    (copy / mf.MANIFEST_NAME).write_bytes(data)
    (copy / mf.MARKER_NAME).write_bytes(mf.marker_bytes(data))
    (tmp_path / "escape").write_bytes(b"abc")
    with pytest.raises(RestoreRefused):
        restore(LocalTarget(str(copy)), "", str(tmp_path / "out" / "dest"))
    (tmp_path / "out").mkdir()
    with pytest.raises(RestoreRefused):
        restore(LocalTarget(str(copy)), "", str(tmp_path / "out" / "dest"))
    assert list((tmp_path / "out").iterdir()) == []


def test_target_names_are_plain_relative_paths():
    """The target refuses names that climb out of its root."""
    assert check_name("run/ckpt/a.bin") == "run/ckpt/a.bin"
    for bad in ("..", "a/..", "/abs", "a\0b", "a//b"):
        with pytest.raises(TargetPathError):
            check_name(bad)


def test_our_names_are_known_to_scan_and_cli():
    """Every name of ours in a copy starts with scan's MIRROR_PREFIX (so tree() leaves it out), and the
    CLI recognises a copy by the same names."""
    assert all(n.startswith(MIRROR_PREFIX) for n in mf.OURS)
    assert mf.PREFIX == MIRROR_PREFIX
    assert tuple(COPY_NAMES) == mf.OURS


def test_hash_choice_is_one_line():
    """The manifest hash is ALGORITHM; the hashes a manifest may name are built by one function."""
    assert new_hasher().hexdigest() == new_hasher(ALGORITHM).hexdigest()
    with pytest.raises(ValueError, match="unknown"):
        new_hasher("crc-nope")


def test_mirror_config_defaults_and_errors():
    """[watch.mirror]: `to` is required; verify size|full (size by default); max_rate off, else bytes/s from
    a number or a size (min_free's units, "/s" allowed); bad values name the key."""
    at = Location("c.toml", "watch[0].mirror")
    cfg = read_table({"to": "/backup"}, at, MirrorConfig)
    assert (cfg.verify, cfg.parallel, cfg.mirror_hazards, cfg.max_rate) == ("size", 2, False, None)
    raw = {"to": "/b", "verify": "full", "parallel": 4, "mirror_hazards": True, "max_rate": "100MB"}
    cfg = read_table(raw, at, MirrorConfig)
    assert (cfg.verify, cfg.parallel, cfg.mirror_hazards, cfg.max_rate) == ("full", 4, True, 100 << 20)
    for given, rate in (("1GiB", 1 << 30), ("50M/s", 50 << 20), (1_000_000, 1_000_000), ("2.5K", 2560)):
        assert read_table({"to": "/b", "max_rate": given}, at, MirrorConfig).max_rate == rate
    for raw, key in (({}, "to"), ({"to": "/b", "verify": "hash"}, "verify"), ({"to": "/b", "parallel": 0},
                     "parallel"), ({"to": "/b", "max_rate": 0}, "max_rate"),
                     ({"to": "/b", "max_rate": "fast"}, "max_rate"), ({"to": "/b", "max_rate": True},
                     "max_rate"), ({"to": "/b", "max_rate": -5}, "max_rate"), ({"to": "/b", "bucket": "x"},
                     "bucket")):
        with pytest.raises(ConfigError, match=rf"watch\[0\]\.mirror\.{key}"):
            read_table(raw, at, MirrorConfig)
