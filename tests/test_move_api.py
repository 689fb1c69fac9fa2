"""The API for moving to another machine (issue 24): /recipe, /offers, /move, /instances and
destroy, and what /status says about a stuck start and a move; over Flask's test client against
the simulated market over real HTTP, every answer (errors included) checked against the OpenAPI
description, and no secret in any answer.

The panel and the simulator share one movable clock, as in tests/test_move.py; each
`mover.advance()` is the step the watchdog's leader takes per look of its move job.
"""

from __future__ import annotations

import pytest
from test_openapi import Contract, common_errors, crash_on

from conftest import CONTROL_KEY, config_from
from support.clock import SharedClock
from support.liveserver import SIMULATED_INSTANCE
from vastpanel import create_app
from vastpanel.simulator import ManualClock, Simulator
from vastpanel.storage.moves import ACTIVE_STATES
from vastpanel.web.answers import MOVE_STEPS

SIM_KEY = "move-api-sim-key-0123456789abcdef"
FIRST = 4242
HF_TOKEN = "hf_move-api-secret-token-0123456789"


@pytest.fixture
def sim_clock():
    return ManualClock()


@pytest.fixture
def clock(sim_clock):
    return SharedClock(sim_clock)


@pytest.fixture
def sim(sim_clock):
    with Simulator(
        api_key=SIM_KEY,
        instance_id=FIRST,
        clock=sim_clock,
        gpu_taken=True,  # someone else rents the first instance's GPU
        schedule_delay=2.0,
        create_delay=5.0,
        load_delay=20.0,
        warm_delay=10.0,
        stop_delay=1.0,
    ) as simulator:
        yield simulator


def sim_env(sim, db_path, **overrides: str) -> dict[str, str]:
    return {
        "VAST_URL": sim.url,
        "VAST_API_KEY": SIM_KEY,
        "VAST_INSTANCE_ID": str(FIRST),
        "CONTROL_API_KEY": CONTROL_KEY,
        "VAST_DB_PATH": str(db_path),
        "VAST_STATUS_TTL_S": "0",
        **SIMULATED_INSTANCE,
        **overrides,
    }


@pytest.fixture
def make_client(sim, clock, tmp_path):
    """Build panels on their own databases against the simulator; return an API client each."""
    apps = []

    def make(**overrides: str):
        env = sim_env(sim, tmp_path / f"panel-{len(apps)}.db", **overrides)
        app = create_app(config_from(env), clock=clock)
        apps.append(app)
        client = app.test_client()
        client.environ_base["HTTP_X_API_KEY"] = CONTROL_KEY
        return client

    yield make
    for app in apps:
        app.extensions["vastpanel"].store.close()


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture
def panel(client):
    return client.application.extensions["vastpanel"]


def stuck_start(panel, clock) -> None:
    """Start the first instance on its taken machine: vast.ai queues it."""
    panel.power.power_on("api", wait_for_health=False)
    clock.advance(2.0)
    assert panel.mover.stuck() is not None


def drive(panel, clock, *, steps: int = 100, every: float = 2.0):
    """Take the move's steps as the leader's move job would, until it ends; return it."""
    move = None
    for _ in range(steps):
        move = panel.mover.advance()
        if move is None or not move.active:
            return move
        clock.advance(every)
    raise AssertionError(f"the move did not end: {move}")


def moved(panel, clock):
    """Move a stuck start to the best offer and return the finished move."""
    stuck_start(panel, clock)
    panel.mover.request("api")
    done = drive(panel, clock)
    assert done.state == "done", done.error
    return done


def unknown_instance(make_client):
    """A panel pointed at an instance vast.ai does not know: no recipe can be taken."""
    return make_client(VAST_INSTANCE_ID="999")


def test_the_move_states_of_the_answers_are_the_stores():
    assert [s for s in MOVE_STEPS if s not in ("done", "failed")] == list(ACTIVE_STATES)


