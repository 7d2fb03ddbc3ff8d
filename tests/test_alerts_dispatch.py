"""Alert delivery end to end, over real apprise to loopback servers (json:// webhook, mailto:// SMTP).

Every wait is bounded (``flush``/``wait_for`` with seconds of timeout); retries back off in
milliseconds here; the rate-limit window moves with a fake clock, never with sleeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ckptwatch.alerts import messages as m
from ckptwatch.alerts.config import AlertsConfig, parse_alerts_config
from ckptwatch.alerts.dispatch import AlertDispatcher
from ckptwatch.alerts.ledger import AlertLedger
from ckptwatch.alerts.sender import AppriseSender, SendResult
from ckptwatch.model import Problem, Ranks, Status, Verdict
from tests.servers import SmtpServer, WebhookServer, attachment_names, body_text

# apprise's, not ours
pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")

T0 = 1_795_000_000.0
RUN = "/data/runs/run-a"
WAIT = 10.0  # seconds any single delivery may take on loopback before the test fails


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Log:
    """A structlog-like logger that records (level, event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        return lambda event, **kw: self.events.append((level, event, kw))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for _, e, kw in self.events if e == event]


@pytest.fixture
def hook() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., AlertDispatcher]]:
    """``make(config, **kw)`` -> a dispatcher on tmp_path's state db; closed, no thread left, at teardown."""
    made: list[AlertDispatcher] = []

    def factory(config: AlertsConfig, *, ledger: AlertLedger | None = None, **kw: Any) -> AlertDispatcher:
        kw.setdefault("clock", Clock())
        kw.setdefault("log", Log())
        kw.setdefault("backoff", 0.01)
        kw.setdefault("host", "gpu-node-7")
        kw.setdefault("sender", AppriseSender(timeout=WAIT / 2, throttle=0))
        d = AlertDispatcher(config, ledger or AlertLedger(str(tmp_path / "state.sqlite")), **kw)
        made.append(d)
        return d

    yield factory
    for d in made:
        d.close(timeout=WAIT)
    leaked = [t for t in threading.enumerate() if t.name == "ckptwatch-alerts"]
    assert not leaked, "leaked alert worker thread"


def incomplete(step: int = 5000, missing: tuple[int, ...] = (3,)) -> m.Alert:
    path = f"{RUN}/checkpoint-{step}"
    v = Verdict(path, step, "hf-trainer", Status.INCOMPLETE,
                Ranks(4, tuple(r for r in range(4) if r not in missing)),
                problems=tuple(Problem("missing_rank", f"{path}/rank{r}", f"rank {r}'s files are absent")
                               for r in missing))
    (a,) = m.checkpoint_alerts(v, run_root=RUN, host="gpu-node-7", now=T0,
                               resume_from=f"{RUN}/checkpoint-4500", resume_step=4500)
    return a


def stalled_alert(run: str = RUN) -> m.Alert:
    return m.stalled_alert(run_root=run, host="gpu-node-7", now=T0, last_checkpoint="checkpoint-5000",
                           last_at=T0 - 9000, silent_for=9000, threshold=3600, threshold_source="x",
                           writing=False)


def test_webhook_receives_title_and_body(hook: WebhookServer, make) -> None:
    """A json:// channel gets the alert's exact title and body; alert_sent logs the masked channel."""
    d = make(parse_alerts_config({"urls": [hook.url()]}, "t"))
    a = incomplete()
    d.raise_alert(a)
    assert d.flush(WAIT)
    (post,) = hook.wait_for(1, WAIT)
    assert post["title"] == a.title and post["message"] == a.body and post["_path"] == "/hook"
    (sent,) = d.log.named("alert_sent")
    assert sent == {"kind": "incomplete", "channel": f"json://127.0.0.1:{hook.port}/...", "attempt": 1,
                    "recovery": False, "run": RUN, "checkpoint": f"{RUN}/checkpoint-5000"}


def test_email_arrives_with_subject_body_and_attachment(smtp: SmtpServer, make, tmp_path: Path) -> None:
    """A mailto:// channel (SMTP AUTH, no TLS, loopback) gets subject, plain-text body and the PNG."""
    png = tmp_path / "loss.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    d = make(parse_alerts_config({"urls": [smtp.url()]}, "t"))
    a = m.loss_jump_alert(run=RUN, at_step=5000, from_step=4500, from_checkpoint=f"{RUN}/checkpoint-4500",
                          before=0.09, after=2.31, ratio=25.7, scratch=False, hazards=[], host="gpu-node-7",
                          now=T0, plot=str(png))
    d.raise_alert(a)
    assert d.flush(WAIT)
    (msg,) = smtp.wait_for(1, WAIT)
    assert msg["Subject"] == a.title and "oncall@example.com" in msg["To"]
    assert body_text(msg).strip() == a.body
    assert attachment_names(msg) == ["loss.png"]
    assert smtp.envelopes[0].rcpt_tos == ["oncall@example.com"]
    log_text = repr(d.log.events)
    assert smtp.password not in log_text and "****" in log_text


