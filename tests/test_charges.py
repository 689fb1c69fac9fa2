"""vast.ai's charges per contract, compared like with like (vast.ai faked with `responses`).

`GET /api/v0/charges/` answers one row per contract, each item with its own window
(vast-ai/docs api-reference/openapi/yaml/show_charges.yaml). The FakeClock starts at
2023-11-14 22:13:20 UTC; the recorded instance was created at 19:26:40 that day.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest

from conftest import base_config, config_from
from support.page import HTMX, signed_in_client
from vastpanel import create_app
from vastpanel.domain.charges import ChargesUnreadable, charge_windows, reading_of, span_text
from vastpanel.storage.ledger import CONTRACT, BilledWindow

STORAGE_DPH = 0.05  # the fixtures' storage_total_cost
HOUR, DAY = 3600.0, 86400.0
SOURCE = "instance-4242"


def midnight(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def item(kind: str, start: float, end: float, amount: float) -> dict:
    return {"start": start, "end": end, "type": kind, "amount": amount, "description": kind}


def contract(start: float, end: float, *items: dict, source: str = SOURCE) -> dict:
    """A row in show_charges.yaml's shape: the contract's window, its total and its items."""
    return {
        "start": start,
        "end": end,
        "type": "instance",
        "source": source,
        "description": "Instance 4242 Charges",
        "amount": round(sum(i["amount"] for i in items), 3),
        "metadata": {},
        "items": list(items),
    }


def serve(vast, *pages: list[dict]) -> list[dict]:
    """Answer the charges endpoint page by page; return the queries it was asked."""
    vast.charges = [(200, {"success": True, "results": rows}) for rows in pages]
    return vast.charges_asked


def read(panel):
    return panel.instance.state(fresh=True)


def watch_stopped(panel, clock, hours: float, every: float = 6 * HOUR) -> tuple[float, float]:
    """Read the (stopped) instance for `hours`; return (first reading, last reading)."""
    first = clock.now()
    read(panel)
    left = hours * HOUR
    while left > 0:
        step = min(every, left)
        clock.advance(step)
        left -= step
        read(panel)
    return first, clock.now()


def events(panel, name: str) -> list:
    return [e for e in reversed(panel.audit.entries(1000)) if e.event == name]


# --- plain functions ---------------------------------------------------------------------------


def test_rows_and_items_become_windows_of_this_instance_only():
    rows = [
        contract(
            100.0,
            900.0,
            item("gpu", 200.0, 500.0, 1.0),
            item("gpu", 200.0, 500.0, 0.5),  # the same item split by rate: one window
            {"type": "disk", "amount": 0.25},  # no window of its own: the row's
            item("bwu", 800.0, 800.0, 0.01),
        ),
        contract(0.0, 50.0, item("gpu", 0.0, 50.0, 9.0), source="instance-1"),
        contract(0.0, 50.0, item("disk", 0.0, 50.0, 9.0)) | {"type": "volume"},
    ]
    windows = charge_windows(rows, 4242)
    assert [(w.kind, w.start, w.end, w.amount) for w in windows] == [
        (CONTRACT, 100.0, 900.0, 1.76),
        ("gpu", 200.0, 500.0, 1.5),
        ("disk", 100.0, 900.0, 0.25),
        ("bwu", 800.0, 800.0, 0.01),
    ]


@pytest.mark.parametrize(
    "row",
    [
        "nope",
        {"source": SOURCE, "start": "x", "end": 1},
        {"source": SOURCE, "start": 5, "end": 1},
        {"source": SOURCE, "start": 1, "end": 5, "items": "x"},
        {"source": SOURCE, "start": 1, "end": 5, "items": [{"type": "gpu", "amount": "1"}]},
        {"source": SOURCE, "start": 1, "end": 5, "items": [{"amount": 1}]},
    ],
)
def test_rows_in_another_shape_are_unreadable(row):
    with pytest.raises(ChargesUnreadable):
        charge_windows([row], 4242)


def window(start: float, end: float, amount: float) -> BilledWindow:
    return BilledWindow(SOURCE, CONTRACT, start, end, amount)


@pytest.mark.parametrize(
    ("probe", "reading"),
    [
        (window(100.0, 1000.0, 9.0), "whole"),  # today's question got the whole contract
        (window(500.0, 1000.0, 4.0), "clipped"),  # amount and window cut to the range
        (window(100.0, 1000.0, 4.0), "clipped_amounts_only"),  # amount cut, window not
    ],
)
def test_the_probe_tells_what_vast_ai_does_with_the_day_range(probe, reading):
    assert reading_of([window(100.0, 1000.0, 9.0)], [probe], since=500.0) == reading


def test_the_probe_cannot_tell_for_a_contract_that_began_within_its_range():
    assert reading_of([window(600.0, 1000.0, 9.0)], [window(600.0, 1000.0, 9.0)], 500.0) is None
    assert reading_of([window(100.0, 1000.0, 9.0)], [], 500.0) is None


def test_windows_are_written_as_people_write_days():
    nov1 = midnight(date(2024, 11, 1))
    assert span_text(nov1, nov1 + 4 * DAY) == "Nov 1\u20134"  # ends at midnight: Nov 4's end
    assert span_text(nov1 + HOUR, nov1 + 2 * HOUR) == "Nov 1"
    assert span_text(nov1 - DAY, nov1 + DAY) == "Oct 31\u2013Nov 1"


# --- reading vast.ai's charges ------------------------------------------------------------------


def test_charges_are_asked_from_the_contract_s_first_day_page_by_page(panel, vast, clock, client):
    vast.set(start_date=clock.now() - 40 * DAY)  # created 40 days ago
    read(panel)
    now = clock.now()
    row = contract(
        now - 40 * DAY, now, item("disk", now - 40 * DAY, now, 48.0), item("bwd", now, now, 0.02)
    )
    asked = serve(vast, [row], [contract(0.0, 9.0, item("gpu", 0.0, 9.0, 9.0), source="x")])
    slept = len(clock.slept)
    status = panel.costs.read_charges()
    assert status.error is None and status.read_at == now
    assert len(asked) == 4  # two pages, then today alone (the fake pages that the same way)
    filters = [json.loads(q["select_filters"]) for q in asked]
    assert filters[0]["day"] == {"gte": midnight(date(2023, 10, 5)), "lte": int(now)}
    assert filters[0]["type"] == {"in": ["instance"]} and asked[1]["after_token"] == "1"
    assert filters[2]["day"]["gte"] == midnight(date(2023, 11, 14))  # the probe: today
    assert clock.slept[slept:] == [2.0, 2.0, 2.0]  # vast.ai's interval before each later call
    assert status.reading == "whole"  # the probe was answered the whole contract again
    body = client.get("/infra/vast/costs").json
    (only,) = body["contracts"]
    assert only["source"] == SOURCE and only["billed_usd"] == 48.02
    assert [i["type"] for i in only["items"]] == ["disk", "bwd"]
    assert only["comparable"] is False and only["estimate_usd"] is None  # before the ledger
    assert "not comparable: it begins before the panel's own records" in only["summary"]
    assert body["bandwidth_cost_usd"] == pytest.approx(0.02)
    assert body["charges"] == {
        "read_at": "2023-11-14T22:13:20Z",
        "error": None,
        "reading": "whole",
    }
    assert all(day["billed"] is None for day in body["days"])  # 40 days are never one day


def test_a_contract_spanning_days_is_compared_over_its_own_window_and_shown_once(
    app, panel, vast, clock, client
):
    vast.set(start_date=clock.now())  # a new instance: the panel reads it from its start
    first, last = watch_stopped(panel, clock, 3 * 24 + 1.5)
    estimate = (last - first) / HOUR * STORAGE_DPH
    serve(vast, [contract(first, last, item("disk", first, last, round(estimate * 1.004, 3)))])
    panel.costs.read_charges()
    body = client.get("/infra/vast/costs").json
    (only,) = body["contracts"]
    assert only["estimate_usd"] == pytest.approx(estimate)
    assert only["difference_pct"] == pytest.approx(-0.4, abs=0.01)
    assert only["comparable"] is True and only["mismatch"] is False
    assert only["summary"] == (
        "vast.ai billed $3.69 for Nov 14\u201317; estimate $3.68, \u22120.4 %"
    )
    assert only["items"][0]["estimate_usd"] == pytest.approx(estimate)
    assert all(day["billed"] is None for day in body["days"])  # never pinned on a day
    html = signed_in_client(app).get("/partials/costs", headers=HTMX)
    assert "vast.ai billed $3.69 for Nov 14\u201317; estimate $3.68, \u22120.4 %" in html.text
    assert "storage $3.69 (Nov 14\u201317; estimate $3.68)" in html.text
    assert '<rect class="billed' not in html.text  # no day of the chart carries the bill


def test_a_contract_off_by_more_than_1_percent_is_flagged_and_audited_once(panel, vast, clock):
    vast.set(start_date=clock.now())
    first, last = watch_stopped(panel, clock, 50)
    estimate = (last - first) / HOUR * STORAGE_DPH
    row = contract(first, last, item("disk", first, last, round(estimate * 1.05, 3)))
    serve(vast, [row])
    panel.costs.read_charges()
    panel.costs.read_charges()
    (check,) = panel.costs.contract_checks()
    assert check.mismatch and check.row.difference_pct == pytest.approx(-100 * 0.05 / 1.05, 0.01)
    (entry,) = events(panel, "cost_mismatch")
    assert entry.meta["window_start"] == "2023-11-14T22:13:20Z"
    assert entry.meta["window_end"] == "2023-11-17T00:13:20Z"
    assert entry.meta["billed_usd"] == row["amount"]
    assert entry.meta["estimate_usd"] == pytest.approx(estimate)
    assert entry.meta["billed_disk_usd"] == row["amount"]
    assert entry.meta["estimate_storage_usd"] == pytest.approx(estimate)
    # The contract goes on; the next read of the same window says nothing new.
    clock.advance(HOUR)
    read(panel)
    now = clock.now()
    estimate = (now - first) / HOUR * STORAGE_DPH
    serve(vast, [contract(first, now, item("disk", first, now, round(estimate * 1.05, 3)))])
    panel.costs.read_charges()
    assert len(events(panel, "cost_mismatch")) == 1


def test_items_that_swap_dollars_are_flagged_though_the_total_agrees(panel, vast, clock):
    vast.set(start_date=clock.now(), actual_status="running", intended_status="running")
    first, last = watch_stopped(panel, clock, 10, every=HOUR)
    gpu, storage = 10 * 0.4, 10 * STORAGE_DPH
    serve(
        vast,
        [
            contract(
                first,
                last,
                item("gpu", first, last, gpu + 0.3),
                item("disk", first, last, storage - 0.3),
            )
        ],
    )
    panel.costs.read_charges()
    (check,) = panel.costs.contract_checks()
    assert check.row.difference_pct == pytest.approx(0.0, abs=1e-6) and check.mismatch


def test_a_contract_within_one_day_shows_on_that_day(panel, vast, clock, client):
    vast.set(start_date=clock.now())
    read(panel)
    clock.advance(2 * DAY)
    read(panel)
    day = date(2023, 11, 15)
    start, end = midnight(day) + 2 * HOUR, midnight(day) + 5 * HOUR
    serve(vast, [contract(start, end, item("disk", start, end, 0.15), item("bwu", end, end, 0.1))])
    panel.costs.read_charges()
    days = {d["day"]: d for d in client.get("/infra/vast/costs").json["days"]}
    assert days["2023-11-15"]["billed"] == {
        "gpu": 0.0,
        "disk": 0.15,
        "bandwidth": 0.1,
        "total": 0.25,
    }
    assert days["2023-11-15"]["difference_pct"] == pytest.approx(0.0)
    assert days["2023-11-16"]["billed"] is None


# --- vast.ai refusing or failing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("answers", "says"),
    [
        ([(404, {"success": False, "error": "auth_error", "msg": "Invalid user key"})],
         "does not know VAST_API_KEY (404 Invalid user key)"),
        ([(403, {"success": False, "error": "auth_error", "msg": "This action requires login."})],
         "billing_read permission, or the Authorization header did not reach vast.ai"),
        ([(400, {"success": False,
                 "msg": "Must provide both 'day' gte and lte filters for instance charges"})],
         "Must provide both 'day' gte and lte filters"),
        ([(200, {"success": True, "results": []}),
          (400, {"success": False, "error": "invalid_token", "msg": "Invalid pagination token"})],
         "invalid_token - Invalid pagination token"),
        ([(502, "<html>Bad gateway</html>")] * 3, "could not be read (vast.ai is failing (502))"),
        ([(200, {"results": "nope"})], "could not be read"),
        ([(200, {"results": [{"source": SOURCE, "start": "x"}]})], "could not be read"),
    ],
)  # fmt: skip
def test_documented_errors_give_a_clear_state_and_lose_nothing(
    app, panel, vast, clock, client, answers, says
):
    stored = contract(1.0, 2.0, item("disk", 1.0, 2.0, 0.5))
    serve(vast, [stored])
    panel.costs.read_charges()

    def charges(query):
        status, body = answers.pop(0) if len(answers) > 1 else answers[0]
        text = body if isinstance(body, str) else json.dumps(body)
        if isinstance(body, dict) and "results" in body:  # a first page, with a next one
            text = json.dumps({**body, "next_token": "1"})
        return status, {}, text

    vast.charges = charges
    clock.advance(HOUR)
    status = panel.costs.read_charges()
    assert says in status.error and "estimates only" in status.error
    answer = client.get("/infra/vast/costs")
    assert answer.status_code == 200
    assert says in answer.json["charges"]["error"]
    assert [c["billed_usd"] for c in answer.json["contracts"]] == [0.5]  # kept from before
    html = signed_in_client(app).get("/partials/costs", headers=HTMX)
    assert html.status_code == 200 and "Estimates only:" in html.text


def test_a_429_with_its_documented_json_body_is_waited_out_then_read(panel, vast, clock):
    answers = [
        (429, {"Retry-After": "1"}, {"error": "HTTPTooManyRequests", "retry_after": 1}),
        (429, {}, {"error": "HTTPTooManyRequests", "msg": "too frequent", "retry_after": 3}),
    ]

    def charges(query):
        if answers:
            status, headers, body = answers.pop(0)
            return status, headers, json.dumps(body)
        return 200, {}, json.dumps({"success": True, "results": []})

    vast.charges = charges
    slept = len(clock.slept)
    assert panel.costs.read_charges().error is None
    assert clock.slept[slept:] == [1.0, 3.0]  # the header, then the body's retry_after


def test_a_429_that_keeps_coming_says_so(panel, vast, clock):
    def charges(query):
        body = {"error": "HTTPTooManyRequests", "msg": "too frequent", "retry_after": 1}
        return 429, {"Retry-After": "1"}, json.dumps(body)

    vast.charges = charges
    status = panel.costs.read_charges()
    assert "rate limiting its charges" in status.error


# --- the budget never counts a bill twice -------------------------------------------------------


@pytest.mark.parametrize(("billed_share", "spent_share"), [(1.25, 1.25), (0.8, 1.0)])
def test_a_ten_day_contract_counts_once_in_the_month_s_budget(
    tmp_path, clock, vast, billed_share, spent_share
):
    config = base_config(tmp_path, VAST_BUDGET_USD="100", VAST_BUDGET_PERIOD="month")
    app = create_app(config_from(config), clock=clock)
    panel = app.extensions["vastpanel"]
    clock.advance(midnight(date(2023, 11, 15)) - clock.now())
    vast.set(start_date=clock.now())
    first, last = watch_stopped(panel, clock, 10 * 24)  # Nov 15-24, estimates on each day
    estimate = 10 * 24 * STORAGE_DPH
    assert panel.budget.status().spent_usd == pytest.approx(estimate)
    billed = round(estimate * billed_share, 3)
    serve(vast, [contract(first, last, item("disk", first, last, billed))])
    panel.costs.read_charges()
    # One of the two figures for those ten days, never their sum.
    assert panel.budget.status().spent_usd == pytest.approx(estimate * spent_share, abs=0.001)
    clock.advance(DAY)  # a day past the contract's window: its estimate adds on
    read(panel)
    assert panel.budget.status().spent_usd == pytest.approx(
        estimate * spent_share + 24 * STORAGE_DPH, abs=0.001
    )
    panel.store.close()