def test_recipe_get_and_put(client, make_client, panel, sim, monkeypatch):
    get, put = Contract("GET", "/recipe"), Contract("PUT", "/recipe")
    recipe = get.call(client, 200)
    shown = sim.instance(FIRST)
    assert recipe["image"] == shown["image_uuid"] and recipe["gpu_name"] == shown["gpu_name"]
    assert recipe["source_instance_id"] == FIRST and recipe["rebuild_problem"] is None
    env = [*recipe["env"], ["HF_TOKEN", HF_TOKEN]]
    onstart = f"huggingface-cli login --token {HF_TOKEN} && serve"
    edited = put.call(client, 200, body={"env": env, "onstart": onstart, "max_dph": 0.3})
    assert ["HF_TOKEN", "***"] in edited["env"] and edited["max_dph"] == 0.3
    assert edited["onstart"] == "huggingface-cli login --token *** && serve"
    assert ("HF_TOKEN", HF_TOKEN) in panel.recipes.get().env  # kept for a create
    # The shown recipe sent back as it is keeps every secret.
    again = put.call(client, 200, body={"env": edited["env"]})
    assert again == edited and ("HF_TOKEN", HF_TOKEN) in panel.recipes.get().env
    edits = [e for e in panel.audit.entries(20) if e.event == "recipe_edited"]
    assert [(e.actor, e.meta) for e in edits] == [("api", {"fields": "env,max_dph,onstart"})]
    before = panel.recipes.get()
    for body, field in (
        ({"num_gpus": 0}, "num_gpus"),
        ({"min_reliability": 1.5}, "min_reliability"),
        ({"copy_paths": ["/root"]}, "copy_paths"),
        ({"image": "  "}, "image"),
        ({"max_dph": 0.2, "nonsense": 1}, "nonsense"),
    ):
        assert field in put.call(client, 422, body=body)["detail"]
    assert "JSON" in put.call(client, 422, raw="{not json")["detail"]
    assert "object" in put.call(client, 422, raw="[1]")["detail"]
    assert panel.recipes.get() == before  # nothing changed, not even max_dph above
    assert "not configured" in get.call(make_client(VAST_API_KEY=""), 500)["detail"]
    assert "not configured" in put.call(make_client(VAST_API_KEY=""), 500, body={})["detail"]
    assert "999" in get.call(unknown_instance(make_client), 502)["detail"]
    assert "999" in put.call(unknown_instance(make_client), 502, body={})["detail"]
    common_errors(get, client, make_client, crash_on(monkeypatch, panel.recipes, "get"))
    common_errors(put, client, make_client, None, body={"max_dph": 0.3})
    put.call(client, 500, body={"max_dph": 0.3})  # recipes.get crashes, as set above
    get.covered()
    put.covered()
    for entry in panel.audit.entries(100):
        assert HF_TOKEN not in str(entry.meta)


def test_offers_are_on_other_machines_cheapest_first_and_say_when_a_start_is_stuck(
    client, make_client, panel, sim, clock, monkeypatch
):
    contract = Contract("GET", "/offers")
    quiet = contract.call(client, 200)
    assert quiet["stuck"] is None
    prices = [o["dph_total"] for o in quiet["offers"]]
    assert prices and prices == sorted(prices)
    assert all(o["machine_id"] != sim.machine_id for o in quiet["offers"])
    assert all(o["gpu_name"] == sim.instance(FIRST)["gpu_name"] for o in quiet["offers"])
    stuck_start(panel, clock)
    answer = contract.call(client, 200)
    assert answer["stuck"]["machine_id"] == sim.machine_id and answer["stuck"]["queued"]
    assert answer["offers"] == quiet["offers"]
    assert "not configured" in contract.call(make_client(VAST_API_KEY=""), 500)["detail"]
    unreadable = make_client()
    sim.add_fault("response", count=None, method="POST", path="/bundles/", status=400)
    assert "offers could not be read" in contract.call(unreadable, 502)["detail"]
    sim.clear_faults()
    common_errors(contract, client, make_client, crash_on(monkeypatch, panel.mover, "offers"))
    contract.covered()


