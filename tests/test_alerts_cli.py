"""`ckptwatch alert test`: every channel tried once, results printed masked, exit code says if all worked."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from ckptwatch.alerts.cli import cmd_alert_test
from ckptwatch.alerts.config import AlertsConfig, parse_alerts_config
from ckptwatch.alerts.sender import AppriseSender
from tests.servers import SmtpServer, WebhookServer

# apprise's, not ours
pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")


@pytest.fixture
def hook() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


def test_all_channels_ok_exits_0(hook: WebhookServer) -> None:
    """Every channel (default, group and route URLs) gets the test message once; exit 0."""
    with SmtpServer() as smtp:
        cfg = parse_alerts_config({"urls": [hook.url("a")], "channels": {"oncall": [smtp.url()]},
                                   "routes": {"loss_jump": ["oncall", hook.url("a")]}}, "t")
        out = io.StringIO()
        assert cmd_alert_test(cfg, sender=AppriseSender(5, throttle=0), out=out) == 0
        assert len(hook.wait_for(1, 5)) == 1 and smtp.wait_for(1, 5)[0]["Subject"].endswith(": test alert")
    text = out.getvalue()
    assert f"ok      json://127.0.0.1:{hook.port}/..." in text and "(channel oncall)" in text
    assert smtp.password not in text and text.endswith("2 of 2 channels ok\n")


def test_a_failing_channel_exits_1_and_is_named_masked(hook: WebhookServer) -> None:
    """A channel that answers 500 is listed as FAILED with its masked URL; exit 1."""
    hook.down("500")
    out = io.StringIO()
    cfg = parse_alerts_config({"urls": [hook.url("x"), "mailto://u:topsecret@127.0.0.1:9?to=a@example.com"]},
                              "t")
    assert cmd_alert_test(cfg, sender=AppriseSender(2, throttle=0), out=out) == 1
    text = out.getvalue()
    assert f"FAILED  json://127.0.0.1:{hook.port}/...: delivery failed" in text
    assert "FAILED  mailto://u:****@127.0.0.1:9/..." in text and "topsecret" not in text
    assert text.endswith("0 of 2 channels ok\n")


def test_unknown_scheme_fails_with_a_reason() -> None:
    """A URL apprise does not understand is a failure that says so, not a crash."""
    out = io.StringIO()
    assert cmd_alert_test(AlertsConfig(urls=("nosuchscheme://x/y",)), out=out) == 1
    assert "apprise does not understand this URL" in out.getvalue()


def test_no_channels_exits_1() -> None:
    """Testing alerts with none configured is a failure that says what to configure."""
    out = io.StringIO()
    assert cmd_alert_test(AlertsConfig(), out=out) == 1
    assert "no alert channels configured" in out.getvalue()


def test_alert_test_command_from_config_file(hook: WebhookServer, tmp_path) -> None:
    """`ckptwatch alert test --config F` as a process: the live channel gets it, the dead one is named."""
    from tests.helpers import run_cli
    from tests.servers import free_port

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[alerts]\nurls = ["{hook.url("live")}", "json://127.0.0.1:{free_port()}/dead"]\n')
    cfg.chmod(0o600)
    r = run_cli("alert", "test", "--config", str(cfg), timeout=60)
    assert r.returncode == 1, r.stderr
    assert f"ok      json://127.0.0.1:{hook.port}/..." in r.stdout and "FAILED  json://127.0.0.1:" in r.stdout
    assert "1 of 2 channels ok" in r.stdout
    (post,) = hook.wait_for(1, 10)
    assert post["_path"] == "/live" and "test" in post["title"].lower()
