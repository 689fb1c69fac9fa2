"""Cost truth with a movable clock and vast.ai faked: the ledger, vast.ai's charges, the caps."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from conftest import base_config, config_from
from support import store
from vastpanel import create_app
from vastpanel.domain import costs
from vastpanel.domain.budget import period_bounds, session_cap_deadline
from vastpanel.domain.costs import billing_rates
from vastpanel.storage import ledger
from vastpanel.watchdog.looks import watchdog_for

GPU_DPH, STORAGE_DPH = 0.4, 0.05  # the fixtures' dph_base and storage_total_cost


def read(panel):
    """Make the panel read vast.ai afresh (as a look or a status poll does)."""
    return panel.instance.state(fresh=True)


def audit_events(panel, name: str) -> list[store.AuditEntry]:
    return [e for e in panel.audit.entries(1000) if e.event == name]


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


def test_a_stop_s_assumed_storage_rate_is_re_priced_by_the_next_reading(panel, vast, clock):
    vast.set_running()
    read(panel)
    clock.advance(3600)
    panel.power.power_off("api")  # booked at the storage rate last seen, running
    vast.set(storage_total_cost=0.075)  # vast.ai prices the stopped instance's storage higher
    clock.advance(3600)
    assert panel.costs.all_in_totals().storage_usd == pytest.approx(2 * STORAGE_DPH)
    read(panel)  # stopped at 0.075: the hour since the stop is at that rate
    clock.advance(3600)
    read(panel)
    assert panel.costs.all_in_totals().storage_usd == pytest.approx(STORAGE_DPH + 2 * 0.075)
    with panel.store.db.conn:
        rows = panel.store.db.execute(
            "SELECT storage_dph, status, assumed FROM cost_ledger ORDER BY id"
        ).fetchall()
    assert rows == [(STORAGE_DPH, "running", 0), (0.075, "stopped", 0)]


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


def test_rows_from_before_the_ledger_knew_instances_become_the_first_ones(panel):
    db = panel.store.db
    first = panel.config.vast_instance_id
    ledger.book(db, 1000.0, ledger.Rates(1.0, 0.1, "running"))  # as booked before m014
    answer = {"id": first, "actual_status": "running", "dph_base": 1.0, "storage_total_cost": 0.1}
    panel.costs.book(answer, 4600.0)
    assert {row["instance_id"] for row in db.query("SELECT instance_id FROM cost_ledger")} == {
        first
    }
    # One timeline: two hours at $1/h, not an unlabelled line counting on beside it.
    gpu, storage = costs.booked_between(db, 1000.0, 8200.0)
    assert gpu == pytest.approx(2.0) and storage == pytest.approx(0.2)
