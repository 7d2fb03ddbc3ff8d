"""The config file: only keys that do something, errors that name the file and the dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptwatch.config import load_config
from ckptwatch.errors import ConfigError
from tests.helpers import REPO, run_cli


def test_example_config_parses() -> None:
    """config.example.toml is valid and its defaults are the documented ones."""
    cfg = load_config(str(REPO / "config.example.toml"))
    assert cfg.service.settle_seconds == 60 and cfg.service.stale_after == 1800
    assert cfg.watches[0].path == "/data/runs" and cfg.watches[0].layout == "auto"


@pytest.mark.parametrize("text,key", [
    ("[service]\nsettle_secs = 3\n", "service.settle_secs"),
    ("[service]\nstale_after = \"soon\"\n", "service.stale_after"),
    ("[[watch]]\nlayout = \"auto\"\n", "watch[0].path"),
    ("[[watch]]\npath = \"/x\"\nlayout = \"tensorflow\"\n", "watch[0].layout"),
    ("[[watch]]\npath = \"/x\"\nexpected_ranks = 0\n", "watch[0].expected_ranks"),
    ("[[watch]]\npath = \"/x\"\nretention = 3\n", "watch[0].retention"),
    ("[mirror]\nto = \"s3://b\"\n", "mirror"),
    ("not toml [", "not valid TOML"),
])
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    """Every config error names the file and the dotted key (or says the TOML is invalid)."""
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(str(p))
    assert str(p) in str(err.value) and key in str(err.value)


def test_once_with_config_uses_watch_settings(tmp_path: Path) -> None:
    """once --config judges each [[watch]] path; a missing path is exit 2 naming the key."""
    run = tmp_path / "run"
    run.mkdir()
    p = tmp_path / "c.toml"
    p.write_text(f"[service]\nsettle_seconds = 0\n[[watch]]\npath = \"{run}\"\n")
    assert run_cli("once", "--config", str(p)).returncode == 0
    p.write_text(f"[[watch]]\npath = \"{tmp_path / 'nope'}\"\n")
    out = run_cli("once", "--config", str(p))
    assert out.returncode == 2 and "watch[0].path" in out.stderr


def test_config_check_reports_valid_config_and_warns_on_missing_root(tmp_path: Path) -> None:
    """`config check` exits 0 on a valid file, says what each watch would do, and warns on a missing root."""
    present = tmp_path / "runs"
    present.mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[service]\nstate_dir = "{tmp_path / "state"}"\n'
                   f'[[watch]]\npath = "{present}"\nobserver = "polling"\nexpected_ranks = 4\n'
                   f'[[watch]]\npath = "{tmp_path / "later"}"\n')
    r = run_cli("config", "check", str(cfg))
    assert r.returncode == 0, r.stderr
    assert f"watch[0] {present}: layout auto, observer polling" in r.stdout and "expected ranks 4" in r.stdout
    assert "every 5 s, no cap on stat + listdir calls per second" in r.stdout, r.stdout
    assert f"watch[1].path: {tmp_path / 'later'} does not exist yet" in r.stderr


@pytest.mark.parametrize("text,message", [
    ('[service]\nrescan_seconds = 0\n', "service.rescan_seconds: must be a number of seconds > 0"),
    ('[[watch]]\npath = "/data"\n[[watch]]\npath = "/data/run-a"\n', "watch[1].path: /data/run-a overlaps"),
])
def test_config_check_rejects_bad_file_naming_key(tmp_path: Path, text: str, message: str) -> None:
    """`config check` exits 2 with the file, the dotted key and the reason; no traceback."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    r = run_cli("config", "check", str(cfg))
    assert r.returncode == 2 and f"{cfg}: {message}" in r.stderr and "Traceback" not in r.stderr


def test_once_defaults_are_the_service_sections_defaults() -> None:
    """With no flag and no config, once judges with ServiceConfig()'s settle_seconds and stale_after."""
    from ckptwatch.cli import _options, build_parser
    from ckptwatch.config import ServiceConfig

    opts = _options(build_parser().parse_args(["once", "somewhere"]))
    defaults = ServiceConfig()
    assert (opts.settle_seconds, opts.stale_after) == (defaults.settle_seconds, defaults.stale_after)


