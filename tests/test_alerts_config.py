"""[alerts] config: routes, channels, secrets from the environment or a file, masking, exposure warnings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ckptwatch.alerts.config import (
    AlertsConfig,
    has_literal_secret,
    mask_url,
    parse_alerts_config,
    parse_size,
    secret_exposure_warning,
)
from ckptwatch.alerts.kinds import KIND_SEVERITY, KINDS
from ckptwatch.errors import ConfigError

SRC = "/etc/ckptwatch/config.toml"


def test_no_alerts_table_means_no_channels_and_defaults() -> None:
    """No [alerts] table: no channel, documented defaults (20/h, 3 attempts, 5% disk, inferred stall)."""
    cfg = parse_alerts_config(None, SRC)
    assert cfg == AlertsConfig()
    assert cfg.all_urls == () and cfg.route("corrupt", "error") == ()
    assert (cfg.max_per_hour, cfg.retries, cfg.disk_low_percent, cfg.stalled_after) == (20, 3, 5.0, None)


def test_routes_resolve_channels_and_prefer_kind_over_severity_over_default() -> None:
    """A kind's route beats its severity's route, which beats `urls`; channel names expand to their URLs."""
    cfg = parse_alerts_config({
        "urls": ["json://default/x"],
        "channels": {"oncall": ["mailto://a@example.com", "json://pager/y"]},
        "routes": {"loss_jump": ["oncall"], "error": ["oncall", "json://team/z"],
                   "warning": ["json://low/w"]},
    }, SRC)
    assert cfg.route("loss_jump", "error") == ("mailto://a@example.com", "json://pager/y")
    assert cfg.route("corrupt", "error") == ("mailto://a@example.com", "json://pager/y", "json://team/z")
    assert cfg.route("stalled", "warning") == ("json://low/w",)
    assert cfg.route("service_error", "info") == ("json://default/x",)
    assert set(cfg.all_urls) == {"json://default/x", "mailto://a@example.com", "json://pager/y",
                                 "json://team/z", "json://low/w"}


def test_every_raised_kind_is_a_valid_route_key() -> None:
    """All kinds of the brief exist; those something raises may be routed; none collides with a severity."""
    from ckptwatch.alerts.kinds import NOT_RAISED_YET

    assert {"incomplete", "corrupt", "resume_hazard", "loss_jump", "stalled", "mirror_failed", "disk_low",
            "retention_blocked", "service_error"} <= set(KINDS)
    live = [k for k in KINDS if k not in NOT_RAISED_YET]
    cfg = parse_alerts_config({"routes": {k: ["json://h/p"] for k in live}}, SRC)
    assert all(cfg.route(k, KIND_SEVERITY[k]) == ("json://h/p",) for k in live)


def test_route_for_a_kind_nothing_raises_yet_is_refused(monkeypatch) -> None:
    """A route that could never fire (its feature is not built) is a config error, not a silent no-op.
    Every kind is raised today (mirror_failed by the mirror sink), so the rule is shown on a stand-in."""
    from ckptwatch.alerts.kinds import NOT_RAISED_YET

    assert NOT_RAISED_YET == {}
    assert parse_alerts_config({"routes": {"mirror_failed": ["json://h/p"]}}, SRC).route(
        "mirror_failed", "error") == ("json://h/p",)
    monkeypatch.setitem(NOT_RAISED_YET, "stalled", "a feature to come")
    with pytest.raises(ConfigError, match="alerts.routes.stalled: nothing raises stalled yet"):
        parse_alerts_config({"routes": {"stalled": ["json://h/p"]}}, SRC)


@pytest.mark.parametrize("raw,key", [
    ({"url": ["json://h/p"]}, "alerts.url:"),
    ({"urls": "json://h/p"}, "alerts.urls:"),
    ({"urls": ["slack//missing-colon"]}, "alerts.urls[0]:"),
    ({"routes": {"loss_jumps": ["json://h/p"]}}, "alerts.routes.loss_jumps:"),
    ({"routes": {"critical": ["json://h/p"]}}, "alerts.routes.critical:"),
    ({"routes": {"corrupt": ["oncall"]}}, "alerts.routes.corrupt[0]:"),
    ({"channels": {"oncall": []}}, "alerts.channels.oncall:"),
    ({"channels": {"error": ["json://h/p"]}}, "alerts.channels.error:"),
    ({"channels": {"on call": ["json://h/p"]}}, "alerts.channels.on call:"),
    ({"max_per_hour": -1}, "alerts.max_per_hour:"),
    ({"max_per_hour": True}, "alerts.max_per_hour:"),
    ({"retries": 0}, "alerts.retries:"),
    ({"timeout": "forever"}, "alerts.timeout:"),
    ({"disk_low_percent": 100}, "alerts.disk_low_percent:"),
    ({"disk_low_free": "lots"}, "alerts.disk_low_free:"),
    ({"stalled_after": "0"}, "alerts.stalled_after:"),
    ({"stalled_after": "soon"}, "alerts.stalled_after:"),
    ({"urls_file": "/nonexistent/alerts.secret"}, "alerts.urls_file:"),
])
def test_bad_values_name_source_and_dotted_key(raw: dict, key: str) -> None:
    """Every error names the config file and the dotted alerts.* key."""
    with pytest.raises(ConfigError) as err:
        parse_alerts_config(raw, SRC)
    assert str(err.value).startswith(f"{SRC}: {key}"), str(err.value)


def test_bad_url_error_does_not_echo_the_value() -> None:
    """A malformed URL may be a secret with a typo: the error must not print it."""
    with pytest.raises(ConfigError) as err:
        parse_alerts_config({"urls": ["slack:/TOKENTOKEN1234567890"]}, SRC)
    assert "TOKENTOKEN" not in str(err.value)


def test_env_vars_are_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    """${NAME} in URLs, channels and routes comes from the environment at load time."""
    monkeypatch.setenv("CKW_TOKEN", "abc123")
    cfg = parse_alerts_config({"urls": ["json://h/${CKW_TOKEN}"],
                               "channels": {"c": ["json://c/${CKW_TOKEN}"]},
                               "routes": {"stalled": ["json://r/${CKW_TOKEN}"]}}, SRC)
    assert cfg.urls == ("json://h/abc123",)
    assert cfg.channels["c"] == ("json://c/abc123",)
    assert cfg.route("stalled", "warning") == ("json://r/abc123",)


def test_missing_env_var_names_key_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ${NAME} that is not set is a config error naming the key and the variable."""
    monkeypatch.delenv("CKW_NOPE", raising=False)
    with pytest.raises(ConfigError,
                       match=r"alerts\.channels\.oncall\[1\]: environment variable CKW_NOPE is not set"):
        parse_alerts_config({"channels": {"oncall": ["json://h/p", "slack://${CKW_NOPE}"]}}, SRC)