def test_missing_attachment_does_not_fail_the_alert(hook: WebhookServer, make, tmp_path: Path) -> None:
    """A plot that vanished is dropped from the message; the alert still goes out."""
    d = make(parse_alerts_config({"urls": [hook.url()]}, "t"))
    a = m.loss_jump_alert(run=RUN, at_step=5, from_step=4, from_checkpoint=None, before=1, after=3, ratio=3,
                          scratch=False, hazards=[], host="h", now=T0, plot=str(tmp_path / "gone.png"))
    d.raise_alert(a)
    assert d.flush(WAIT)
    assert hook.wait_for(1, WAIT)[0]["attachments"] == []


def test_routing_by_kind_severity_and_default(hook: WebhookServer, smtp: SmtpServer, make) -> None:
    """loss_jump -> its channel group (email); warnings -> the warning route; the rest -> default urls."""
    cfg = parse_alerts_config({
        "urls": [hook.url("default")],
        "channels": {"oncall": [smtp.url()]},
        "routes": {"loss_jump": ["oncall"], "warning": [hook.url("warnings")]},
    }, "t")
    d = make(cfg)
    jump = m.loss_jump_alert(run=RUN, at_step=5, from_step=4, from_checkpoint=None, before=1, after=3,
                             ratio=3, scratch=False, hazards=[], host="h", now=T0)
    for a in (incomplete(), stalled_alert(), jump):
        d.raise_alert(a)
    assert d.flush(WAIT)
    posts = hook.wait_for(2, WAIT)
    assert {(p["_path"], p["title"]) for p in posts} == {("/default", incomplete().title),
                                                          ("/warnings", stalled_alert().title)}
    (mail,) = smtp.wait_for(1, WAIT)
    assert mail["Subject"] == jump.title


def test_deduplicated_across_restart_and_recovery_sent_once(hook: WebhookServer, make,
                                                            tmp_path: Path) -> None:
    """A restarted dispatcher does not repeat an open alert; a changed one and its recovery go out once."""
    cfg = parse_alerts_config({"urls": [hook.url()]}, "t")
    db = str(tmp_path / "state.sqlite")
    first = make(cfg, ledger=AlertLedger(db))
    first.raise_alert(incomplete())
    first.raise_alert(incomplete())  # same pass twice: still once
    assert first.flush(WAIT)
    first.close(WAIT)
    first.ledger.close()
    assert len(hook.wait_for(1, WAIT)) == 1

    second = make(cfg, ledger=AlertLedger(db))  # the service restarted
    second.raise_alert(incomplete())
    assert second.flush(WAIT)
    assert len(hook.posts) == 1, "re-sent after restart"
    worse = incomplete(missing=(2, 3))
    second.raise_alert(worse)
    recovered = m.checkpoint_recovered(Verdict(f"{RUN}/checkpoint-5000", 5000, "hf-trainer", Status.COMPLETE),
                                       "incomplete", run_root=RUN, host="h", now=T0)
    second.clear(worse.key, recovered)
    second.clear(worse.key, recovered)
    assert second.flush(WAIT)
    posts = hook.wait_for(3, WAIT)
    assert [p["title"] for p in posts] == [incomplete().title, worse.title, recovered.title]
    assert "RESOLVED" in posts[2]["title"] and second.ledger.open_alerts() == []


def test_clear_without_open_alert_sends_nothing(hook: WebhookServer, make) -> None:
    """A recovery for something never alerted (or already cleared) is not sent."""
    d = make(parse_alerts_config({"urls": [hook.url()]}, "t"))
    d.clear(("x", "y", "stalled"), m.condition_cleared(("x", "y", "stalled"), host="h", now=T0, detail="d"))
    d.raise_alert(stalled_alert("/r/marker"))  # something that must arrive, so we know the clear was handled
    assert d.flush(WAIT)
    assert [p["title"] for p in hook.wait_for(1, WAIT)] == [stalled_alert("/r/marker").title]
    assert len(hook.posts) == 1


def test_rate_limit_holds_then_sends_digest(hook: WebhookServer, make) -> None:
    """Past max_per_hour a channel's alerts are held; one digest of them goes out when the hour allows."""
    clock = Clock()
    d = make(parse_alerts_config({"urls": [hook.url()], "max_per_hour": 2}, "t"), clock=clock)
    alerts = [stalled_alert(f"/data/runs/run-{i}") for i in range(5)]
    for a in alerts:
        d.raise_alert(a)
    assert d.flush(WAIT)
    assert [p["title"] for p in hook.wait_for(2, WAIT)] == [alerts[0].title, alerts[1].title]
    clock.now += 1800
    assert d.flush(WAIT)
    assert len(hook.posts) == 2, "digest sent before the window allowed it"
    assert len(d.log.named("alert_held")) == 3
    clock.now += 1801
    assert d.flush(WAIT)
    posts = hook.wait_for(3, WAIT)
    assert len(posts) == 3
    digest = posts[2]
    assert digest["title"] == "[ckptwatch] gpu-node-7: 3 alerts held back by the rate limit"
    assert all(a.title in digest["message"] for a in alerts[2:])


