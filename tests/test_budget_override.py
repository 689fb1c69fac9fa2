"""A budget override goes as far as the admin says, an amount or a time, and the budget stops
the instance again past it (issue 23 §15)."""

from __future__ import annotations

import pytest

from conftest import base_config, config_from
from support.page import HTMX, csrf_token, sign_in
from vastpanel import create_app
from vastpanel.clock import iso_utc as iso
from vastpanel.watchdog.looks import watchdog_for

# The fake clock starts at 2023-11-14T22:13:20Z; a $1 daily budget ends at midnight UTC.
DAY_END = "2023-11-15T00:00:00Z"


@pytest.fixture
def budgeted(tmp_path, clock, vast):
    """An app with a $1/day budget, its watchdog and an API client; the instance at $4/h."""
    config = base_config(
        tmp_path, VAST_BUDGET_USD="1", VAST_BUDGET_PERIOD="day", VAST_AUTO_SHUTDOWN="false"
    )
    app = create_app(config_from(config), clock=clock)
    panel = app.extensions["vastpanel"]
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = panel.config.control_api_key
    vast.set_running()
    vast.set(dph_base=3.95)  # $4/h with storage: the $1 day is spent in 15 minutes
    yield app, panel, client, watchdog_for(panel)
    panel.store.close()


def events(panel, name: str):
    return [e for e in panel.audit.entries(200) if e.event == name]


def spend_the_budget(panel, watchdog, clock, vast) -> None:
    watchdog.look()
    clock.advance(16 * 60)
    watchdog.look()
    assert vast.puts == ["stopped"] and panel.budget.status().state == "exceeded"


def start_again(client, vast, clock) -> None:
    started = client.post("/infra/vast/power/on", json={"wait_for_health": False})
    assert started.status_code == 200, started.json
    vast.set_running()
    vast.set(dph_base=3.95)
    clock.advance(6)  # past VAST_STATUS_TTL_S: the next look reads it running, at $4/h


def test_an_override_by_an_amount_ends_when_it_is_spent(budgeted, clock, vast):
    app, panel, client, watchdog = budgeted
    spend_the_budget(panel, watchdog, clock, vast)
    spent = panel.budget.status().spent_usd
    answer = client.post("/infra/vast/budget/override", json={"extra_usd": 0.5})
    assert answer.status_code == 200
    assert answer.json["state"] == "overridden"
    assert answer.json["override_limit_usd"] == pytest.approx(spent + 0.5)
    (entry,) = events(panel, "budget_override")
    assert entry.actor == "api" and entry.meta["extra_usd"] == 0.5
    assert entry.meta["allowed_usd"] == pytest.approx(spent + 0.5)
    start_again(client, vast, clock)
    look = watchdog.look()
    assert look.stopped is None
    # The watchdog looks again when the $0.50 is spent at $4/h: in about 7.5 minutes.
    assert look.next_deadline == pytest.approx(clock.now() + 0.5 / 4 * 3600, abs=30)
    clock.advance(look.next_deadline - clock.now() - 30)
    assert watchdog.look().stopped is None
    clock.advance(31)
    assert watchdog.look().stopped is not None
    assert vast.puts == ["stopped", "running", "stopped"]
    assert len(events(panel, "budget_stop")) == 2
    assert panel.budget.status().state == "exceeded"
    refused = client.post("/infra/vast/power/on", json={"wait_for_health": False})
    assert refused.status_code == 409


def test_an_override_until_a_time_ends_then(budgeted, clock, vast):
    app, panel, client, watchdog = budgeted
    spend_the_budget(panel, watchdog, clock, vast)
    until = clock.now() + 30 * 60
    answer = client.post("/infra/vast/budget/override", json={"until": f"{iso(until)[:-1]}+00:00"})
    assert answer.status_code == 200 and answer.json["override_until"] == iso(until)
    assert answer.json["override_limit_usd"] is None
    start_again(client, vast, clock)
    look = watchdog.look()
    assert look.stopped is None and look.next_deadline == pytest.approx(until)
    clock.advance(29 * 60)
    assert watchdog.look().stopped is None
    clock.advance(61)
    assert watchdog.look().stopped is not None
    assert vast.puts == ["stopped", "running", "stopped"]
    assert panel.budget.status().override is None