def test_a_move_is_asked_followed_and_refused_with_the_reason(
    client, make_client, panel, sim, clock, monkeypatch
):
    ask, latest = Contract("POST", "/move"), Contract("GET", "/move")
    assert latest.call(client, 200) is None
    stuck_start(panel, clock)
    best = panel.mover.offers()[0]
    assert "offer_id" in ask.call(client, 422, body={"offer_id": "7100002"})["detail"]
    assert "go_on_without_copy" in ask.call(client, 422, body={"go_on_without_copy": 1})["detail"]
    assert (
        "Offer 1 is no longer among the offers"
        in ask.call(client, 409, body={"offer_id": 1})["detail"]
    )
    assert "JSON" in ask.call(client, 422, raw="{")["detail"]
    assert panel.mover.latest() is None  # nothing asked, the start still queued
    assert sim.instance(FIRST)["intended_status"] == "running"
    move = ask.call(client, 202, body={"offer_id": best.id})
    assert (move["state"], move["active"], move["actor"]) == ("requested", True, "api")
    assert move["chosen_offer_id"] == best.id and move["old_instance_id"] == FIRST
    assert "under way" in ask.call(client, 409, body={})["detail"]
    assert latest.call(client, 200)["id"] == move["id"]
    done = drive(panel, clock)
    answer = latest.call(client, 200)
    assert (answer["state"], answer["active"], answer["step"]) == ("done", False, "moved")
    assert answer["new_instance_id"] == done.new_id and answer["new_machine_id"] == best.machine_id
    assert answer["new_dph_total"] == best.dph_total and answer["finished_at"] is not None
    # On its new machine the instance runs: there is nothing to move.
    panel.instance.state(fresh=True)
    assert "nothing to move" in ask.call(client, 409)["detail"]
    off = make_client(VAST_MOVE="off")
    assert "VAST_MOVE=off" in ask.call(off, 409, body={"offer_id": best.id})["detail"]
    assert "not configured" in ask.call(make_client(VAST_API_KEY=""), 500)["detail"]
    assert "999" in ask.call(unknown_instance(make_client), 502)["detail"]
    common_errors(ask, client, make_client, crash_on(monkeypatch, panel.mover, "request"))
    common_errors(latest, client, make_client, crash_on(monkeypatch, panel.mover, "latest"))
    ask.covered()
    latest.covered()


def test_a_private_image_without_its_login_is_refused_with_the_reason(client, panel, clock):
    put, ask = Contract("PUT", "/recipe"), Contract("POST", "/move")
    recipe = put.call(
        client, 200, body={"image": "registry.example.com/team/llm:1", "private_image": True}
    )
    assert "image_login" in recipe["rebuild_problem"]
    stuck_start(panel, clock)
    assert "private" in ask.call(client, 409)["detail"]
    login = "-u me -p registry-secret-0123456789 registry.example.com"
    recipe = put.call(client, 200, body={"image_login": login})
    assert recipe["image_login"] == "***" and recipe["rebuild_problem"] is None
    assert ask.call(client, 202)["state"] == "requested"
    for path in ("/recipe", "/move", "/status", "/offers", "/instances"):
        text = client.get("/infra/vast" + path).get_data(as_text=True)
        assert "registry-secret" not in text and SIM_KEY not in text


