"""Creating, destroying and copying between instances on the simulated market, over real HTTP.

Shapes: vast-ai/docs api-reference/openapi/yaml/create_instance.yaml, copy.yaml and the
DELETE /api/v0/instances/{id}/ reference; recipe fields as show instance gives them.
"""

from __future__ import annotations

import json

import pytest
import requests

from vastpanel.simulator import ManualClock, Simulator

KEY = "rentals-key-0123"
IID = 5200
LYON_OFFER, OSLO_OFFER, FIRST_OFFER = 7_100_002, 7_100_003, 7_100_001
LYON, OSLO, FIRST_MACHINE = 24816, 31337, 13542
SCHEDULE, LOAD, WARM, COPY = 1.0, 4.0, 2.0, 10.0
RECIPE = {
    "client_id": "me",
    "image": "vllm/vllm-openai:v0.8.5",
    "disk": 48,
    "runtype": "args",
    "args": ["--model", "sim-model"],
    "env": {"HF_TOKEN": "hf_secret", "VAST_AGENT_SECRET": "s3", "-p 8001:8001": "1"},
    "onstart": "echo starting",
    "label": "vastpanel-moved",
    "image_login": "-u me -p registry-token ghcr.io",
    "cancel_unavail": True,
    "target_state": "running",
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
        "schedule_delay": SCHEDULE,
        "load_delay": LOAD,
        "warm_delay": WARM,
        "create_delay": 0,
    }
    sim = Simulator(**(settings | options))
    sim.set_timing(copy_delay=COPY)
    return sim


@pytest.fixture
def sim(clock):
    with simulator(clock) as simulator_:
        yield simulator_


def create(http, sim, offer_id=LYON_OFFER, **changes) -> requests.Response:
    return http.put(f"{sim.url}/api/v0/asks/{offer_id}/", json=RECIPE | changes)


def show(http, sim, instance_id) -> dict | None:
    answer = http.get(f"{sim.url}/api/v0/instances/{instance_id}/", params={"owner": "me"})
    assert answer.status_code == 200
    return answer.json()["instances"]


def new_instance(http, sim, clock, **changes) -> int:
    answer = create(http, sim, **changes)
    assert answer.status_code == 200, answer.text
    return answer.json()["new_contract"]


# --- create ---


def test_create_answers_the_new_contract_and_its_own_key(sim, http):
    answer = create(http, sim)
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"success", "new_contract", "instance_api_key"}
    assert body["success"] is True and body["new_contract"] != IID
    assert body["instance_api_key"] not in (KEY, sim.backend.instance_api_key)
    logged = sim.requests(method="PUT", path=f"/api/v0/asks/{LYON_OFFER}/")[0]["json"]
    assert logged["image_login"] == "[redacted]"  # a registry login is never logged


def test_the_new_instance_boots_like_a_start_on_its_own_address(sim, http, clock):
    new = new_instance(http, sim, clock)
    row = show(http, sim, new)
    assert (row["actual_status"], row["intended_status"]) == ("loading", "running")
    clock.advance(LOAD)
    row = show(http, sim, new)
    assert row["actual_status"] == "running" and row["machine_id"] == LYON
    port = row["ports"]["8001/tcp"][0]["HostPort"]
    assert set(row["ports"]) == {"8001/tcp"}  # only what its env maps
    assert port != str(sim.llm_port)
    health = f"http://{row['public_ipaddr'].strip()}:{port}/health"
    assert requests.get(health, timeout=5).status_code == 502  # the model is warming up
    clock.advance(WARM)
    assert requests.get(health, timeout=5).status_code == 200
    assert requests.get(f"{sim.llm_url}/health", timeout=5).status_code == 502  # first: stopped
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert requests.post(f"{sim.llm_url_of(new)}/v1/chat/completions", json=chat).ok
    assert [r["instance_id"] for r in sim.llm_requests()][-1] == new


def test_show_instance_gives_the_recipe_back(sim, http, clock):
    new = new_instance(http, sim, clock)
    row = show(http, sim, new)
    assert row["image_uuid"] == RECIPE["image"]
    assert row["image_args"] == RECIPE["args"] and row["image_runtype"] == "args"
    assert row["extra_env"] == [[k, v] for k, v in RECIPE["env"].items()]
    assert (row["onstart"], row["label"], row["disk_space"]) == (
        "echo starting",
        "vastpanel-moved",
        48,
    )
    assert row["template_hash_id"] is None and row["volume_info"] is None
    assert (row["gpu_name"], row["num_gpus"], row["gpu_ram"]) == ("RTX 3090", 1, 24576)
    assert (row["geolocation"], row["reliability2"], row["verification"]) == (
        "Lyon, FR",
        0.991,
        "verified",
    )
    assert row["dph_total"] == pytest.approx(0.22 + 0.15 * 48 / 720)
    assert "registry-token" not in json.dumps(row)  # vast.ai never gives the login back
    first = show(http, sim, IID)  # the first instance has its recipe too
    assert first["extra_env"] == [["-p 8000:8000", "1"], ["-p 8001:8001", "1"]]
    assert first["image_runtype"] == "args" and first["machine_id"] == FIRST_MACHINE


