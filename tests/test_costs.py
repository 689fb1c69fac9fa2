"""Cost truth with a movable clock and vast.ai faked: the ledger, vast.ai's charges, the caps."""

from __future__ import annotations

import json
from dataclasses import astuple
from datetime import UTC, date, datetime

import pytest

from conftest import base_config, config_from
from support import store
from vastpanel import create_app
from vastpanel.domain import costs
from vastpanel.domain.budget import period_bounds, session_cap_deadline
from vastpanel.domain.costs import Billed, billed_by_day, billing_rates, compare_day
from vastpanel.storage import ledger
from vastpanel.watchdog.looks import watchdog_for

GPU_DPH, STORAGE_DPH = 0.4, 0.05  # the fixtures' dph_base and storage_total_cost


def read(panel):
    """Make the panel read vast.ai afresh (as a look or a status poll does)."""
    return panel.instance.state(fresh=True)


def audit_events(panel, name: str) -> list[store.AuditEntry]:
    return [e for e in panel.audit.entries(1000) if e.event == name]


def charge_row(day: date, gpu: float, disk: float, bw: float = 0.0, source="instance-4242"):
    start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    items = [
        {"type": "gpu", "amount": gpu, "description": "GPU"},
        {"type": "disk", "amount": disk, "description": "Storage"},
        {"type": "bwd", "amount": bw, "description": "Bandwidth"},
    ]
    return {
        "start": start,
        "end": start + 86400,
        "type": "instance",
        "source": source,
        "amount": gpu + disk + bw,
        "items": items,
    }


def serve_charges(vast, pages: list[list[dict]]) -> list[dict]:
    """Answer the charges endpoint page by page; return the queries it was asked."""
    vast.charges = [(200, {"success": True, "results": rows}) for rows in pages]
    return vast.charges_asked


# --- prices ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "gpu", "storage"),
    [
        ("running", 0.4, 0.05),
        ("frozen", 0.4, 0.05),
        ("stopped", 0.0, 0.05),
        ("loading", 0.0, 0.05),
        ("exited", 0.0, 0.05),
        ("unknown", 0.0, 0.05),
        ("offline", 0.0, 0.0),
        (None, 0.0, 0.05),
    ],
)
def test_gpu_is_billed_while_running_or_frozen_storage_always_but_offline(status, gpu, storage):
    payload = {"actual_status": status, "dph_base": 0.4, "storage_total_cost": 0.05}
    rates = billing_rates(payload)
    assert (rates.gpu_dph, rates.storage_dph) == (gpu, storage)


def test_missing_price_fields_are_derived_from_dph_total():
    rates = billing_rates({"actual_status": "running", "dph_base": 0.4, "dph_total": 0.45})
    assert rates.storage_dph == pytest.approx(0.05) and rates.gpu_dph == 0.4
    assert billing_rates(None).storage_dph == 0.0  # destroyed: nothing is billed any more


def test_the_average_session_is_none_before_the_first_one():
    assert costs.average_session_seconds(store.CostTotals(0, 0.0, 0.0)) is None
    assert costs.average_session_seconds(store.CostTotals(2, 1800.0, 0.225)) == 900.0


# --- the ledger ----------------------------------------------------------------------------------


def test_storage_is_booked_while_stopped_and_gpu_only_while_running(panel, vast, clock):
    read(panel)
    clock.advance(3600)
    read(panel)
    assert panel.costs.all_in_totals().storage_usd == pytest.approx(STORAGE_DPH)
    assert panel.costs.all_in_totals().gpu_usd == 0.0
    vast.set_running()
    read(panel)
    clock.advance(7200)
    read(panel)
    vast.set_stopped()
    read(panel)
    totals = panel.costs.all_in_totals()
    assert totals.gpu_usd == pytest.approx(2 * GPU_DPH)
    assert totals.storage_usd == pytest.approx(3 * STORAGE_DPH)
    assert totals.bandwidth_usd is None
    assert totals.all_in_usd == pytest.approx(2 * GPU_DPH + 3 * STORAGE_DPH)
    # Between readings the time counts at the last price seen.
    clock.advance(1800)
    assert panel.costs.all_in_totals().storage_usd == pytest.approx(3.5 * STORAGE_DPH)