def test_flags_override_the_config_by_key(tmp_path: Path) -> None:
    """A flag replaces its key; a key without a flag keeps the config file's value."""
    from ckptwatch.cli import _options, build_parser

    p = tmp_path / "c.toml"
    p.write_text('[service]\nsettle_seconds = 7\nstale_after = "1h"\n')
    config = load_config(str(p))
    opts = _options(build_parser().parse_args(["once", "--settle", "5"]), config)
    assert (opts.settle_seconds, opts.stale_after) == (5.0, 3600.0)
    opts = _options(build_parser().parse_args(["once", "--stale-after", "2h"]), config)
    assert (opts.settle_seconds, opts.stale_after) == (7.0, 7200.0)


def test_example_config_documents_every_key() -> None:
    """config.example.toml shows every key a section reads (set, commented out, or as a [table] header)."""
    import re

    from ckptwatch.config import AlertsConfig, LossSettings, ServiceConfig, WatchConfig
    from ckptwatch.config.mirror import MirrorConfig
    from ckptwatch.config.reader import keys_of
    from ckptwatch.config.retention import RetentionConfig

    text = (REPO / "config.example.toml").read_text()
    for table, cls in (("service", ServiceConfig), ("watch", WatchConfig), ("watch.loss", LossSettings),
                       ("alerts", AlertsConfig), ("watch.retention", RetentionConfig),
                       ("watch.mirror", MirrorConfig)):
        for key in keys_of(cls):
            shown = re.search(rf"^#?\s*{re.escape(key)}\s*=", text, re.MULTILINE) \
                or re.search(rf"^#?\s*\[{re.escape(table)}\.{re.escape(key)}\]", text, re.MULTILINE)
            assert shown, f"{table}.{key} is not in config.example.toml"
    assert re.search(r"^enabled\s*=", text, re.MULTILINE)  # [watch.loss]'s switch, read by WatchConfig


def test_watch_mirror_table_is_read_and_checked(tmp_path: Path) -> None:
    """[watch.mirror] is WatchConfig.mirror (None when absent); a `to` that is relative or inside the
    watched root is refused naming watch[0].mirror.to; max_rate is read as bytes/s, and one that is no
    rate is refused naming it."""
    p = tmp_path / "c.toml"
    p.write_text('[[watch]]\npath = "/data/runs"\n')
    assert load_config(str(p)).watches[0].mirror is None
    p.write_text('[[watch]]\npath = "/data/runs"\n[watch.mirror]\nto = "s3://bucket/ckpts"\n'
                 'endpoint_url = "http://127.0.0.1:9000"\nverify = "full"\nparallel = 4\n')
    m = load_config(str(p)).watches[0].mirror
    assert m is not None and (m.to, m.endpoint_url, m.verify, m.parallel, m.mirror_hazards) == \
        ("s3://bucket/ckpts", "http://127.0.0.1:9000", "full", 4, False)
    for body, why in (('to = "/data/runs/backup"', "is inside the watched root /data/runs"),
                      ('to = "/data/runs"', "is inside the watched root /data/runs"),
                      ('to = "backup"', "is a relative path"),
                      ('to = "/backup"\nmax_rate = "fast"', "watch[0].mirror.max_rate: 'fast' is not a rate"),
                      ('verify = "size"', "watch[0].mirror.to")):
        p.write_text(f'[[watch]]\npath = "/data/runs"\n[watch.mirror]\n{body}\n')
        with pytest.raises(ConfigError) as err:
            load_config(str(p))
        assert str(p) in str(err.value) and "watch[0].mirror" in str(err.value) and why in str(err.value)
    p.write_text('[[watch]]\npath = "/data/runs"\n[watch.mirror]\nto = "/backup"\nmax_rate = "200M"\n')
    assert load_config(str(p)).watches[0].mirror.max_rate == 200 << 20
    p.write_text('[[watch]]\npath = "/data/runs"\n[watch.mirror]\nto = "/data/runs-backup"\n')
    assert load_config(str(p)).watches[0].mirror.to == "/data/runs-backup"  # a sibling, not inside