def test_urls_file_adds_default_route_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """urls_file: one URL a line, comments and blanks skipped, ${ENV} expanded, appended to `urls`."""
    monkeypatch.setenv("CKW_PW", "pw")
    f = tmp_path / "alerts.secret"
    f.write_text("# pager\njson://a/1\n\n  mailto://u:${CKW_PW}@smtp.example.com  \n")
    cfg = parse_alerts_config({"urls": ["json://z/0"], "urls_file": str(f)}, SRC)
    assert cfg.urls == ("json://z/0", "json://a/1", "mailto://u:pw@smtp.example.com")


def test_urls_file_bad_line_names_file_and_line(tmp_path: Path) -> None:
    """A bad line in urls_file is reported with the file and line number, not its content."""
    f = tmp_path / "alerts.secret"
    f.write_text("json://a/1\nnot-a-url-SECRET\n")
    with pytest.raises(ConfigError) as err:
        parse_alerts_config({"urls_file": str(f)}, SRC)
    assert f"{f} line 2" in str(err.value) and "SECRET" not in str(err.value)


@pytest.mark.parametrize("text,size", [("50G", 50 * 2**30), ("500M", 500 * 2**20), ("1.5T", int(1.5 * 2**40)),
                                       ("10GiB", 10 * 2**30), ("4096", 4096), (123, 123)])
def test_parse_size(text: str | int, size: int) -> None:
    """Sizes use binary units; a bare number is bytes."""
    assert parse_size(text) == size


