"""The simulated market over real HTTP: searching offers, other renters taking a machine's GPU.

Shapes and rules: vast-ai/docs api-reference/openapi/yaml/search_offers.yaml; the stuck start
is vast.ai's "scheduling" (resources_unavailable, then queued until the GPU is free).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from vastpanel.simulator import Machine, ManualClock, Simulator

KEY = "market-key-0123"
IID = 4100
FIRST_MACHINE = 13542
DEFAULTS = {"verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True}}
OFFER_FIELDS = {
    "id",
    "ask_contract_id",
    "machine_id",
    "host_id",
    "gpu_name",
    "num_gpus",
    "gpu_ram",
    "dph_base",
    "dph_total",
    "storage_cost",
    "inet_up_cost",
    "inet_down_cost",
    "reliability",
    "reliability2",
    "verification",
    "rentable",
    "rented",
    "geolocation",
    "disk_space",
    "cuda_max_good",
    "direct_port_count",
    "end_date",
}


@pytest.fixture
def clock():
    return ManualClock()


def simulator(clock, **options) -> Simulator:
    settings = {
        "api_key": KEY,
        "instance_id": IID,
        "rate_limit": {},
        "clock": clock,
        "schedule_delay": 1,
        "load_delay": 2,
        "warm_delay": 0,
    }
    return Simulator(**(settings | options))


@pytest.fixture
def sim(clock):
    with simulator(clock) as simulator_:
        yield simulator_


def search(sim, query: dict | None = None, **kwargs) -> requests.Response:
    return requests.post(f"{sim.url}/api/v0/bundles/", json=query, timeout=5, **kwargs)


def offers(sim, query: dict | None = None) -> list[dict]:
    answer = search(sim, {**DEFAULTS, **(query or {})})
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"offers"}
    return answer.json()["offers"]


def machines(rows: list[dict]) -> list[int]:
    return [row["machine_id"] for row in rows]


def start(sim, http) -> requests.Response:
    return http.put(f"{sim.url}/api/v0/instances/{IID}/", json={"state": "running"})


def statuses(sim) -> tuple:
    row = sim.instance()
    return row["actual_status"], row["intended_status"]


# --- search ---


def test_search_needs_no_key_and_answers_the_documented_fields(sim):
    rows = offers(sim, {"order": [["dph_total", "asc"]], "allocated_storage": 72})
    # The unverified machine (Austin) is left out by verified eq true.
    assert machines(rows) == [24816, FIRST_MACHINE, 31337, 52525]
    assert all(OFFER_FIELDS <= set(row) for row in rows)
    lyon = rows[0]
    assert lyon["id"] == lyon["ask_contract_id"]
    assert (lyon["gpu_name"], lyon["geolocation"], lyon["verification"]) == (
        "RTX 3090",
        "Lyon, FR",
        "verified",
    )
    assert lyon["dph_total"] == pytest.approx(0.22 + 0.15 * 72 / 720)
    assert lyon["rentable"] is True and lyon["rented"] is False


@pytest.mark.parametrize(
    "query, expected",
    [
        ({"gpu_name": {"eq": "RTX 4090"}}, [52525]),
        ({"gpu_name": {"in": ["RTX_3090"]}}, [FIRST_MACHINE, 24816, 31337]),
        ({"gpu_name": {"neq": "RTX 3090"}}, [52525]),
        ({"num_gpus": {"gte": 2}}, []),
        ({"gpu_ram": {"gte": 24000}, "dph_total": {"lte": 0.26}}, [FIRST_MACHINE, 24816]),
        ({"reliability2": {"gt": 0.99}}, [FIRST_MACHINE, 24816, 52525]),
        ({"dph_base": {"lt": 0.25}}, [24816]),
        ({"geolocation": {"in": ["FR", "NO"]}}, [24816, 31337]),
        ({"geolocation": {"notin": ["PL", "CA"]}}, [24816, 31337]),
        ({"verified": {"eq": False}}, [40404]),
        ({"machine_id": {"eq": 31337}, "no_such_field": {"eq": 1}}, [31337]),
    ],
)
def test_filters_select_with_every_operator(sim, query, expected):
    rows = offers(sim, {**query, "order": [["machine_id", "asc"]]})
    assert sorted(machines(rows)) == sorted(expected)


def test_order_limit_type_and_the_server_defaults(sim):
    by_price = offers(sim, {"order": [["dph_total", "desc"]], "limit": 2})
    assert machines(by_price) == [52525, 31337]
    by_score = offers(sim)  # no order: score, best first, as the official client asks
    scores = [row["score"] for row in by_score]
    assert scores == sorted(scores, reverse=True)
    assert len(search(sim, {}).json()["offers"]) == 4  # verified and rentable by default
    bid = offers(sim, {"type": "bid", "machine_id": {"eq": 24816}})[0]
    assert bid["is_bid"] is True and bid["dph_total"] < 0.22
    assert len(search(sim, data="").json()["offers"]) == 4  # an empty body: the defaults


@pytest.mark.parametrize(
    "body",
    [
        {"gpu_name": "RTX 4090"},
        {"gpu_name": {"like": "RTX"}},
        {"num_gpus": {"gte": "two"}},
        {"gpu_name": {"in": "RTX 4090"}},
        {"order": "dph_total"},
        {"order": [["dph_total", "up"]]},
        {"limit": 0},
        {"type": "spot"},
        {"allocated_storage": -1},
        ["not", "an", "object"],
    ],
)
def test_a_bad_query_is_400_invalid_request(sim, body):
    answer = search(sim, body)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request" and answer.json()["msg"]


def test_a_body_that_is_not_json_is_400(sim):
    answer = search(sim, data="{nope", headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json()["msg"] == "Invalid json body"


def test_search_is_limited_to_about_ten_a_minute(clock):
    with simulator(clock, rate_limit={"GET": 2.0, "PUT": 1.0}) as sim:
        for _ in range(10):
            assert search(sim, {}).status_code == 200
        refused = search(sim, {})
        assert refused.status_code == 429 and "too frequent" in refused.text
        clock.advance(60)
        assert search(sim, {}).status_code == 200


# --- other renters ---


def test_a_taken_gpu_leaves_a_start_in_scheduling_until_it_is_freed(sim, http, clock):
    taken = requests.post(
        f"{sim.url}/_sim/market", json={"action": "take", "machine_id": FIRST_MACHINE}
    )
    assert taken.ok and taken.json()["machine"]["taken"] is True
    refused = start(sim, http)
    assert refused.status_code == 200
    assert refused.json() == {
        "success": False,
        "error": "resources_unavailable",
        "msg": "Required resources are currently unavailable, state change queued.",
    }
    clock.advance(3600)
    assert statuses(sim) == ("stopped", "running")  # scheduling, for as long as they keep it
    assert "unavailable" in sim.instance()["status_msg"]
    assert start(sim, http).json()["error"] == "resources_unavailable"
    (row,) = [o for o in offers(sim, {"rentable": {}}) if o["machine_id"] == FIRST_MACHINE]
    assert row["rented"] is True and row["rentable"] is False
    freed = requests.post(
        f"{sim.url}/_sim/market", json={"action": "free", "machine_id": FIRST_MACHINE}
    )
    assert freed.ok
    clock.advance(1)
    assert statuses(sim) == ("loading", "running")
    clock.advance(2)
    assert statuses(sim) == ("running", "running")


def test_a_stop_cancels_the_queued_start(sim, http, clock):
    sim.take_gpu()
    start(sim, http)
    assert http.put(f"{sim.url}/api/v0/instances/{IID}/", json={"state": "stopped"}).ok
    sim.free_gpu()
    clock.advance(3600)
    assert statuses(sim) == ("stopped", "stopped")


def test_a_running_instance_keeps_its_gpu_and_its_offer_is_rented(sim, http, clock):
    start(sim, http)
    clock.advance(3)
    (row,) = [o for o in offers(sim, {"rentable": {}}) if o["machine_id"] == FIRST_MACHINE]
    assert (row["rented"], row["rentable"]) == (True, False)
    assert FIRST_MACHINE not in machines(offers(sim))  # rentable eq true leaves it out
    sim.take_gpu()  # someone waits for it: they get it once it stops
    assert statuses(sim) == ("running", "running")
    http.put(f"{sim.url}/api/v0/instances/{IID}/", json={"state": "stopped"})
    assert start(sim, http).json()["error"] == "resources_unavailable"


def test_the_old_fault_kind_takes_the_first_machine(sim, http):
    sim.add_fault("resources_unavailable")
    assert start(sim, http).json()["error"] == "resources_unavailable"
    machine = requests.get(f"{sim.url}/_sim/market").json()["machines"][0]
    assert (machine["machine_id"], machine["taken"]) == (FIRST_MACHINE, True)
    assert sim.clear_faults() == 1
    assert requests.get(f"{sim.url}/_sim/market").json()["machines"][0]["taken"] is False


def test_constructor_and_command_line_start_with_the_gpu_taken(clock):
    with simulator(clock, gpu_taken=True) as sim, requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {KEY}"
        assert start(sim, http).json()["error"] == "resources_unavailable"
    command = [sys.executable, "-m", "vastpanel.simulator", "--port", "0", "--api-key", KEY]
    with subprocess.Popen(
        [*command, "--gpu-taken"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as process:
        try:
            url = process.stdout.readline().strip()
            market = requests.get(f"{url}/_sim/market", timeout=5).json()
        finally:
            process.terminate()
            assert process.wait(timeout=10) == 0
    assert market["machines"][0]["taken"] is True


def test_control_routes_list_add_withdraw_and_refuse_nonsense(sim):
    url = f"{sim.url}/_sim/market"
    listed = requests.get(url).json()
    assert len(listed["machines"]) == 5 and len(listed["offers"]) == 5
    machine = {
        "machine_id": 60606,
        "host_id": 9090,
        "gpu_name": "A100 SXM4",
        "geolocation": "Tokyo, JP",
        "dph_base": 1.1,
        "offer_id": 8_000_001,
        "gpu_ram": 81920,
    }
    assert requests.post(url, json={"action": "add", "machine": machine}).status_code == 201
    assert machines(offers(sim, {"gpu_name": {"eq": "A100 SXM4"}})) == [60606]
    withdrawn = requests.post(url, json={"action": "withdraw", "offer_id": 8_000_001})
    assert withdrawn.ok and withdrawn.json()["machine"]["listed"] is False
    assert offers(sim, {"gpu_name": {"eq": "A100 SXM4"}}) == []
    assert requests.post(url, json={"action": "relist", "offer_id": 8_000_001}).ok
    assert len(offers(sim, {"gpu_name": {"eq": "A100 SXM4"}})) == 1
    for bad in (
        {"action": "melt"},
        {"action": "take", "machine_id": 1},
        {"action": "take", "machine_id": "13542"},
        {"action": "withdraw", "offer_id": 1},
        {"action": "add", "machine": {**machine, "machine_id": 60607}},  # offer id in use
        {"action": "add", "machine": {**machine, "machine_id": 1, "offer_id": 2, "x": 1}},
        {"action": "add", "machine": {"machine_id": 2}},
        {"action": "add", "machine": {**machine, "machine_id": 3, "offer_id": 4, "dph_base": -1}},
    ):
        assert requests.post(url, json=bad).status_code == 400, bad
    requests.post(f"{sim.url}/_sim/reset")
    assert len(requests.get(url).json()["machines"]) == 5  # added machines are gone


def test_a_market_of_its_own(clock):
    own = [
        Machine(FIRST_MACHINE, 1, "RTX 3090", "Warsaw, PL", 0.25, offer_id=11),
        Machine(70707, 2, "L40S", "Madrid, ES", 0.8, offer_id=12, gpu_ram=46068, num_gpus=2),
    ]
    with simulator(clock, machines=own) as sim:
        assert machines(offers(sim, {"num_gpus": {"eq": 2}})) == [70707]
        assert offers(sim, {"num_gpus": {"eq": 2}})[0]["gpu_total_ram"] == 2 * 46068
    with pytest.raises(ValueError, match="machine_id"):
        simulator(clock, machines=own[1:])
    with pytest.raises(ValueError, match="geolocation"):
        Machine(1, 1, "RTX 3090", "Warsaw", 0.25, offer_id=1)
