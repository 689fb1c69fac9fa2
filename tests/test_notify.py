"""Notifications: the outbox written with the audit entry, delivered in order, retried, never
sent twice once confirmed, and webhook URLs never shown whole. vast.ai and webhooks faked."""

from __future__ import annotations

import json
import logging

import pytest
import requests
import responses

from conftest import base_config, config_from
from support import store
from support.page import signed_in_client
from vastpanel import create_app
from vastpanel.config import Config, ConfigError
from vastpanel.domain import notify
from vastpanel.watchdog.looks import watchdog_for

HOOK = "https://hooks.example.test/services/T000/B000/secret-token-123"
SLACK = "https://chat.example.test/hooks/secret-slack-456"
IDLE_S = 30 * 60


class Receiver:
    """A webhook faked with `responses`: what it got, and what it answers."""

    def __init__(self, mock: responses.RequestsMock, url: str):
        self.got: list[tuple[dict, dict]] = []
        self.answer: int | Exception = 200
        mock.add_callback(responses.POST, url, callback=self._post)

    def _post(self, request):
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.answer < 300:
            self.got.append((json.loads(request.body), dict(request.headers)))
        return self.answer, {}, "ok"

    @property
    def events(self) -> list[str]:
        return [body.get("event") or body.get("text") for body, _ in self.got]


@pytest.fixture
def app(tmp_path, clock, vast):
    urls = f"json+{HOOK}, slack+{SLACK}"
    config = config_from(base_config(tmp_path, VAST_NOTIFY_URLS=urls, VAST_NOTIFY_RETRY_S="10"))
    app = create_app(config, clock=clock)
    yield app
    app.extensions["vastpanel"].store.close()


@pytest.fixture
def hook(vast):
    return Receiver(vast.mock, HOOK)


@pytest.fixture
def slack(vast):
    return Receiver(vast.mock, SLACK)


def outbox(panel) -> list[tuple[str, str, int]]:
    """(event, state, attempts) of each notification, oldest first."""
    return [(r.entry.event, r.state, r.attempts) for r in reversed(panel.notifier.latest(100))]


def idle_stop(panel, vast, clock) -> None:
    """Run the instance into an idle stop: seen by another start, warned, stopped."""
    watchdog = watchdog_for(panel)
    vast.set_running()
    watchdog.look()
    clock.advance(IDLE_S - 60)
    watchdog.look()
    clock.advance(61)
    assert watchdog.look().stopped is not None


def test_notify_urls_parse_with_formats_and_errors_hide_the_url():
    config = Config.from_env({"VAST_NOTIFY_URLS": f"slack+{SLACK} {HOOK}"})
    assert [t.format for t in config.notify_targets] == ["slack", "json"]
    assert config.notify_targets[0].label == "slack https://chat.example.test"
    assert SLACK not in repr(config) and HOOK in config.secrets
    with pytest.raises(ConfigError) as error:
        Config.from_env({"VAST_NOTIFY_URLS": f"{HOOK} ftp://x.test/secret-ftp"})
    assert "URL number 2" in str(error.value) and "secret-ftp" not in str(error.value)


def test_events_are_queued_with_the_audit_entry_and_sent_in_order(panel, vast, clock, hook, slack):
    idle_stop(panel, vast, clock)
    queued = [e for e, state, _ in outbox(panel) if state == "pending"]
    # session_opened: found running without a start from the panel.
    wanted = ["session_opened", "idle_warning", "auto_shutdown_complete"]
    assert queued == [e for e in wanted for _ in range(2)]
    assert hook.got == []  # nothing is sent from the watchdog's look itself
    assert panel.notifier.deliver() == 6
    assert hook.events == wanted
    body, headers = hook.got[2]
    assert set(body) == {"id", "event", "actor", "ts", "instance_id", "meta", "message"}
    assert body["actor"] == "system" and body["meta"]["session_cost_usd"] > 0
    assert "stopped after idling" in body["message"]
    row = [r for r in panel.notifier.latest(100) if r.target_label.startswith("json")][0]
    assert row.entry.event == "auto_shutdown_complete"
    assert headers["Idempotency-Key"] == f"vastpanel-{row.id}"
    assert [set(b) for b, _ in slack.got] == [{"text"}] * 3
    assert "will be stopped at" in slack.got[1][0]["text"]
    # Sent once: a second run sends nothing.
    assert panel.notifier.deliver() == 0
    assert len(hook.got) == 3 and {s for _, s, _ in outbox(panel)} == {"sent"}


def test_a_start_from_the_panel_is_not_reported_as_found_running(panel, vast, hook):
    vast.set_running()
    panel.audit.record("power_on_requested", "api", instance_id=1)
    panel.instance.state()
    assert panel.audit.entries(1)[0].meta["by_panel"] is True
    assert "session_opened" not in [e for e, _, _ in outbox(panel)]


