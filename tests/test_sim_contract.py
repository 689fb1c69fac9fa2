"""Contracts end: end_date, the stop at expiry, no restart, deletion 48 h later; real HTTP.

vast.ai: "Once an instance hits its end date it expires and is automatically stopped. Expired
instances can not restart while expired. Expired instances may be deleted 48 hours after
expiration" (vast.ai docs, introduction/overview); "Expired instances still pay storage fees"
(vast-ai/docs host/cli/cleanup-machine). What the API answers a start after expiry is not
documented: the simulator's 400 contract_expired is an assumption.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pytest
import requests

from vastpanel.simulator import Hardware, ManualClock, Simulator

KEY = "contract-key-0123"
IID = 777
START = datetime(2024, 6, 1, tzinfo=UTC).timestamp()
DAY = 86400
GPU_DPH, STORAGE_DPH = 0.4, 0.15 * 48 / 720


@pytest.fixture
def clock():
    return ManualClock(start=START)


def simulator(clock, **options) -> Simulator:
    settings = {
        "api_key": KEY,
        "instance_id": IID,
        "rate_limit": {},
        "clock": clock,
        "wall_clock": clock,
        "schedule_delay": 0,
        "load_delay": 0,
        "warm_delay": 0,
        "initial_state": "running",
        "hardware": Hardware(dph_base=GPU_DPH, age_seconds=0, stopped_storage_factor=1.0),
    }
    return Simulator(**(settings | options))


@pytest.fixture
def sim(clock):
    with simulator(clock, contract_ends_at=START + 2 * 3600) as simulator_:
        yield simulator_


def show(sim, http) -> dict | None:
    answer = http.get(f"{sim.url}/api/v0/instances/{IID}/", params={"owner": "me"})
    assert answer.status_code == 200
    return answer.json()["instances"]


def start(sim, http) -> requests.Response:
    return http.put(f"{sim.url}/api/v0/instances/{IID}/", json={"state": "running"})


def billed(sim, http) -> dict[str, float]:
    filters = '{"day": {"gte": 0, "lte": 4000000000}}'
    row = http.get(f"{sim.url}/api/v0/charges/", params={"select_filters": filters}).json()
    (contract,) = row["results"]
    return {item["type"]: item["amount"] for item in contract["items"]} | {"row": contract}


def test_end_date_defaults_weeks_ahead_and_follows_the_hardware(clock):
    with simulator(clock) as sim:
        assert sim.instance()["end_date"] == START + 28 * DAY
    with simulator(clock, hardware=Hardware(contract_days=3, age_seconds=0)) as sim:
        assert sim.instance()["end_date"] == START + 3 * DAY


def test_at_its_end_date_the_instance_stops_and_cannot_start(sim, http, clock):
    assert show(sim, http)["end_date"] == START + 2 * 3600
    clock.advance(3 * 3600)
    row = show(sim, http)
    assert (row["actual_status"], row["intended_status"]) == ("stopped", "stopped")
    assert "ports" not in row and "contract" in row["status_msg"]
    refused = start(sim, http)
    assert refused.status_code == 400
    body = refused.json()
    assert (body["success"], body["error"]) == (False, "contract_expired")
    assert str(IID) in body["msg"]
    assert show(sim, http)["intended_status"] == "stopped"
    assert requests.get(f"{sim.llm_url}/health", timeout=5).status_code == 502
    # GPU billed until the end date, storage still after it.
    amounts = billed(sim, http)
    assert amounts["gpu"] == pytest.approx(2 * GPU_DPH)
    assert amounts["disk"] == pytest.approx(3 * STORAGE_DPH)


def test_48_hours_after_expiry_the_instance_is_deleted(sim, http, clock):
    clock.advance(2 * 3600 + 48 * 3600 - 1)
    assert show(sim, http) is not None
    clock.advance(1 + 3600)
    assert show(sim, http) is None
    gone = http.put(f"{sim.url}/api/v0/instances/{IID}/", json={"state": "stopped"})
    assert gone.status_code == 404 and gone.json()["error"] == "no_such_instance"
    amounts = billed(sim, http)
    assert amounts["row"]["end"] == START + 50 * 3600  # the contract ended at the deletion
    assert amounts["disk"] == pytest.approx(50 * STORAGE_DPH)


def test_the_console_expires_it_now_and_a_later_end_date_lets_it_start(clock):
    with simulator(clock) as sim, requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {KEY}"
        clock.advance(60)
        answer = requests.post(f"{sim.url}/_sim/external", json={"action": "expire"})
        assert answer.json()["changed"] is True
        assert answer.json()["instance"]["end_date"] == START + 60
        assert answer.json()["instance"]["actual_status"] == "stopped"
        assert start(sim, http).status_code == 400
        later = requests.post(f"{sim.url}/_sim/contract", json={"ends_at": START + 5 * DAY})
        assert later.ok and later.json()["instance"]["end_date"] == START + 5 * DAY
        assert start(sim, http).json() == {"success": True}
        assert show(sim, http)["actual_status"] == "running"


def test_an_end_date_in_the_past_takes_effect_now(clock):
    with simulator(clock) as sim, requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {KEY}"
        clock.advance(3600)
        answer = requests.post(f"{sim.url}/_sim/contract", json={"ends_at": START - DAY})
        assert answer.ok and answer.json()["instance"]["intended_status"] == "stopped"
        assert billed(sim, http)["gpu"] == pytest.approx(GPU_DPH)  # billing is not rewritten
        clock.advance(DAY - 3600 - 1)
        assert show(sim, http) is not None
        clock.advance(1)
        assert show(sim, http) is None  # 48 h after that end date


@pytest.mark.parametrize("ends_at", [None, "soon", -5, True])
def test_a_bad_end_date_is_400_and_changes_nothing(sim, ends_at):
    answer = requests.post(f"{sim.url}/_sim/contract", json={"ends_at": ends_at})
    assert answer.status_code == 400
    assert sim.instance()["end_date"] == START + 2 * 3600


def test_the_command_line_sets_the_end_date_and_the_other_flags():
    ends = 1_900_000_000
    command = [sys.executable, "-m", "vastpanel.simulator", "--port", "0", "--api-key", KEY]
    command += ["--contract-ends-at", str(ends), "--no-sticky-gauges", "--clip-charges"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as process:
        try:
            url = process.stdout.readline().strip()
            state = requests.get(f"{url}/_sim/state", timeout=5).json()
        finally:
            process.terminate()
            assert process.wait(timeout=10) == 0
    assert state["instance"]["end_date"] == ends
    assert state["llm"]["sticky_gauges"] is False
    assert state["billing"]["clip_to_range"] is True
