"""The simulator bills as vast.ai does and serves /api/v0/charges/ in its shape, over real HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import requests

from vastpanel.simulator import Hardware, ManualClock, Simulator

KEY = "billing-key-0123"
IID = 5150
MIDNIGHT = datetime(2024, 5, 1, tzinfo=UTC).timestamp()
GPU_DPH = 0.5
STORAGE_DPH = 0.3 * 120 / 720  # storage_cost x disk_space / 720 = $0.05/h


@pytest.fixture
def clock():
    return ManualClock(start=MIDNIGHT)


@pytest.fixture
def sim(clock):
    with Simulator(
        api_key=KEY,
        instance_id=IID,
        rate_limit={},  # these tests call the simulator's API directly, back to back
        clock=clock,
        wall_clock=clock,
        schedule_delay=0,
        load_delay=0,
        warm_delay=0,
        hardware=Hardware(dph_base=GPU_DPH, storage_cost=0.3, disk_space=120),
    ) as simulator:
        yield simulator


def charges(sim, http, gte=MIDNIGHT - 86400, lte=MIDNIGHT + 10 * 86400, **params):
    filters = {"day": {"gte": gte, "lte": lte}, "type": {"in": ["instance"]}}
    return http.get(
        f"{sim.url}/api/v0/charges/", params={"select_filters": json.dumps(filters), **params}
    )


def put_state(sim, http, state):
    answer = http.put(f"{sim.url}/api/v0/instances/{IID}/", json={"state": state})
    assert answer.status_code == 200


def test_gpu_while_running_storage_always_in_day_rows_of_the_real_shape(sim, http, clock):
    clock.advance(3600)  # stopped: storage only
    put_state(sim, http, "running")
    clock.advance(2 * 3600)
    put_state(sim, http, "stopped")
    clock.advance(22 * 3600)  # into the next day
    body = charges(sim, http).json()
    assert body["success"] is True and body["total"] == 2 and body["next_token"] is None
    first, second = body["results"]
    assert first["source"] == f"instance-{IID}" and first["type"] == "instance"
    assert (first["start"], first["end"]) == (MIDNIGHT, MIDNIGHT + 86400)
    items = {i["type"]: i["amount"] for i in first["items"]}
    assert items["gpu"] == pytest.approx(2 * GPU_DPH)
    assert items["disk"] == pytest.approx(24 * STORAGE_DPH)
    assert first["amount"] == pytest.approx(sum(items.values()))
    assert all(set(i) == {"type", "amount", "description"} for i in first["items"])
    assert {i["type"]: i["amount"] for i in second["items"]} == pytest.approx(
        {"gpu": 0.0, "disk": 1 * STORAGE_DPH}
    )
    assert second["end"] == MIDNIGHT + 25 * 3600  # billed up to now


def test_pages_follow_next_token_and_the_day_filter_selects(sim, http, clock):
    clock.advance(3 * 86400 + 60)
    pages, token = [], None
    while True:
        extra = {"after_token": token} if token else {}
        body = charges(sim, http, limit=2, **extra).json()
        pages.append([row["start"] for row in body["results"]])
        token = body["next_token"]
        if token is None:
            break
    assert [len(p) for p in pages] == [2, 2]
    assert sorted(sum(pages, [])) == [MIDNIGHT + i * 86400 for i in range(4)]
    one_day = charges(sim, http, gte=MIDNIGHT + 86400, lte=MIDNIGHT + 2 * 86400 - 1).json()
    assert [r["start"] for r in one_day["results"]] == [MIDNIGHT + 86400]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"select_filters": "not json"},
        {"select_filters": json.dumps({"day": {"gte": 0}})},
        {
            "select_filters": json.dumps({"day": {"gte": 0, "lte": 1}, "type": {"in": []}}),
            "limit": 0,
        },
    ],
)
def test_charges_without_usable_filters_are_400_invalid_args(sim, http, params):
    answer = http.get(f"{sim.url}/api/v0/charges/", params=params)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_args"


def test_it_can_bill_differently_and_refuse_without_billing_read(sim, http, clock):
    put_state(sim, http, "running")
    clock.advance(3600)
    assert requests.post(f"{sim.url}/_sim/billing", json={"factor": {"gpu": 2}}).ok
    clock.advance(3600)
    items = {i["type"]: i["amount"] for i in charges(sim, http).json()["results"][0]["items"]}
    assert items["gpu"] == pytest.approx(GPU_DPH * 3)  # the second hour billed double
    assert requests.post(f"{sim.url}/_sim/billing", json={"factor": {"cpu": 1}}).status_code == 400
    sim.set_billing(billing_read=False)
    refused = charges(sim, http)
    assert refused.status_code == 403 and "billing_read" in refused.json()["msg"]


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
    items = {i["type"]: i["amount"] for i in charges(sim, http).json()["results"][0]["items"]}
    assert items["bwd"] == pytest.approx(3 * 0.005 * len(answer.request.body) / 1e9, rel=0.01)
    assert items["bwu"] == pytest.approx(3 * 0.01 * len(answer.content) / 1e9, rel=0.01)


def test_a_vanished_instance_bills_nothing_more(sim, http, clock):
    clock.advance(3600)
    sim.external("vanish")
    clock.advance(3600)
    assert sim.charges()["days"]["2024-05-01"]["disk"] == pytest.approx(STORAGE_DPH)
