"""Contracts end: vast.ai's end_date warned of 7 days and 1 day before, no start after it.

vast.ai's show instance has `end_date` (vast-ai/docs show_instance.yaml); its instance guide:
expired instances cannot restart and may be deleted 48 hours after expiry. vast.ai faked with
`responses`, time moved with a FakeClock.
"""

from __future__ import annotations

import pytest

from conftest import base_config, config_from
from support.page import HTMX, signed_in_client
from vastpanel import create_app
from vastpanel.domain.notify import message_for
from vastpanel.vast.instance import read_instance_state
from vastpanel.watchdog.looks import watchdog_for

DAY = 86400.0
LLM_KEY = "team-key-0123456789abcdef"


def events(panel, name: str) -> list:
    return [e for e in reversed(panel.audit.entries(1000)) if e.event == name]


def read(panel):
    return panel.instance.state(fresh=True)


@pytest.mark.parametrize(
    ("end_date", "read"),
    [(1700600000, 1700600000.0), (1700600000.5, 1700600000.5), (None, None), ("soon", None),
     (0, None), (float("inf"), None), (True, None)],
)  # fmt: skip
def test_end_date_is_read_as_epoch_seconds_or_not_at_all(end_date, read):
    state = read_instance_state({"actual_status": "stopped", "end_date": end_date}, 1, 8001)
    assert state.contract_ends_at == read


def test_status_gives_contract_ends_at(client, vast, clock):
    vast.set(end_date=clock.now() + 30 * DAY)
    body = client.get("/infra/vast/status").json
    assert body["contract_ends_at"] == "2023-12-14T22:13:20Z"


def test_warnings_7_days_and_1_day_before_once_each_then_the_end(panel, vast, clock):
    ends = clock.now() + 8 * DAY
    vast.set(end_date=ends)
    for _ in range(3):
        read(panel)
        clock.advance(6 * 3600)
    assert events(panel, "contract_ending") == []  # more than 7 days ahead
    clock.advance(ends - 7 * DAY - clock.now())
    for _ in range(4):
        read(panel)
        clock.advance(3600)
    (week,) = events(panel, "contract_ending")
    assert week.meta["days_before"] == 7 and week.meta["ends_at"] == "2023-11-22T22:13:20Z"
    assert week.meta["days_left"] == pytest.approx(7.0)
    clock.advance(ends - DAY + 60 - clock.now())
    read(panel)
    read(panel)
    day = events(panel, "contract_ending")[1]
    assert day.meta["days_before"] == 1 and len(events(panel, "contract_ending")) == 2
    assert "ends at 2023-11-22T22:13:20Z (1.0 days left)" in message_for(day)
    clock.advance(DAY)
    read(panel)
    read(panel)
    (ended,) = events(panel, "contract_ended")
    assert ended.meta["deletable_from"] == "2023-11-24T22:13:20Z"
    assert "cannot start again" in message_for(ended)


def test_a_panel_started_hours_before_the_end_warns_once(panel, vast, clock):
    vast.set(end_date=clock.now() + 12 * 3600)
    read(panel)
    read(panel)
    (only,) = events(panel, "contract_ending")
    assert only.meta["days_before"] == 1


def test_a_later_end_date_is_warned_of_again(panel, vast, clock):
    vast.set(end_date=clock.now() + 3 * DAY)
    read(panel)
    vast.set(end_date=clock.now() + 5 * DAY)  # the host extended the contract
    read(panel)
    assert [e.meta["days_before"] for e in events(panel, "contract_ending")] == [7, 7]


def test_a_start_after_the_end_is_refused_by_the_panel_with_the_reason(client, panel, vast, clock):
    vast.set(end_date=clock.now() - 3600)
    answer = client.post("/infra/vast/power/on", json={"wait_for_health": False})
    assert answer.status_code == 409
    detail = answer.json["detail"]
    assert detail.startswith("The instance's contract ended on 2023-11-14 21:13 UTC; vast.ai")
    assert "may delete it 48 h later" in detail
    assert vast.puts == []  # vast.ai was not asked
    (failed,) = events(panel, "power_on_failed")
    assert failed.actor == "api" and failed.meta["error"] == detail
    assert events(panel, "contract_ended") != []


def test_the_page_shows_the_end_within_a_week_and_disables_start_once_ended(app, vast, clock):
    admin = signed_in_client(app)
    vast.set(end_date=clock.now() + 8 * DAY)
    html = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert "data-contract" not in html
    clock.advance(2 * DAY)
    html = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert 'data-contract="ending"' in html and "(in 6.0 days)" in html
    assert "may delete it 48 h later" in html
    clock.advance(6 * DAY)
    html = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert 'data-contract="ended"' in html and "contract ended on" in html
    assert 'value="start" disabled' in html


def test_v1_answers_503_in_openai_shape_and_starts_nothing(tmp_path, clock, vast):
    config = base_config(tmp_path, LLM_API_KEYS=LLM_KEY, VAST_PROXY_WAIT_S="30")
    app = create_app(config_from(config), clock=clock)
    panel = app.extensions["vastpanel"]
    vast.set(end_date=clock.now() - 60)
    client = app.test_client()
    for _ in range(3):
        answer = client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": []},
            headers={"Authorization": f"Bearer {LLM_KEY}"},
        )
        assert answer.status_code == 503
        error = answer.json["error"]
        assert error["code"] == "contract_ended" and error["type"] == "server_error"
        assert error["message"].startswith("The instance's contract ended on")
        assert "may delete it 48 h later" in error["message"]
        assert int(answer.headers["Retry-After"]) >= 60
        clock.advance(10)
    assert vast.puts == [] and events(panel, "power_on_requested") == []
    watchdog = watchdog_for(panel)
    for _ in range(3):  # nor does the watchdog try anything
        clock.advance(60)
        watchdog.look()
    assert vast.puts == []
    panel.store.close()