def test_instances_are_listed_and_a_kept_one_destroyed_on_request(
    client, make_client, panel, sim, clock, monkeypatch
):
    listing = Contract("GET", "/instances")
    first = listing.call(client, 200)
    assert first["current_instance_id"] == FIRST
    assert [(i["id"], i["state"], i["origin"]) for i in first["instances"]] == [
        (FIRST, "current", "first")
    ]
    done = moved(panel, clock)
    after = listing.call(client, 200)
    assert after["current_instance_id"] == done.new_id
    assert {i["id"]: i["state"] for i in after["instances"]} == {
        FIRST: "kept",
        done.new_id: "current",
    }
    new = next(i for i in after["instances"] if i["id"] == done.new_id)
    assert new["machine_id"] == done.new_machine and new["move_id"] == done.id

    def destroy(instance_id) -> Contract:
        return Contract(
            "POST", "/instances/{instance_id}/destroy", f"/instances/{instance_id}/destroy"
        )

    assert "controls" in destroy(done.new_id).call(client, 422)["detail"]
    assert "whole number" in destroy("abc").call(client, 422)["detail"]
    assert "not one the panel keeps" in destroy(999).call(client, 422)["detail"]
    assert "JSON" in destroy(FIRST).call(client, 422, raw="{")["detail"]
    sim.add_fault("response", count=None, method="DELETE", status=400, body={"error": "nope"})
    refused = destroy(FIRST).call(client, 409)["detail"]
    assert "did not destroy" in refused
    sim.clear_faults()
    assert sim.instance(FIRST) is not None  # refused: still there, still listed as kept
    gone = destroy(FIRST).call(client, 200)
    assert (gone["id"], gone["state"]) == (FIRST, "destroyed")
    assert sim.instance(FIRST) is None
    entry = panel.audit.entries(1)[0]
    assert (entry.event, entry.actor, entry.meta["instance_id"]) == (
        "instance_destroyed",
        "api",
        FIRST,
    )
    assert "not one the panel keeps" in destroy(FIRST).call(client, 422)["detail"]
    contract = destroy(FIRST)
    contract.seen = {"200", "409", "422"}  # above, each through its own instance's URL
    common_errors(contract, client, make_client, crash_on(monkeypatch, panel.mover, "destroy"))
    common_errors(
        listing, client, make_client, crash_on(monkeypatch, panel.mover, "known_instances")
    )
    contract.covered()
    listing.covered()


def test_status_says_when_a_start_is_stuck_and_which_step_a_move_is_at(client, panel, sim, clock):
    contract = Contract("GET", "/status")
    quiet = contract.call(client, 200)
    assert (quiet["stuck"], quiet["moving"]) == (None, None)
    stuck_start(panel, clock)
    stuck = contract.call(client, 200)
    assert stuck["status"] == "scheduling" and stuck["stuck"]["queued"] is True
    assert stuck["stuck"]["since"] is not None and stuck["moving"] is None
    panel.mover.request("admin")
    sim.set_timing(load_delay=60.0)  # longer than one run of the move job follows the boot
    seen = []
    for _ in range(100):
        answer = contract.call(client, 200)
        seen.append(answer["moving"])
        move = panel.mover.advance()
        if not move.active:
            break
        clock.advance(2.0)
    assert seen[0] == "requested" and "booting" in seen
    after = contract.call(client, 200)
    assert after["moving"] is None and after["stuck"] is None
    assert after["instance_id"] == panel.instance.current_id() != FIRST


def test_no_secret_is_in_any_move_answer(client, panel, clock):
    env = client.get("/infra/vast/recipe").get_json()["env"]  # the port entries stay
    client.put("/infra/vast/recipe", json={"env": [*env, ["HF_TOKEN", HF_TOKEN]]})
    done = moved(panel, clock)
    assert ("HF_TOKEN", HF_TOKEN) in panel.recipes.get().env
    for method, path in (
        ("GET", "/recipe"),
        ("PUT", "/recipe"),
        ("GET", "/offers"),
        ("GET", "/move"),
        ("GET", "/instances"),
        ("GET", "/status"),
        ("POST", "/move"),
        ("POST", f"/instances/{done.new_id}/destroy"),
    ):
        response = client.open("/infra/vast" + path, method=method, json={})
        text = response.get_data(as_text=True)
        assert HF_TOKEN not in text and SIM_KEY not in text and CONTROL_KEY not in text, path