def test_an_override_early_in_the_period_is_bounded_too(budgeted, clock, vast):
    """The finding: an override at 0.5 % spent held the budget stops for the rest of the period."""
    app, panel, client, watchdog = budgeted
    watchdog.look()
    clock.advance(8)  # about $0.009 spent
    watchdog.look()
    assert panel.budget.status().share < 0.01
    answer = client.post("/infra/vast/budget/override", json={"extra_usd": 0.25})
    assert answer.status_code == 200 and answer.json["override_limit_usd"] == 1.25
    clock.advance(15 * 60)  # $1 spent: the override lets it run on
    assert watchdog.look().stopped is None
    assert panel.budget.status().state == "overridden"
    clock.advance(4 * 60)  # $1.25 spent: the budget stops it, hours before the day ends
    assert watchdog.look().stopped is not None
    assert vast.puts == ["stopped"]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({}, "Say how far the override goes"),
        ({"extra_usd": 1, "until": DAY_END}, "Say how far the override goes"),
        ({"extra_usd": -1}, "extra_usd must be more than 0"),
        ({"extra_usd": 0}, "extra_usd must be more than 0"),
        ({"extra_usd": True}, "extra_usd must be a number"),
        ({"extra_usd": 10**400}, "extra_usd must be more than 0 and at most 1,000,000"),
        ({"extra_usd": 1e6 + 1}, "extra_usd must be more than 0 and at most 1,000,000"),
        ({"until": "2023-11-15T00:00:01Z"}, "at most the day's end, 2023-11-15T00:00:00Z"),
        ({"until": "2023-11-14T22:00:00Z"}, "until must be after now"),
        ({"until": "2023-11-14T23:00:00"}, "until must say its time zone"),
        ({"until": "at six"}, "until must be an ISO 8601 time"),
    ],
)
def test_an_unusable_override_changes_nothing(budgeted, body, detail):
    app, panel, client, watchdog = budgeted
    answer = client.post("/infra/vast/budget/override", json=body)
    assert answer.status_code == 422 and detail in answer.json["detail"], answer.json
    assert events(panel, "budget_override") == []
    assert panel.budget.status().override is None


def test_the_page_overrides_by_an_amount_or_for_hours_and_shows_it(budgeted, clock, vast):
    app, panel, client, watchdog = budgeted
    spend_the_budget(panel, watchdog, clock, vast)
    admin = app.test_client()
    sign_in(admin)
    card = admin.get("/partials/costs", headers=HTMX).get_data(as_text=True)
    assert 'name="extra_usd"' in card and 'name="hours"' in card
    token = csrf_token(admin, "/")
    form = {"csrf_token": token, "by": "amount", "extra_usd": "2"}
    card = admin.post("/budget/override", data=form, headers=HTMX).get_data(as_text=True)
    assert "Budget overridden: the day may cost up to $3." in card
    assert "Override in force until $3." in card and "is spent this day" in card
    assert events(panel, "budget_override")[-1].actor == "admin"
    form = {"csrf_token": token, "by": "hours", "hours": "1.5"}
    card = admin.post("/budget/override", data=form, headers=HTMX).get_data(as_text=True)
    assert "Budget overridden for the time given." in card
    assert 'Override in force until <time datetime="2023-11-14T23:59:' in card
    assert panel.budget.status().override.until == pytest.approx(clock.now() + 1.5 * 3600)
    # Past the day's end, or not a number: said, and nothing changes.
    for bad in ({"hours": "3"}, {"hours": "soon"}, {"hours": "0"}):
        card = admin.post("/budget/override", data={**form, **bad}, headers=HTMX).get_data(
            as_text=True
        )
        assert "notice-error" in card, bad
    assert len(events(panel, "budget_override")) == 2
    # Without JavaScript: a redirect, and the message on the page.
    plain = admin.post("/budget/override", data={**form, "hours": "1"})
    assert plain.status_code == 303


@pytest.mark.parametrize("raw", ['{"extra_usd": Infinity}', '{"extra_usd": NaN}'])
def test_json_that_is_not_a_finite_number_is_refused(budgeted, raw):
    app, panel, client, watchdog = budgeted
    answer = client.post("/infra/vast/budget/override", data=raw, content_type="application/json")
    assert answer.status_code == 422 and "extra_usd must be more than 0" in answer.json["detail"]
    assert panel.budget.status().override is None