def test_a_template_gives_the_rest_and_env_merges_by_key(sim, http, clock):
    template = "5ee0c7a1f0a84c1b9f0d6d27a6a0e6b1"
    body = {"template_hash_id": template, "env": "-e HF_TOKEN=hf_x -p 9000:9000", "disk": 20}
    answer = http.put(f"{sim.url}/api/v0/asks/{OSLO_OFFER}/", json=body)
    assert answer.status_code == 200, answer.text
    row = show(http, sim, answer.json()["new_contract"])
    assert row["template_hash_id"] == template and row["image_uuid"] == "vllm/vllm-openai:latest"
    assert row["extra_env"] == [
        ["-p 8000:8000", "1"],
        ["-p 8001:8001", "1"],
        ["HF_TOKEN", "hf_x"],
        ["-p 9000:9000", "1"],
    ]
    assert row["disk_space"] == 20


def test_its_own_key_may_stop_and_destroy_it_and_nothing_else(sim, http, clock):
    answer = create(http, sim).json()
    new, key = answer["new_contract"], {"Authorization": f"Bearer {answer['instance_api_key']}"}
    url = f"{sim.url}/api/v0/instances/{new}/"
    assert requests.get(url, headers=key).status_code == 401
    assert requests.put(url, json={"state": "running"}, headers=key).status_code == 401
    first = f"{sim.url}/api/v0/instances/{IID}/"
    assert requests.put(first, json={"state": "stopped"}, headers=key).status_code == 401
    assert requests.delete(first, headers=key).status_code == 401
    assert requests.put(url, json={"state": "stopped"}, headers=key).json() == {"success": True}
    assert requests.delete(url, headers=key).json() == {"success": True}
    assert show(http, sim, new) is None
    changes = [r for r in sim.requests(path=f"/api/v0/instances/{new}/") if r["method"] != "GET"]
    assert [(r["status"], r["auth"]) for r in changes][-2:] == [(200, "instance")] * 2


def test_an_offer_gone_between_search_and_create_is_404(sim, http):
    assert requests.post(
        f"{sim.url}/_sim/market", json={"action": "withdraw", "offer_id": LYON_OFFER}
    ).ok
    answer = create(http, sim)
    assert answer.status_code == 404
    assert answer.json() == {
        "success": False,
        "error": "invalid_args",
        "msg": f"error 404/3603: no_such_ask Instance type by id {LYON_OFFER} is not available.",
        "ask_id": LYON_OFFER,
    }
    assert create(http, sim, offer_id=999).status_code == 404
    assert sim.instances()[0]["id"] == IID and len(sim.instances()) == 1


def test_an_offer_taken_meanwhile_is_410_with_cancel_unavail(sim, http, clock):
    sim.take_gpu(LYON)
    answer = create(http, sim)
    assert answer.status_code == 410
    assert answer.json() == {
        "success": False,
        "error": "no_such_ask",
        "msg": f"error 410/3907: no_such_ask Instance type {LYON_OFFER} is no longer available.",
        "ask_id": LYON_OFFER,
    }
    assert len(sim.instances()) == 1
    queued = create(http, sim, cancel_unavail=False)  # without: created, queued for the GPU
    assert queued.status_code == 200 and queued.json()["success"] is False
    new = queued.json()["new_contract"]
    clock.advance(3600)
    assert (show(http, sim, new)["actual_status"], show(http, sim, new)["intended_status"]) == (
        "stopped",
        "running",
    )
    sim.free_gpu(LYON)
    clock.advance(SCHEDULE + LOAD)
    assert show(http, sim, new)["actual_status"] == "running"


def test_our_own_running_instance_makes_its_offer_unavailable(sim, http, clock):
    first_start = http.put(f"{sim.url}/api/v0/instances/{IID}/", json={"state": "running"})
    assert first_start.json() == {"success": True}
    assert create(http, sim, offer_id=FIRST_OFFER).status_code == 410
    http.put(f"{sim.url}/api/v0/instances/{IID}/", json={"state": "stopped"})
    moved = create(http, sim, offer_id=FIRST_OFFER)  # a stopped instance holds no GPU
    assert moved.status_code == 200 and moved.json()["success"] is True
    again = http.put(f"{sim.url}/api/v0/instances/{IID}/", json={"state": "running"})
    assert again.json()["error"] == "resources_unavailable"  # the new one has the GPU now