def test_a_price_change_is_booked_from_when_it_was_seen(panel, vast, clock):
    read(panel)
    clock.advance(3600)
    vast.set(storage_total_cost=0.15)
    read(panel)  # the hour before this reading is at the old price
    clock.advance(3600)
    read(panel)
    assert panel.costs.all_in_totals().storage_usd == pytest.approx(0.05 + 0.15)


def test_an_older_observation_books_nothing(panel, clock):
    ledger.book(panel.store.db, clock.now(), ledger.Rates(0.0, 1.0, "stopped"))
    ledger.book(panel.store.db, clock.now() + 3600, ledger.Rates(0.0, 1.0, "stopped"))
    ledger.book(
        panel.store.db, clock.now() + 1800, ledger.Rates(5.0, 1.0, "running")
    )  # late answer
    assert costs.booked_totals(panel.store.db, clock.now() + 3600) == pytest.approx((0.0, 1.0))


def test_a_restart_catches_up_from_the_stored_price_and_counts_nothing_twice(
    tmp_path, vast, clock, panel
):
    read(panel)
    clock.advance(600)
    read(panel)
    panel.store.close()
    clock.advance(3000)  # the panel is down
    again = create_app(config_from(base_config(tmp_path)), clock=clock).extensions["vastpanel"]
    assert again.costs.all_in_totals().storage_usd == pytest.approx(STORAGE_DPH)  # caught up
    read(again)
    read(again)
    clock.advance(3600)
    read(again)
    assert again.costs.all_in_totals().storage_usd == pytest.approx(2 * STORAGE_DPH)
    again.store.close()


def test_cost_per_day_splits_the_ledger_at_utc_midnight(panel, vast, clock):
    # FakeClock starts at 2023-11-14 22:13:20 UTC.
    vast.set_running()
    read(panel)
    clock.advance(3 * 3600)
    read(panel)
    days = panel.costs.cost_days(date(2023, 11, 14), date(2023, 11, 15))
    first = (24 - 22 - 13 / 60 - 20 / 3600) * GPU_DPH
    assert days[0].gpu == pytest.approx(first)
    assert days[1].gpu == pytest.approx(3 * GPU_DPH - first)
    assert days[0].billed is None and days[0].difference_pct is None


# --- vast.ai's charges ----------------------------------------------------------------------------


def test_charges_are_read_page_by_page_at_the_rate_limit_and_stored_per_day(panel, vast, clock):
    today = datetime.fromtimestamp(clock.now(), UTC).date()
    asked = serve_charges(
        vast,
        [
            [charge_row(today, 0.2, 0.1, 0.01)],
            [charge_row(today, 0.1, 0.0), charge_row(today, 9.0, 9.0, source="instance-1")],
        ],
    )
    slept_before, asked_at = len(clock.slept), clock.now()
    status = panel.costs.read_charges()
    assert status.error is None and status.read_at == asked_at
    assert len(asked) == 2 and asked[1]["after_token"] == "1"
    filters = json.loads(asked[0]["select_filters"])
    assert filters["type"] == {"in": ["instance"]}
    assert filters["day"]["lte"] == int(asked_at)
    assert filters["day"]["gte"] == store.midnight(date(2023, 10, 16))  # 30 days with today
    assert clock.slept[slept_before:] == [2.0]  # one pause between the two pages
    day = panel.costs.recent_cost_days()[-1]
    assert astuple(day.billed) == pytest.approx((0.3, 0.1, 0.01, 0.41))
    assert panel.costs.all_in_totals().bandwidth_usd == pytest.approx(0.01)
    assert panel.costs.recent_cost_days()[0].billed == Billed(0.0, 0.0, 0.0, 0.0)


def test_a_429_naming_its_threshold_is_waited_out_before_the_retry(panel, vast, clock):
    answers = [(429, "API requests too frequent: endpoint threshold=2.0")]

    def charges(query):
        status, body = answers.pop(0) if answers else (200, {"results": []})
        return status, {}, body if isinstance(body, str) else json.dumps(body)

    vast.charges = charges
    slept = len(clock.slept)
    assert panel.costs.read_charges().error is None
    assert clock.slept[slept:] == [2.0] and len(vast.charges_asked) == 2