def test_failing_channel_reported_elsewhere_once_then_recovers(hook: WebhookServer, smtp: SmtpServer,
                                                               make) -> None:
    """A channel down (HTTP 500) is retried, logged, reported once on email; back, it gets what it missed."""
    clock = Clock()
    cfg = parse_alerts_config({"urls": [hook.url(), smtp.url()], "retries": 2}, "t")
    d = make(cfg, clock=clock)
    hook.down("500")
    first, second = stalled_alert("/data/runs/run-1"), stalled_alert("/data/runs/run-2")
    d.raise_alert(first)
    d.raise_alert(second)
    assert d.flush(WAIT)
    mails = smtp.wait_for(3, WAIT)
    subjects = [msg["Subject"] for msg in mails]
    masked = f"json://127.0.0.1:{hook.port}/..."
    assert subjects == [f"[ckptwatch] gpu-node-7: alert channel {masked} failing since {m.utc_iso(T0)}",
                        first.title, second.title]
    assert hook.requests == 2, "the failing channel was hammered instead of probed with backoff"
    failed = d.log.named("alert_failed")
    assert [(f["channel"], f["attempt"]) for f in failed] == [(masked, 1), (masked, 2)]

    hook.up()
    clock.now += 60
    assert d.flush(WAIT)
    (notice,) = hook.wait_for(1, WAIT)
    assert notice["title"] == f"[ckptwatch] RESOLVED gpu-node-7: alert channel {masked} works again"
    assert first.title in notice["message"] and second.title in notice["message"]
    mails = smtp.wait_for(4, WAIT)
    assert mails[3]["Subject"] == notice["title"]
    assert d.log.named("alert_channel_recovered")[0]["missed"] == 2


@pytest.mark.parametrize("how", ["closed", "reset"])
def test_dead_connection_fails_then_next_alert_recovers_channel(hook: WebhookServer, make, how: str) -> None:
    """A refused or reset connection fails the channel; after the probe delay the next alert goes out."""
    clock = Clock()
    d = make(parse_alerts_config({"urls": [hook.url()], "retries": 1}, "t"), clock=clock)
    hook.down(how)
    missed, later = stalled_alert("/r/1"), stalled_alert("/r/2")
    d.raise_alert(missed)
    assert d.flush(WAIT)
    assert len(d.log.named("alert_channel_failing")) == 1 and hook.posts == []
    hook.up()
    clock.now += 60
    d.raise_alert(later)
    assert d.flush(WAIT)
    posts = hook.wait_for(2, WAIT)
    notice = f"[ckptwatch] RESOLVED gpu-node-7: alert channel json://127.0.0.1:{hook.port}/... works again"
    assert [p["title"] for p in posts] == [later.title, notice]
    assert f"- {missed.title}" in posts[1]["message"]


def test_raise_returns_fast_and_survives_a_raising_sender(make) -> None:
    """raise_alert never waits for delivery; a sender that raises is a logged failure, not a dead worker."""
    release = threading.Event()
    calls: list[str] = []

    class Slow:
        def send(self, url: str, title: str, body: str, attachments: Any = ()) -> SendResult:
            calls.append(title)
            if len(calls) == 1:
                release.wait(WAIT)
                raise RuntimeError("plugin bug")
            return SendResult(True)

    d = make(parse_alerts_config({"urls": ["json://127.0.0.1:9/x"], "retries": 1}, "t"), sender=Slow())
    t = time.monotonic()
    d.raise_alert(stalled_alert("/r/1"))
    d.raise_alert(stalled_alert("/r/2"))
    assert time.monotonic() - t < 0.5
    release.set()
    assert d.flush(WAIT)
    assert d.log.named("alert_failed")[0]["error"] == "RuntimeError"
    assert d.log.named("alert_channel_failing")


def test_no_channels_is_a_quiet_no_op(make) -> None:
    """Without [alerts] the dispatcher accepts alerts, records them, and sends nothing."""
    d = make(AlertsConfig())
    d.raise_alert(incomplete())
    assert d.flush(WAIT)
    assert d.log.events == [] and d.ledger.is_open(incomplete().key)


def test_close_is_idempotent_and_later_requests_are_dropped(hook: WebhookServer, make) -> None:
    """After close() nothing is sent and nothing raises."""
    d = make(parse_alerts_config({"urls": [hook.url()]}, "t"))
    d.close(WAIT)
    d.close(WAIT)
    d.raise_alert(incomplete())
    assert d.flush(0.2) is False
    assert hook.posts == [] and d.log.named("alert_dropped")