def test_a_webhook_down_is_retried_with_backoff_in_order(panel, vast, clock, hook, slack):
    hook.answer = requests.ConnectionError(f"cannot reach {HOOK}")
    idle_stop(panel, vast, clock)
    panel.notifier.deliver()
    assert hook.got == [] and len(slack.got) == 3  # one webhook down does not hold the other
    head = panel.notifier.latest(100)[-1]
    assert (head.state, head.attempts, head.last_error) == (
        "pending",
        1,
        "unreachable (ConnectionError)",
    )
    assert head.next_attempt_at == pytest.approx(clock.now() + 10)
    clock.advance(9)
    panel.notifier.deliver()
    assert panel.notifier.latest(100)[-1].attempts == 1  # not due yet
    clock.advance(1)
    panel.notifier.deliver()
    assert panel.notifier.latest(100)[-1].next_attempt_at == pytest.approx(clock.now() + 20)
    hook.answer = 200
    clock.advance(20)
    panel.notifier.deliver()
    assert hook.events == ["session_opened", "idle_warning", "auto_shutdown_complete"]


def test_delivery_gives_up_after_a_day_or_on_a_webhook_that_is_gone(panel, vast, clock, hook):
    hook.answer = 503
    panel.audit.record("power_off_failed", "api", instance_id=1, error="vast.ai is failing (502)")
    for _ in range(40):
        panel.notifier.deliver()
        clock.advance(3600)
    rows = [r for r in panel.notifier.latest(10) if r.target_label.startswith("json")]
    assert rows[0].state == "failed" and rows[0].last_error == "HTTP 503"
    assert 24 <= rows[0].attempts <= 27  # about hourly once the back-off reaches its cap
    hook.answer = 404
    panel.audit.record("power_on_failed", "api", instance_id=1, error="no credit")
    panel.notifier.deliver()
    rows = [r for r in panel.notifier.latest(10) if r.target_label.startswith("json")]
    assert (rows[0].state, rows[0].attempts) == ("failed", 1)


def test_a_stop_that_keeps_failing_is_told_again_only_after_a_quiet_time(panel, clock, hook):
    for _ in range(20):  # one failed stop per interval look, for 20 minutes
        panel.audit.record(
            "auto_shutdown_failed", "system", instance_id=1, error="vast.ai is failing"
        )
        clock.advance(60)
    panel.notifier.deliver()
    assert len([e for e in panel.audit.entries(100) if e.event == "auto_shutdown_failed"]) == 20
    assert hook.events == ["auto_shutdown_failed", "auto_shutdown_failed"]


def test_a_claim_left_by_a_crash_is_sent_again_after_it_lapses(panel, clock, hook, slack):
    panel.audit.record("power_off_failed", "api", instance_id=1, error="x")
    row = store.next_undelivered(panel.store.db, panel.config.notify_targets[0].key)
    # A process claimed it and died during the POST: nothing is sent while the claim holds...
    assert store.claim_outbox(panel.store.db, row, clock.now() + notify.CLAIM_S)
    panel.notifier.deliver()
    assert hook.got == [] and len(slack.got) == 1
    # ...then it goes again, with the same idempotency key a receiver can drop a repeat by.
    clock.advance(notify.CLAIM_S + 1)
    panel.notifier.deliver()
    assert hook.got[0][1]["Idempotency-Key"] == f"vastpanel-{row.id}"
    assert outbox(panel)[0] == ("power_off_failed", "sent", 2)


def test_a_confirmed_send_is_never_repeated_by_a_restarted_panel(tmp_path, clock, vast, hook):
    config = config_from(base_config(tmp_path, VAST_NOTIFY_URLS=HOOK))
    first = create_app(config, clock=clock).extensions["vastpanel"]
    first.audit.record("power_off_failed", "api", instance_id=1, error="x")
    first.audit.record("auto_shutdown_failed", "system", instance_id=1, error="y")
    first.notifier.deliver()
    first.store.close()
    again = create_app(config, clock=clock).extensions["vastpanel"]
    again.audit.record("power_on_health_timeout", "api", instance_id=1, timeout_s=600, error="z")
    again.notifier.deliver()
    assert hook.events == ["power_off_failed", "auto_shutdown_failed", "power_on_health_timeout"]
    again.store.close()


def test_urls_never_shown_whole_in_page_audit_or_log(app, panel, vast, clock, hook, caplog):
    hook.answer = requests.ConnectionError(f"HTTPSConnectionPool: Max retries with url: {HOOK}")
    caplog.set_level(logging.INFO)
    idle_stop(panel, vast, clock)
    panel.notifier.deliver()
    page = signed_in_client(app).get("/").get_data(as_text=True)
    assert "json https://hooks.example.test" in page and "unreachable" in page
    audit = json.dumps([e.meta for e in panel.audit.entries(100)])
    for secret in ("secret-token-123", "secret-slack-456"):
        assert secret not in page and secret not in audit and secret not in caplog.text


def test_message_for_tolerates_missing_fields():
    entry = store.AuditEntry(1, 0.0, "auto_shutdown_complete", "system", {"instance_id": 7})
    assert "instance 7 stopped" in notify.message_for(entry)
    budget = {"budget_usd": 50, "spent_usd": 41.5, "period": "month"}
    crossed = store.AuditEntry(2, 0.0, "budget_warning", "system", budget)
    assert notify.wants_notification(crossed.event, crossed.meta)
    assert "$41.50 of $50.00 spent this month" in notify.message_for(crossed)
    other = store.AuditEntry(3, 0.0, "budget_override", "admin", {"until": "x"})
    assert not notify.wants_notification(other.event, other.meta)
    assert notify.message_for(other) == "vastpanel: budget_override by admin (until=x)"