@pytest.mark.parametrize(
    ("status", "body", "says"),
    [
        (403, {"success": False, "error": "permission_denied"}, "billing_read"),
        (502, "<html>Bad gateway</html>", "could not be read"),
        (200, {"results": "nope"}, "could not be read"),
        (200, {"results": [{"source": "instance-4242", "start": "x"}]}, "could not be read"),
    ],
)
def test_charges_refused_or_unreadable_leave_estimates_only_said_plainly(
    panel, vast, client, status, body, says
):
    vast.charges = [(status, body)]
    assert (
        "estimates only" in panel.costs.read_charges().error
        and says in panel.costs.charges_status().error
    )
    answer = client.get("/infra/vast/costs").json
    assert says in answer["charges"]["error"] and answer["charges"]["read_at"] is None
    assert all(day["billed"] is None for day in answer["days"])


def test_a_day_more_than_one_percent_off_is_flagged_and_audited_once(panel, vast, clock):
    read(panel)
    first_full_day = date(2023, 11, 15)
    clock.advance(2 * 86400)  # stopped: storage only, two days on
    read(panel)
    storage_day = 24 * STORAGE_DPH
    serve_charges(vast, [[charge_row(first_full_day, 0.0, storage_day * 1.05)]])
    panel.costs.read_charges()
    panel.costs.read_charges()
    flagged = [d for d in panel.costs.recent_cost_days() if d.mismatch]
    assert [d.day for d in flagged] == [first_full_day]
    assert flagged[0].difference_pct == pytest.approx(-100 * 0.05 / 1.05)
    entries = audit_events(panel, "cost_mismatch")
    assert len(entries) == 1 and entries[0].meta["day"] == "2023-11-15"


def test_a_day_within_one_percent_or_not_watched_whole_is_not_a_mismatch():
    bill = (Billed(1.0, 1.0, 0.0, 2.0), store.midnight(date(2024, 5, 3)))
    watched = store.midnight(date(2024, 5, 1))
    close = compare_day(date(2024, 5, 2), [1.0, 1.015], [1.0, 1.015], bill, watched)
    assert not close.mismatch and close.difference_pct == pytest.approx(0.75)
    off = compare_day(date(2024, 5, 2), [1.2, 0.8], [1.2, 0.8], bill, watched)
    assert off.mismatch and off.difference_pct == 0  # items swapped: the total agrees
    late = compare_day(date(2024, 5, 2), [0.5, 0.5], [0.5, 0.5], bill, watched + 2 * 86400)
    assert not late.mismatch and late.difference_pct is None  # watched from after it began


def test_billed_by_day_sums_this_instances_rows_per_day():
    day = date(2024, 5, 1)
    rows = [
        charge_row(day, 1.0, 0.5, 0.25),
        charge_row(day, 1.0, 0.0),
        charge_row(day, 5, 5, 5, "x"),
    ]
    assert billed_by_day(rows, 4242) == {day: Billed(2.0, 0.5, 0.25, 2.75)}


# --- caps ------------------------------------------------------------------------------------------


@pytest.fixture
def capped(tmp_path, clock, vast):
    """An app with a $1/day budget and 3-hour sessions, and its watchdog."""

    def make(**overrides):
        config = {
            **base_config(tmp_path),
            "VAST_BUDGET_USD": "1",
            "VAST_BUDGET_PERIOD": "day",
            **overrides,
        }
        app = create_app(config_from(config), clock=clock)
        return app, watchdog_for(app.extensions["vastpanel"])

    return make


def test_periods_are_utc_days_or_months():
    now = datetime(2024, 2, 10, 15, tzinfo=UTC).timestamp()
    assert period_bounds(now, "day") == (date(2024, 2, 10), date(2024, 2, 10))
    assert period_bounds(now, "month") == (date(2024, 2, 1), date(2024, 2, 29))
    assert session_cap_deadline(100.0, 2) == 100.0 + 7200 and session_cap_deadline(None, 2) is None


