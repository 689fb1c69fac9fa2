"""The page's cost widget: the whole bill, estimate vs billed on the chart, the budget bar."""

from __future__ import annotations

import pytest

from conftest import base_config, config_from
from support.page import HTMX, csrf_token, signed_in_client
from vastpanel import create_app
from vastpanel.watchdog.looks import watchdog_for


@pytest.fixture
def budgeted(tmp_path, clock, vast):
    config = config_from(base_config(tmp_path, VAST_BUDGET_USD="1", VAST_BUDGET_PERIOD="day"))
    app = create_app(config, clock=clock)
    yield app
    app.extensions["vastpanel"].store.close()


def test_the_widget_shows_a_one_day_contract_beside_its_estimate_and_a_mismatch(
    budgeted, vast, clock
):
    panel = budgeted.extensions["vastpanel"]
    panel.instance.state(fresh=True)
    clock.advance(2 * 86400)
    panel.instance.state(fresh=True)
    row = {
        "start": 1700006400.0,  # a contract of 2023-11-15 alone, watched, storage ($1.20)
        "end": 1700092800.0,
        "type": "instance",
        "source": "instance-4242",
        "amount": 1.5,
        "items": [{"type": "disk", "amount": 1.5}],
    }
    body = {"success": True, "results": [row], "next_token": None}
    vast.charges = [(200, body)]
    panel.costs.read_charges()
    html = signed_in_client(budgeted).get("/partials/costs", headers=HTMX).get_data(as_text=True)
    assert "<dt>Storage</dt><dd>$2.40</dd>" in html
    assert 'class="billed mismatch"' in html and "vast.ai billed $1.50" in html
    assert (
        "vast.ai billed $1.50 for Nov 15; estimate $1.20, \u221220.0 %: more than 1 % off" in html
    )
    assert "storage $1.50 (Nov 15; estimate $1.20)" in html
    assert "s charges read" in html
    assert "spent today" in html and "of a $1.00 budget" in html and "<meter" in html


def test_estimates_only_is_said_plainly_when_vast_ai_refuses_its_charges(budgeted, vast):
    vast.charges = [(403, {})]
    budgeted.extensions["vastpanel"].costs.read_charges()
    html = signed_in_client(budgeted).get("/").get_data(as_text=True)
    assert "Estimates only: vast.ai refused to show its charges" in html
    assert "billing_read" in html


def test_the_budget_bar_warns_and_the_override_button_lets_power_on_through(budgeted, vast, clock):
    panel = budgeted.extensions["vastpanel"]
    watchdog = watchdog_for(panel)
    vast.set_running()
    vast.set(dph_base=3.95)  # $4/h: the $1 day is spent in 15 minutes
    watchdog.look()
    clock.advance(13 * 60)
    watchdog.look()
    admin = signed_in_client(budgeted)
    html = admin.get("/partials/costs", headers=HTMX).get_data(as_text=True)
    assert "budget-warning" in html and "80 % reached" in html and "Override budget" in html
    clock.advance(3 * 60)
    watchdog.look()
    assert vast.puts == ["stopped"]
    html = admin.get("/partials/costs", headers=HTMX).get_data(as_text=True)
    assert "budget-exceeded" in html and "power-on is refused until" in html
    refused = admin.post("/power/on", data={"csrf_token": csrf_token(admin, "/")}, headers=HTMX)
    assert "budget is spent" in refused.get_data(as_text=True)
    token = csrf_token(admin, "/")
    form = {"csrf_token": token, "by": "hours", "hours": "1"}
    answer = admin.post("/budget/override", data=form, headers=HTMX)
    assert answer.status_code == 200 and "overridden by an admin" in answer.get_data(as_text=True)
    override = [e for e in panel.audit.entries(100) if e.event == "budget_override"]
    assert len(override) == 1 and override[0].actor == "admin"
    admin.post("/power/on", data={"csrf_token": token}, headers=HTMX)
    assert vast.puts == ["stopped", "running"]
    plain = admin.post("/budget/override", data={**form, "hours": "1"})
    assert plain.status_code == 303
