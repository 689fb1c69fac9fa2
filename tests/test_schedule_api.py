"""GET/PUT/DELETE /infra/vast/schedule beyond the description: what a schedule says at a known
moment, values the description cannot refuse (a wrong day, zone or date) answered 422 naming
the field with nothing changed, and /status while a window holds the idle stop."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from conftest import CONTROL_KEY, base_config, config_from
from support.clock import FakeClock
from vastpanel import create_app

URL = "/infra/vast/schedule"
MONDAY_0730 = datetime(2026, 3, 2, 7, 30, tzinfo=UTC).timestamp()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(MONDAY_0730)


@pytest.fixture
def scheduled(tmp_path, clock, vast):
    """A client of an app with the environment's schedule (office hours in Berlin)."""
    env = base_config(
        tmp_path,
        VAST_SCHEDULE="Mon-Fri 08:30-18:30; Sat 10:00-14:00",
        VAST_SCHEDULE_TZ="Europe/Berlin",
        VAST_SCHEDULE_SKIP="2026-12-24,2026-12-25",
    )
    app = create_app(config_from(env), clock=clock)
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = CONTROL_KEY
    yield client
    app.extensions["vastpanel"].store.close()


def test_get_says_where_the_schedule_stands_and_what_it_costs(scheduled):
    scheduled.get("/infra/vast/status")  # vast.ai read once: its prices are known
    body = scheduled.get(URL).get_json()
    assert body["source"] == "environment" and body["set_at"] is None
    assert body["schedule"] == "Mon-Fri 08:30-18:30; Sat 10:00-14:00"
    assert body["skip"] == ["2026-12-24", "2026-12-25"]
    assert body["environment"] == {
        "schedule": body["schedule"],
        "timezone": "Europe/Berlin",
        "skip": body["skip"],
    }
    # 07:30 UTC is 08:30 in Berlin (CET): Monday's window opens now.
    assert body["window"] == {
        "opens_at": "2026-03-02T07:30:00Z",
        "closes_at": "2026-03-02T17:30:00Z",
    }
    assert body["next_window"]["opens_at"] == "2026-03-03T07:30:00Z"
    assert body["next_start_at"] == "2026-03-02T07:15:00Z"  # due: started at the next look
    assert (body["lead_minutes"], body["lead_learned"], body["timed_starts"]) == (15, False, 0)
    assert body["idle_minutes_in_windows"] is None and body["hard_end"] is False
    cost = body["month_cost"]
    assert cost["storage_usd"] == pytest.approx(720 * 0.05)
    assert cost["gpu_usd"] == pytest.approx(
        (cost["window_hours"] + cost["lead_hours"] + cost["idle_after_hours"]) * 0.4
    )
    assert body["blocked_by"] is None and body["note"] is None


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"schedule": "Mon-Fru 08:30-18:30"}, "schedule: at column 5, 'Fru' is not a day"),
        ({"schedule": "Mon 08:30"}, "schedule: at column 10, '-' and a closing time is expected"),
        ({"schedule": "Sat 10:00-14:00", "timezone": "Europe/Berln"}, "timezone: 'Europe/Berln'"),
        (
            {"schedule": "Sat 10:00-14:00", "skip": ["2026-13-01"]},
            "skip: '2026-13-01' is not a date",
        ),
        ({"schedule": "Sat 10:00-14:00", "skip": [7]}, "skip: each item must be a text"),
    ],
)
def test_an_unusable_value_is_422_naming_the_field_and_changes_nothing(scheduled, body, detail):
    before = scheduled.get(URL).get_json()
    answer = scheduled.put(URL, json=body)
    assert answer.status_code == 422
    assert answer.get_json()["detail"].startswith(detail)
    assert scheduled.get(URL).get_json() == before
    audit = scheduled.get("/infra/vast/audit").get_json()
    assert not [e for e in audit if e["event"] == "schedule_changed"]


def test_a_stored_schedule_wins_over_the_environments_until_deleted(scheduled):
    stored = scheduled.put(URL, json={"schedule": "sun 02:30-06:00", "timezone": "UTC"})
    body = stored.get_json()
    assert body["source"] == "stored" and body["set_at"] == "2026-03-02T07:30:00Z"
    assert body["schedule"] == "Sun 02:30-06:00" and body["window"] is None
    assert body["environment"]["schedule"] == "Mon-Fri 08:30-18:30; Sat 10:00-14:00"
    changed = scheduled.get("/infra/vast/audit?limit=1").get_json()[0]
    assert (changed["event"], changed["actor"]) == ("schedule_changed", "api")
    cleared = scheduled.delete(URL).get_json()
    assert cleared["source"] == "environment" and cleared["window"] is not None
    assert scheduled.get("/infra/vast/audit?limit=1").get_json()[0]["event"] == "schedule_cleared"


def test_status_says_until_when_a_window_holds_the_idle_stop(scheduled, vast):
    vast.set_running()
    status = scheduled.get("/infra/vast/status").get_json()
    assert status["scheduled_until"] == "2026-03-02T17:30:00Z"
    assert status["auto_shutdown_in_minutes"] == pytest.approx(10 * 60 + 30)
    scheduled.put(URL, json={"schedule": ""})  # no windows: the idle rule as ever
    status = scheduled.get("/infra/vast/status").get_json()
    assert status["scheduled_until"] is None
    assert status["auto_shutdown_in_minutes"] == pytest.approx(30)


def test_the_cli_status_says_until_when_too(scheduled, vast):
    vast.set_running()
    result = scheduled.application.test_cli_runner().invoke(args=["vast", "status"])
    assert result.exit_code == 0, result.output
    assert "Auto-shutdown in: scheduled until 18:30" in result.stdout  # Berlin's clock
