"""The simulator bills as vast.ai does and answers /api/v0/charges/ per contract, over real HTTP.

The shape is vast-ai/docs api-reference/openapi/yaml/show_charges.yaml: one row per contract
(one instance from creation until destroyed), with items per type, each with its own window.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
import requests

from vastpanel.simulator import Hardware, ManualClock, Simulator

KEY = "billing-key-0123"
IID = 5150
MIDNIGHT = datetime(2024, 5, 1, tzinfo=UTC).timestamp()
DAY = 86400
GPU_DPH = 0.5
STORAGE_DPH = 0.3 * 120 / 720  # storage_cost x disk_space / 720 = $0.05/h while running
STOPPED_DPH = STORAGE_DPH * 1.5  # vast.ai: storage "typically higher for stopped instances"
ROW_KEYS = {"start", "end", "type", "source", "description", "amount", "metadata", "items"}
ITEM_KEYS = {"start", "end", "type", "source", "description", "amount", "metadata", "items"}


def hardware(**overrides) -> Hardware:
    return Hardware(
        **{"dph_base": GPU_DPH, "storage_cost": 0.3, "disk_space": 120, "age_seconds": 0}
        | overrides
    )


@pytest.fixture
def clock():
    return ManualClock(start=MIDNIGHT)


def simulator(clock, **options) -> Simulator:
    settings = {
        "api_key": KEY,
        "instance_id": IID,
        "rate_limit": {},  # these tests call the simulator's API directly, back to back
        "clock": clock,
        "wall_clock": clock,
        "schedule_delay": 0,
        "load_delay": 0,
        "warm_delay": 0,
        "hardware": hardware(),
    }
    return Simulator(**(settings | options))


@pytest.fixture
def sim(clock):
    with simulator(clock) as simulator_:
        yield simulator_


def charges(sim, session, gte=MIDNIGHT - DAY, lte=MIDNIGHT + 10 * DAY, **params):
    filters = {"day": {"gte": gte, "lte": lte}, "type": {"in": ["instance"]}}
    return session.get(
        f"{sim.url}/api/v0/charges/", params={"select_filters": json.dumps(filters), **params}
    )


def only_row(sim, session, **kwargs) -> dict:
    answer = charges(sim, session, **kwargs)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["success"], body["count"], body["total"], body["next_token"]) == (
        True,
        1,
        1,
        None,
    )
    return body["results"][0]


def items(row) -> dict[str, dict]:
    return {item["type"]: item for item in row["items"]}


def put_state(sim, session, state):
    answer = session.put(f"{sim.url}/api/v0/instances/{IID}/", json={"state": state})
    assert answer.status_code == 200, answer.text


def run_a_session(sim, http, clock):
    """1 h stopped, 2 h running, then stopped for 22 h: into the next UTC day."""
    clock.advance(3600)
    put_state(sim, http, "running")
    clock.advance(2 * 3600)
    put_state(sim, http, "stopped")
    clock.advance(22 * 3600)


# --- one row per contract, in the documented shape ---


def test_a_session_over_two_days_is_one_row_with_items_per_type(sim, http, clock):
    run_a_session(sim, http, clock)
    row = only_row(sim, http)
    assert set(row) == ROW_KEYS
    assert (row["start"], row["end"]) == (MIDNIGHT, MIDNIGHT + 25 * 3600)
    assert (row["type"], row["source"]) == ("instance", f"instance-{IID}")
    assert row["description"] == f"Instance {IID} Charges - 2 days"
    assert row["metadata"] == {"label": "vastpanel-sim"}
    gpu, disk = items(row)["gpu"], items(row)["disk"]
    assert all(set(item) == ITEM_KEYS for item in row["items"])
    assert (gpu["start"], gpu["end"]) == (MIDNIGHT + 3600, MIDNIGHT + 3 * 3600)
    assert gpu["amount"] == pytest.approx(2 * GPU_DPH)
    assert gpu["description"] == "2.000 hours at $0.500/hour"
    assert (gpu["source"], gpu["metadata"], gpu["items"]) == (None, {}, [])
    assert (disk["start"], disk["end"]) == (MIDNIGHT, MIDNIGHT + 25 * 3600)
    # Each interval at the rate then in force: 2 h running, 23 h stopped.
    assert disk["amount"] == pytest.approx(2 * STORAGE_DPH + 23 * STOPPED_DPH)
    assert disk["description"].startswith("25.000 hours at $")
    assert row["amount"] == round(gpu["amount"] + disk["amount"], 3)
    assert isinstance(row["start"], int) and isinstance(gpu["end"], int)


def test_the_row_carries_the_whole_contract_whatever_the_range(sim, http, clock):
    run_a_session(sim, http, clock)
    whole = only_row(sim, http)
    second_day = only_row(sim, http, gte=MIDNIGHT + DAY, lte=MIDNIGHT + 2 * DAY - 1)
    assert second_day == whole  # vast.ai does not document clipping: by default none
    before = charges(sim, http, gte=MIDNIGHT - 3 * DAY, lte=MIDNIGHT - DAY).json()
    assert (before["total"], before["results"]) == (0, [])


@pytest.mark.parametrize("how", ["control route", "constructor"])
def test_the_other_reading_clips_amounts_and_item_windows_to_the_range(clock, how):
    options = {"clip_charges_to_range": True} if how == "constructor" else {}
    with simulator(clock, **options) as sim, requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {KEY}"
        if how == "control route":
            answer = requests.post(f"{sim.url}/_sim/billing", json={"clip_to_range": True})
            assert answer.ok and answer.json()["billing"]["clip_to_range"] is True
        run_a_session(sim, http, clock)
        row = only_row(sim, http, gte=MIDNIGHT + DAY, lte=MIDNIGHT + 2 * DAY - 1)
    assert (row["start"], row["end"]) == (MIDNIGHT, MIDNIGHT + 25 * 3600)  # the contract's
    assert set(items(row)) == {"disk"}  # the GPU ran on the first day only
    disk = items(row)["disk"]
    assert (disk["start"], disk["end"]) == (MIDNIGHT + DAY, MIDNIGHT + 25 * 3600)
    assert disk["amount"] == pytest.approx(1 * STOPPED_DPH)
    assert row["amount"] == round(STOPPED_DPH, 3)


def test_time_before_the_simulator_started_is_billed_in_the_initial_state(clock):
    with simulator(clock, hardware=hardware(age_seconds=2 * DAY)) as sim:
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {KEY}"
            clock.advance(3600)
            row = only_row(sim, http)
    assert sim.instance()["start_date"] == MIDNIGHT - 2 * DAY
    assert (row["start"], row["end"]) == (MIDNIGHT - 2 * DAY, MIDNIGHT + 3600)
    assert row["description"] == f"Instance {IID} Charges - 3 days"
    assert items(row)["disk"]["amount"] == pytest.approx(49 * STOPPED_DPH)


def test_latest_first_orders_and_pages_follow_the_token(sim, http, clock):
    clock.advance(3600)
    first = charges(sim, http, limit=1, latest_first="false").json()
    assert first["next_token"] is None and first["count"] == 1
    bad = charges(sim, http, after_token="not-a-token")
    assert bad.status_code == 400
    assert bad.json() == {
        "success": False,
        "error": "invalid_token",
        "msg": "Invalid pagination token",
    }
    token = base64.b64encode(json.dumps({"values": {"offset": 5}}).encode()).decode()
    beyond = charges(sim, http, limit=500, after_token=token)
    assert beyond.json()["results"] == [] and beyond.json()["total"] == 1
    assert charges(sim, http, limit=5000).status_code == 200  # served as the maximum, 500


# --- errors, as documented ---


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"select_filters": "not json"},
        {"select_filters": json.dumps({"day": {"gte": 0}})},
        {"select_filters": json.dumps({"type": {"in": ["instance"]}})},
    ],
)
def test_charges_without_the_day_range_are_400(sim, http, params):
    answer = http.get(f"{sim.url}/api/v0/charges/", params=params)
    assert answer.status_code == 400
    assert answer.json() == {
        "success": False,
        "msg": "Must provide both 'day' gte and lte filters for instance charges",
    }


@pytest.mark.parametrize("limit", ["0", "-3", "ten"])
def test_a_limit_that_is_not_a_positive_number_is_400(sim, http, limit):
    answer = charges(sim, http, limit=limit)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_args"


def test_no_key_is_403_and_an_unknown_key_404_auth_error(sim):
    url = f"{sim.url}/api/v0/charges/"
    filters = {"select_filters": json.dumps({"day": {"gte": 0, "lte": 1}})}
    missing = requests.get(url, params=filters, timeout=5)
    assert missing.status_code == 403
    assert missing.json() == {
        "success": False,
        "error": "auth_error",
        "msg": "This action requires login.",
    }
    unknown = requests.get(url, params=filters, headers={"Authorization": "Bearer nope"})
    assert unknown.status_code == 404
    assert unknown.json() == {"success": False, "error": "auth_error", "msg": "Invalid user key"}


def test_429_here_is_json_with_retry_after_from_a_fault_and_from_the_limiter(clock):
    with simulator(clock, rate_limit={"GET": 2.0, "PUT": 1.0}) as sim:
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {KEY}"
            sim.add_fault("rate_limit", path="/charges/")
            show = http.get(f"{sim.url}/api/v0/instances/{IID}/")
            assert show.status_code == 200  # the fault is for the charges only
            faulted = charges(sim, http)
            assert faulted.status_code == 429 and faulted.headers["Retry-After"] == "1"
            expected = {"error": "HTTPTooManyRequests", "msg": "API requests too frequent"}
            assert faulted.json() == expected | {"retry_after": 1}
            assert charges(sim, http).status_code == 200
            limited = charges(sim, http)  # 1.0 s for this endpoint (its x-rate-limit)
            assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
            assert limited.json() == expected | {"retry_after": 1}
            clock.advance(1.0)
            assert charges(sim, http).status_code == 200


def test_without_billing_read_the_charges_are_403(sim, http):
    assert requests.post(f"{sim.url}/_sim/billing", json={"billing_read": False}).ok
    refused = charges(sim, http)
    assert refused.status_code == 403 and "billing_read" in refused.json()["msg"]


# --- what is billed ---


def test_it_can_bill_differently_from_now_on(sim, http, clock):
    put_state(sim, http, "running")
    clock.advance(3600)
    assert requests.post(f"{sim.url}/_sim/billing", json={"factor": {"gpu": 2}}).ok
    clock.advance(3600)
    assert items(only_row(sim, http))["gpu"]["amount"] == pytest.approx(GPU_DPH * 3)
    assert requests.post(f"{sim.url}/_sim/billing", json={"factor": {"cpu": 1}}).status_code == 400
    bad = requests.post(f"{sim.url}/_sim/billing", json={"stopped_storage_factor": 0.5})
    assert bad.status_code == 400


def test_storage_costs_more_while_stopped_and_show_instance_says_so(sim, http, clock):
    stopped = http.get(f"{sim.url}/api/v0/instances/{IID}/").json()["instances"]
    assert stopped["storage_total_cost"] == pytest.approx(STOPPED_DPH)
    assert stopped["dph_total"] == pytest.approx(GPU_DPH + STOPPED_DPH)
    put_state(sim, http, "running")
    running = http.get(f"{sim.url}/api/v0/instances/{IID}/").json()["instances"]
    assert running["storage_total_cost"] == pytest.approx(STORAGE_DPH)
    assert running["dph_total"] == pytest.approx(GPU_DPH + STORAGE_DPH)
    clock.advance(3600)
    put_state(sim, http, "stopped")
    assert requests.post(f"{sim.url}/_sim/billing", json={"stopped_storage_factor": 1.0}).ok
    clock.advance(3600)
    off = http.get(f"{sim.url}/api/v0/instances/{IID}/").json()["instances"]
    assert off["storage_total_cost"] == pytest.approx(STORAGE_DPH)
    assert items(only_row(sim, http))["disk"]["amount"] == pytest.approx(2 * STORAGE_DPH)


def test_frozen_bills_gpu_time_and_offline_bills_nothing(sim, http, clock):
    put_state(sim, http, "running")
    clock.advance(3600)
    sim.external("frozen")
    clock.advance(3600)  # GPU billed: "frozen ... GPU charges apply"
    sim.external("offline")
    clock.advance(3600)  # nothing billed while the host is offline
    sim.external("recover")
    row = only_row(sim, http)
    assert items(row)["gpu"]["amount"] == pytest.approx(2 * GPU_DPH)
    assert items(row)["disk"]["amount"] == pytest.approx(2 * STORAGE_DPH)


def test_llm_traffic_is_billed_as_bandwidth(sim, http, clock):
    put_state(sim, http, "running")
    clock.advance(60)
    for _ in range(3):
        answer = requests.post(
            f"{sim.llm_url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi " * 1000}]},
            timeout=5,
        )
        assert answer.ok
    row = only_row(sim, http)
    bwd, bwu = items(row)["bwd"], items(row)["bwu"]
    assert bwd["amount"] == pytest.approx(3 * 0.005 * len(answer.request.body) / 1e9, rel=0.01)
    assert bwu["amount"] == pytest.approx(3 * 0.01 * len(answer.content) / 1e9, rel=0.01)
    assert bwd["description"].endswith(" GB at $0.005/GB")


def test_a_vanished_instance_bills_nothing_more(sim, http, clock):
    clock.advance(3600)
    sim.external("vanish")
    clock.advance(3600)
    assert sim.charges()["days"]["2024-05-01"]["disk"] == pytest.approx(STOPPED_DPH)