@pytest.mark.parametrize("url,masked", [
    ("mailto://bob:hunter2@smtp.example.com:587?to=a@example.com",
     "mailto://bob:****@smtp.example.com:587/..."),
    ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ", "slack://T1JJ3T3L2/..."),
    ("tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/12315544", "tgram://1234.../..."),
    ("json://127.0.0.1:8080/hook", "json://127.0.0.1:8080/..."),
    ("discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js", "discord://4174216298/..."),
    ("ntfy://ntfy.sh", "ntfy://ntfy.sh"),
])
def test_mask_url_hides_credentials(url: str, masked: str) -> None:
    """Masked URLs keep scheme and host for diagnosis and drop passwords, tokens, paths and queries."""
    assert mask_url(url) == masked
    for secret in ("hunter2", "TIiajkdnla", "AAHdqTcv", "JHMHI8q"):
        assert secret not in mask_url(url)


@pytest.mark.parametrize("url,secret", [
    ("mailto://bob:hunter2@smtp.example.com", True),
    ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ", True),
    ("json://hooks.example.com/x?token=abc", True),
    ("tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/12315544", True),
    ("mailto://bob:${SMTP_PASSWORD}@smtp.example.com", False),
    ("json://127.0.0.1:8080/hook", False),
    ("ntfy://ntfy.sh/ckptwatch", False),
])
def test_literal_secret_heuristic(url: str, secret: bool) -> None:
    """Passwords, token-like path segments and secret-named query parameters count as literal secrets."""
    assert has_literal_secret(url) is secret


def test_exposure_warning_only_for_readable_file_with_literal_secret(tmp_path: Path) -> None:
    """Warn when a group/other-readable config holds a literal credential; not when 0600 or ${ENV}."""
    cfg = tmp_path / "config.toml"
    cfg.write_text("")
    literal = {"urls": ["json://h/p"], "channels": {"oncall": ["mailto://bob:hunter2@smtp.example.com"]}}
    os.chmod(cfg, 0o644)
    warning = secret_exposure_warning(str(cfg), literal)
    assert warning and "alerts.channels.oncall[0]" in warning and "others" in warning
    assert "hunter2" not in warning and "alerts.urls[0]" not in warning
    assert secret_exposure_warning(str(cfg), {"service": {}, "alerts": literal}) == warning  # whole config
    assert secret_exposure_warning(str(cfg), {"urls": ["mailto://bob:${PW}@smtp.example.com"]}) is None
    os.chmod(cfg, 0o600)
    assert secret_exposure_warning(str(cfg), literal) is None


def test_exposure_warning_for_readable_urls_file(tmp_path: Path) -> None:
    """The secrets file itself must not be readable by others."""
    cfg, secret = tmp_path / "config.toml", tmp_path / "alerts.secret"
    cfg.write_text("")
    secret.write_text("json://h/p\n")
    os.chmod(cfg, 0o600)
    os.chmod(secret, 0o640)
    warning = secret_exposure_warning(str(cfg), {"urls_file": str(secret)})
    assert warning and "urls_file" in warning and "its group" in warning
    os.chmod(secret, 0o600)
    assert secret_exposure_warning(str(cfg), {"urls_file": str(secret)}) is None


_secret = st.text(st.characters(whitelist_categories=("Lu", "Ll", "Nd")), min_size=6, max_size=40)


@given(user=st.from_regex(r"[a-z]{1,8}", fullmatch=True), password=_secret,
       host=st.sampled_from(["smtp.example.com", "127.0.0.1:2525", "mail.internal"]))
def test_mask_url_never_shows_a_password(user: str, password: str, host: str) -> None:
    """Whatever the password, the masked URL does not contain it and does show the host."""
    masked = mask_url(f"mailto://{user}:{password}@{host}/to@example.com?from=a@example.com")
    assert password not in masked.replace(user, "", 1) and host in masked


@given(token=st.from_regex(r"[A-Za-z0-9]{8}[0-9][A-Za-z][A-Za-z0-9]{14,30}", fullmatch=True),
       scheme=st.sampled_from(["slack", "discord", "tgram", "json", "gotify"]))
def test_mask_url_never_shows_a_path_token(token: str, scheme: str) -> None:
    """A token anywhere in the host or path is not in the masked URL (at most its first 4 characters)."""
    for url in (f"{scheme}://{token}/{token}", f"{scheme}://hooks.example.com/{token}",
                f"{scheme}://12345:{token}/x"):
        assert token not in mask_url(url)