def test_created_stopped_says_success_false(sim, http, clock):
    answer = create(http, sim, target_state="stopped")
    assert answer.status_code == 200 and answer.json()["success"] is False
    row = show(http, sim, answer.json()["new_contract"])
    assert (row["actual_status"], row["intended_status"]) == ("stopped", "stopped")


@pytest.mark.parametrize(
    "changes",
    [
        {"image": None},
        {"disk": 4},
        {"disk": "48"},
        {"disk": 100_000},
        {"runtype": "telnet"},
        {"env": ["HF_TOKEN=x"]},
        {"env": {"HF_TOKEN": None}},
        {"env": "-e"},
        {"args": "--model sim"},
        {"target_state": "paused"},
        {"label": "x" * 257},
        {"onstart": "x" * 5000},
        {"template_hash_id": "0" * 32},
        {"label": 7},
    ],
)
def test_a_bad_create_is_400_invalid_args_and_creates_nothing(sim, http, changes):
    answer = create(http, sim, **changes)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_args" and answer.json()["ask_id"] == LYON_OFFER
    assert len(sim.instances()) == 1


def test_a_bad_offer_id_or_body_is_400(sim, http):
    assert http.put(f"{sim.url}/api/v0/asks/abc/", json=RECIPE).status_code == 400
    assert http.put(f"{sim.url}/api/v0/asks/{LYON_OFFER}/", data="nope").status_code == 400
    assert requests.put(f"{sim.url}/api/v0/asks/{LYON_OFFER}/", json=RECIPE).status_code == 401


def test_create_is_rate_limited_at_its_documented_threshold(clock):
    with simulator(clock, rate_limit={"GET": 2.0, "PUT": 1.0}) as sim, requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {KEY}"
        assert create(http, sim).status_code == 200
        clock.advance(4.4)
        refused = create(http, sim, offer_id=OSLO_OFFER)
        assert refused.status_code == 429
        assert refused.json() == {"detail": "API requests too frequent endpoint threshold=4.5"}
        clock.advance(0.1)
        assert create(http, sim, offer_id=OSLO_OFFER).status_code == 200


# --- destroy ---


def test_destroy_then_404_and_storage_stops(sim, http, clock):
    new = new_instance(http, sim, clock)
    clock.advance(3600)
    assert http.delete(f"{sim.url}/api/v0/instances/{new}/").json() == {"success": True}
    assert show(http, sim, new) is None
    gone = http.delete(f"{sim.url}/api/v0/instances/{new}/")
    assert gone.status_code == 404
    assert gone.json() == {
        "success": False,
        "error": "no_such_instance",
        "msg": f"Instance {new} not found.",
    }
    assert (
        http.put(f"{sim.url}/api/v0/instances/{new}/", json={"state": "running"}).status_code == 404
    )
    bad = http.delete(f"{sim.url}/api/v0/instances/x1/")
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_args"
    clock.advance(3600)
    filters = json.dumps({"day": {"gte": 0, "lte": 4e9}})
    rows = http.get(f"{sim.url}/api/v0/charges/", params={"select_filters": filters}).json()
    (row,) = [r for r in rows["results"] if r["source"] == f"instance-{new}"]
    disk = {i["type"]: i for i in row["items"]}["disk"]
    assert disk["amount"] == pytest.approx(0.15 * 48 / 720)  # one hour, then nothing
    assert row["end"] - row["start"] == pytest.approx(3600, abs=1)


def test_destroy_frees_the_gpu_for_a_queued_start(sim, http, clock):
    new = new_instance(http, sim, clock, target_state="running")
    answer = create(http, sim, cancel_unavail=False)  # same machine, GPU held by `new`
    waiting = answer.json()["new_contract"]
    assert answer.json()["success"] is False
    http.delete(f"{sim.url}/api/v0/instances/{new}/")
    clock.advance(SCHEDULE + LOAD)
    assert show(http, sim, waiting)["actual_status"] == "running"


# --- copy ---


def copy(http, sim, **body) -> requests.Response:
    defaults = {"client_id": "me", "src_path": "/workspace/", "dst_path": "/workspace/"}
    return http.put(f"{sim.url}/api/v0/commands/copy_direct/", json=defaults | body)


