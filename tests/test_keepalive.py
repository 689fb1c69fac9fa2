"""The warning before an idle stop and Keep running: the pure deadline, the API, CLI and page."""

from __future__ import annotations

import pytest

from conftest import CONTROL_KEY, base_config, config_from
from support import store
from support.page import HTMX, csrf_token, signed_in_client
from vastpanel import create_app
from vastpanel.domain.idle import idle_deadline
from vastpanel.watchdog.looks import watchdog_for

IDLE_S = 30 * 60
WARN_S = 5 * 60


def events(panel) -> list[str]:
    return [e.event for e in reversed(panel.audit.entries(1000))]


def running(vast, panel) -> store.Session:
    """Make the instance run and let the panel see it; return the session."""
    vast.set_running()
    panel.instance.state()
    return store.current_session(panel.store.db)


def test_keepalive_holds_the_pure_deadline_at_least_until_then():
    plain = {"auto_shutdown": True, "idle_minutes": 30, "held_since": 1000.0}
    assert idle_deadline(**plain, last_activity=2000.0) == 2000.0 + IDLE_S
    assert idle_deadline(**plain, last_activity=2000.0, keepalive_until=9000.0) == 9000.0
    # A keep-alive that ends before the idle time does not shorten it.
    assert idle_deadline(**plain, last_activity=2000.0, keepalive_until=2100.0) == 2000.0 + IDLE_S
    assert idle_deadline(**{**plain, "auto_shutdown": False}, last_activity=None) is None


def test_api_keepalive_moves_the_deadline_and_is_audited(client, vast, clock, panel):
    session = running(vast, panel)
    clock.advance(20 * 60)
    answer = client.post("/infra/vast/keepalive", json={"minutes": 60})
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["status"] == "kept" and body["capped"] is False
    assert panel.idle.next_idle_deadline() == pytest.approx(clock.now() + 3600)
    status = client.get("/infra/vast/status").get_json()
    assert status["auto_shutdown_in_minutes"] == pytest.approx(60)
    kept = panel.audit.entries(1)[0]
    assert (kept.event, kept.actor, kept.meta["minutes"]) == ("keepalive", "api", 60)
    # A shorter keep-alive later never pulls the deadline in.
    client.post("/infra/vast/keepalive", json={"minutes": 30})
    assert panel.idle.next_idle_deadline() == pytest.approx(clock.now() + 3600)
    # Activity after the keep-alive runs out counts as before.
    clock.advance(3600 + 10)
    panel.idle.record_activity()
    assert panel.idle.next_idle_deadline() == pytest.approx(clock.now() + IDLE_S)
    assert store.current_session(panel.store.db).id == session.id


@pytest.mark.parametrize(
    "body",
    [{}, {"minutes": "60"}, {"minutes": True}, {"minutes": 0}, {"minutes": -5}, {"minutes": 481}],
)
def test_bad_keepalive_is_refused_422_and_changes_nothing(client, vast, panel, body):
    running(vast, panel)
    before = panel.idle.next_idle_deadline()
    entries = len(panel.audit.entries(1000))
    answer = client.post("/infra/vast/keepalive", json=body)
    assert answer.status_code == 422
    assert "minutes" in answer.get_json()["detail"]
    assert panel.idle.next_idle_deadline() == before
    assert len(panel.audit.entries(1000)) == entries


def test_keepalive_bound_follows_the_setting(tmp_path, clock, vast):
    app = create_app(
        config_from(base_config(tmp_path, VAST_KEEPALIVE_MAX_MINUTES="90")), clock=clock
    )
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = CONTROL_KEY
    running(vast, app.extensions["vastpanel"])
    assert client.post("/infra/vast/keepalive", json={"minutes": 91}).status_code == 422
    assert client.post("/infra/vast/keepalive", json={"minutes": 90}).status_code == 200


def test_keepalive_without_a_session_is_409(client):
    answer = client.post("/infra/vast/keepalive", json={"minutes": 30})
    assert answer.status_code == 409
    assert "not running" in answer.get_json()["detail"]


def test_keepalive_never_runs_past_the_session_limit(tmp_path, clock, vast):
    config = base_config(tmp_path, VAST_MAX_SESSION_HOURS="1")
    panel = create_app(config_from(config), clock=clock).extensions["vastpanel"]
    session = running(vast, panel)
    clock.advance(40 * 60)
    result = panel.idle.keep_alive("api", 120)
    assert result.capped
    assert result.keepalive_until == pytest.approx(session.started_at + 3600)
    assert panel.audit.entries(1)[0].meta["capped"] is True
    # The warning before the limit's stop, and the page's banner say so (no Keep running there).
    watchdog = watchdog_for(panel)
    clock.advance(16 * 60)
    watchdog.look()
    warning = panel.audit.entries(1)[0]
    assert (warning.event, warning.meta["reason"]) == ("idle_warning", "session_limit")
    assert panel.status.report().stop_warning == "session_limit"
    panel.store.close()


def test_cli_keepalive(app, vast, panel):
    running(vast, panel)
    result = app.test_cli_runner().invoke(args=["vast", "keepalive", "60"])
    assert result.exit_code == 0, result.output
    assert "Kept running until" in result.output
    assert panel.audit.entries(1)[0].actor == "cli"
    bad = app.test_cli_runner().invoke(args=["vast", "keepalive", "10000"])
    assert bad.exit_code == 1 and "at most 480" in bad.output


def test_the_watchdog_warns_once_per_deadline(panel, vast, clock):
    watchdog = watchdog_for(panel)
    running(vast, panel)
    first = watchdog.look()
    deadline = first.next_deadline
    assert first.next_warning == deadline - WARN_S
    clock.advance(IDLE_S - WARN_S - 1)
    watchdog.look()
    assert "idle_warning" not in events(panel)
    clock.advance(1)
    look = watchdog.look()
    assert look.next_warning is None  # sent: nothing more to wait for
    warning = panel.audit.entries(1)[0]
    assert (warning.event, warning.actor) == ("idle_warning", "system")
    assert warning.meta["reason"] == "idle"
    assert warning.meta["stop_in_minutes"] == pytest.approx(5)
    clock.advance(60)
    watchdog.look()
    assert events(panel).count("idle_warning") == 1
    # A keep-alive makes a new deadline: a new warning before it, once.
    panel.idle.keep_alive("api", 30)
    clock.advance(26 * 60)
    watchdog.look()
    watchdog.look()
    assert events(panel).count("idle_warning") == 2
    assert vast.puts == []


def test_the_page_banner_and_its_keep_running_buttons(app, vast, clock, panel):
    admin = signed_in_client(app)
    running(vast, panel)
    page = admin.get("/").get_data(as_text=True)
    assert "keepalive-banner" not in page
    clock.advance(IDLE_S - 60)
    widget = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert "keepalive-banner" in widget and "1 min" in widget
    for label in ("30 min", "1 h", "2 h"):
        assert f">{label}</button>" in widget
    token = csrf_token(admin, "/")
    answer = admin.post("/keepalive", data={"csrf_token": token, "minutes": "30"}, headers=HTMX)
    assert answer.status_code == 200
    assert "keepalive-banner" not in answer.get_data(as_text=True)
    assert panel.audit.entries(1)[0].actor == "admin"
    assert panel.idle.next_idle_deadline() == pytest.approx(clock.now() + 1800)
    # A value the page does not offer is refused without a change.
    refused = admin.post("/keepalive", data={"csrf_token": token, "minutes": "9999"}, headers=HTMX)
    assert "at most" in refused.get_data(as_text=True)
    assert panel.idle.next_idle_deadline() == pytest.approx(clock.now() + 1800)