def test_budget_warns_at_80_percent_stops_at_100_and_refuses_power_on(capped, vast, clock):
    app, watchdog = capped(VAST_AUTO_SHUTDOWN="false")
    panel, client = app.extensions["vastpanel"], app.test_client()
    vast.set_running()
    vast.set(dph_base=1.95)  # $2/h with storage: 80 % after 24 min, 100 % after 30 min
    look = watchdog.look()
    assert look.next_deadline == pytest.approx(clock.now() + 1800)  # the budget crossing
    clock.advance(25 * 60)
    assert watchdog.look().stopped is None
    assert len(audit_events(panel, "budget_warning")) == 1
    assert panel.budget.status().state == "warning"
    clock.advance(5 * 60 + 1)
    stopped = watchdog.look().stopped
    assert stopped is not None and vast.puts == ["stopped"]
    assert audit_events(panel, "budget_stop")[0].meta["spent_usd"] == pytest.approx(1.0, abs=0.001)
    assert len(audit_events(panel, "budget_warning")) == 1
    refused = client.post(
        "/infra/vast/power/on",
        json={"wait_for_health": False},
        headers={"X-API-Key": app.extensions["vastpanel"].config.control_api_key},
    )
    assert refused.status_code == 409 and "budget is spent" in refused.json["detail"]
    assert vast.puts == ["stopped"]
    app.extensions["vastpanel"].store.close()


def test_override_lets_power_on_through_until_the_period_ends_and_is_audited(capped, vast, clock):
    app, watchdog = capped()
    panel = app.extensions["vastpanel"]
    key = {"X-API-Key": panel.config.control_api_key}
    client = app.test_client()
    vast.set_running()
    vast.set(dph_base=3.95)
    watchdog.look()
    clock.advance(20 * 60)
    watchdog.look()
    assert vast.puts == ["stopped"]
    until = {"until": "2023-11-15T00:00:00Z"}  # as far as an override goes: the period's end
    answer = client.post("/infra/vast/budget/override", headers=key, json=until)
    assert answer.status_code == 200 and answer.json["state"] == "overridden"
    assert answer.json["override_until"] == "2023-11-15T00:00:00Z"
    entry = audit_events(panel, "budget_override")[0]
    assert entry.actor == "api" and entry.meta["budget_usd"] == 1.0
    started = client.post("/infra/vast/power/on", json={"wait_for_health": False}, headers=key)
    assert started.status_code == 200 and vast.puts == ["stopped", "running"]
    vast.set_running()
    vast.set(dph_base=3.95)
    watchdog.look()
    assert vast.puts == ["stopped", "running"]  # overridden: the watchdog leaves it running
    clock.advance(2 * 3600)  # the next day: a new budget, no override
    assert panel.budget.status().override_until is None
    panel.store.close()


def test_override_without_a_budget_is_409(client):
    answer = client.post("/infra/vast/budget/override", json={"extra_usd": 5})
    assert answer.status_code == 409 and "VAST_BUDGET_USD" in answer.json["detail"]


def test_a_session_reaching_max_hours_is_stopped_whatever_the_activity(capped, vast, clock):
    app, watchdog = capped(VAST_BUDGET_USD="", VAST_MAX_SESSION_HOURS="3")
    panel = app.extensions["vastpanel"]
    vast.set_running()
    look = watchdog.look()
    assert look.next_deadline == pytest.approx(look.at + 30 * 60)  # the idle deadline first
    for _ in range(5):
        clock.advance(1800)
        panel.idle.record_activity()
        assert watchdog.look().stopped is None
    assert panel.budget.session_cap_deadline() == pytest.approx(look.at + 3 * 3600)
    status = app.test_client().get(
        "/infra/vast/status", headers={"X-API-Key": panel.config.control_api_key}
    )
    assert status.json["max_session_stop_at"] is not None
    clock.advance(1800)
    panel.idle.record_activity()
    assert watchdog.look().stopped is not None and vast.puts == ["stopped"]
    entry = audit_events(panel, "max_session_stop")[0]
    assert entry.meta["hours"] == pytest.approx(3)
    panel.store.close()