def test_copy_from_a_stopped_instance_shows_progress_then_the_files(sim, http, clock):
    new = new_instance(http, sim, clock)
    assert show(http, sim, IID)["actual_status"] == "stopped"
    answer = copy(http, sim, src_id=str(IID), dst_id=str(new))
    assert answer.status_code == 200
    assert answer.json() == {
        "success": True,
        "msg": "Remote to Remote copy initiated - check instance status bar for progress "
        "updates (~30 seconds delayed).",
    }
    clock.advance(COPY / 2)
    assert show(http, sim, new)["status_msg"].endswith(": 50%")
    assert f"to instance {new}" in show(http, sim, IID)["status_msg"]
    assert requests.get(f"{sim.url}/_sim/files", params={"instance_id": new}).json()["files"] == {}
    clock.advance(COPY / 2)
    files = requests.get(f"{sim.url}/_sim/files", params={"instance_id": new}).json()["files"]
    assert files == sim.files(IID)
    assert show(http, sim, new)["status_msg"].startswith("success, running")
    bandwidth = {i["type"] for r in charges(http, sim) for i in r["items"]}
    assert {"bwu", "bwd"} <= bandwidth  # two machines: the copy's bytes are billed


def test_copy_into_another_folder_and_of_one_file(sim, http, clock):
    new = new_instance(http, sim, clock)
    assert requests.put(
        f"{sim.url}/_sim/files", json={"instance_id": IID, "files": {"/data/a.txt": "A"}}
    ).ok
    copy(http, sim, src_id=IID, dst_id=new, src_path="/workspace/models", dst_path="/models")
    copy(http, sim, src_id=IID, dst_id=new, src_path="/data/a.txt", dst_path="/workspace/")
    clock.advance(COPY)
    assert set(sim.files(new)) == {"/models/sim-model/config.json", "/workspace/a.txt"}


@pytest.mark.parametrize("dst_path", ["/", "/root", "/root/", " / "])
def test_copy_never_into_root_or_slash(sim, http, clock, dst_path):
    new = new_instance(http, sim, clock)
    answer = copy(http, sim, src_id=IID, dst_id=new, dst_path=dst_path)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_args"
    clock.advance(COPY)
    assert sim.files(new) == {}


@pytest.mark.parametrize(
    "body, status",
    [
        ({"src_id": "nope", "dst_id": IID}, 400),
        ({"src_id": IID}, 400),
        ({"src_id": IID, "dst_id": IID, "src_path": ""}, 400),
        ({"src_id": IID, "dst_id": 999}, 404),
        ({"src_id": 999, "dst_id": IID}, 404),
    ],
)
def test_a_bad_copy_is_refused(sim, http, body, status):
    answer = copy(http, sim, **body)
    assert answer.status_code == status


# --- the account's instances, and the first one's control routes ---


def charges(http, sim) -> list[dict]:
    filters = json.dumps({"day": {"gte": 0, "lte": 4e9}})
    return http.get(f"{sim.url}/api/v0/charges/", params={"select_filters": filters}).json()[
        "results"
    ]


def test_every_contract_is_a_charges_row_paged_by_token(sim, http, clock):
    ids = [new_instance(http, sim, clock, offer_id=o) for o in (LYON_OFFER, OSLO_OFFER)]
    clock.advance(60)
    filters = json.dumps({"day": {"gte": 0, "lte": 4e9}})
    pages, token = [], None
    while True:
        params = {
            "select_filters": filters,
            "limit": 2,
            **({"after_token": token} if token else {}),
        }
        body = http.get(f"{sim.url}/api/v0/charges/", params=params).json()
        assert body["total"] == 3
        pages.append([row["source"] for row in body["results"]])
        token = body["next_token"]
        if token is None:
            break
    assert [len(page) for page in pages] == [2, 1]
    # latest first by default: the first instance's contract started three days ago.
    assert sum(pages, []) == [f"instance-{i}" for i in sorted(ids, reverse=True)] + [
        f"instance-{IID}"
    ]


def test_control_routes_act_on_the_first_unless_told_an_instance_id(sim, http, clock):
    new = new_instance(http, sim, clock)
    clock.advance(LOAD)
    frozen = requests.post(
        f"{sim.url}/_sim/external", json={"action": "frozen", "instance_id": new}
    ).json()
    assert frozen["instance"]["id"] == new and frozen["instance"]["actual_status"] == "frozen"
    assert show(http, sim, IID)["actual_status"] == "stopped"
    requests.post(f"{sim.url}/_sim/external", json={"action": "start"})
    assert show(http, sim, IID)["intended_status"] == "running"
    ends_at = show(http, sim, new)["start_date"] + 1  # past: it expires now
    ended = requests.post(f"{sim.url}/_sim/contract", json={"ends_at": ends_at, "instance_id": new})
    assert ended.json()["instance"]["intended_status"] == "stopped"
    assert show(http, sim, IID)["end_date"] > ends_at + 86400  # the first one's is untouched
    unknown = requests.post(f"{sim.url}/_sim/external", json={"action": "stop", "instance_id": 1})
    assert unknown.status_code == 400
    assert [row["id"] for row in sim.instances()] == [IID, new]
    requests.post(f"{sim.url}/_sim/reset")
    assert [row["id"] for row in sim.instances()] == [IID]
