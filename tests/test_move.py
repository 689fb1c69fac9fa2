"""Moving to another machine, step by step, against the simulated market over real HTTP.

The panel and the simulator share one movable clock, so a move's waits (vast.ai's intervals,
the new instance's creating and loading, its health) pass at once; each `advance()` is the step
the watchdog's leader takes per look of its move job.
"""

from __future__ import annotations

import logging

import pytest
import requests

from conftest import config_from
from support import store
from support.clock import SharedClock
from support.liveserver import SIMULATED_INSTANCE
from vastpanel import create_app
from vastpanel.domain.costs import booked_between
from vastpanel.domain.move import MoveRefused
from vastpanel.errors import InvalidRequest, VastError, VastErrorKind
from vastpanel.simulator import ManualClock, Simulator
from vastpanel.storage import ledger
from vastpanel.watchdog.looks import watchdog_for

SIM_KEY = "move-sim-key-0123456789abcdef"
CONTROL_KEY = "move-control-key-0123456789"
FIRST = 4242
HF_TOKEN = "hf_secret-token-0123456789abcdef"


@pytest.fixture
def sim_clock():
    return ManualClock()


@pytest.fixture
def clock(sim_clock):
    return SharedClock(sim_clock)


@pytest.fixture
def sim(sim_clock, clock):
    with Simulator(
        api_key=SIM_KEY,
        instance_id=FIRST,
        clock=sim_clock,
        wall_clock=clock.now,  # vast.ai's dates on the panel's clock
        gpu_taken=True,  # someone else rents the first instance's GPU
        schedule_delay=2.0,
        create_delay=5.0,
        load_delay=20.0,
        warm_delay=10.0,
        stop_delay=1.0,
    ) as simulator:
        yield simulator


@pytest.fixture
def make_panel(sim, clock, tmp_path):
    apps = []

    def make(**env: str):
        config = config_from(
            {
                "VAST_URL": sim.url,
                "VAST_API_KEY": SIM_KEY,
                "VAST_INSTANCE_ID": str(FIRST),
                "CONTROL_API_KEY": CONTROL_KEY,
                "VAST_DB_PATH": str(tmp_path / "panel.db"),
                "VAST_STATUS_TTL_S": "0",
                **SIMULATED_INSTANCE,
                **env,
            }
        )
        app = create_app(config, clock=clock)
        apps.append(app)
        return app.extensions["vastpanel"]

    yield make
    for app in apps:
        app.extensions["vastpanel"].store.close()


@pytest.fixture
def panel(make_panel):
    return make_panel()


def events(panel) -> list[str]:
    return [e.event for e in reversed(panel.audit.entries(200))]


def stuck_start(panel, clock) -> None:
    """Start the first instance on its taken machine: vast.ai queues it."""
    panel.power.power_on("api", wait_for_health=False)
    clock.advance(2.0)
    assert panel.instance.state().status == "scheduling"
    assert panel.mover.stuck() is not None and panel.mover.stuck().queued


def advance_until(panel, clock, state: str, *, steps: int = 50):
    """Run the move job until the move reaches a step; return the move there."""
    for _ in range(steps):
        move = panel.mover.advance()
        if move.state == state:
            return move
        assert move.active, f"the move ended before {state}: {move}"
        clock.advance(2.0)
    raise AssertionError(f"the move never reached {state}")


def drive(panel, clock, *, steps: int = 100, every: float = 2.0):
    """Take the move's steps as the leader's move job would, until it ends; return it."""
    move = None
    for _ in range(steps):
        move = panel.mover.advance()
        if move is None or not move.active:
            return move
        clock.advance(every)
    raise AssertionError(f"the move did not end: {move}")


def test_the_recipe_is_taken_from_vast_ai_and_its_secrets_never_shown(panel, sim, caplog):
    caplog.set_level(logging.INFO)
    recipe = panel.recipes.get()
    shown = sim.instance(FIRST)
    assert recipe.image == shown["image_uuid"] and recipe.gpu_name == shown["gpu_name"]
    assert [list(p) for p in recipe.env] == shown["extra_env"]  # port entries included
    assert recipe.max_dph == pytest.approx(1.25 * shown["dph_total"], abs=1e-4)
    assert recipe.min_reliability == 0.98 and recipe.verified_only
    assert recipe.rebuild_problem() is None  # a public image
    env = [*map(list, recipe.env), ["HF_TOKEN", HF_TOKEN], ["MODEL", "sim-model"]]
    edited = panel.recipes.edit("api", {"env": env, "max_dph": 0.3})
    assert ("HF_TOKEN", HF_TOKEN) in edited.env  # kept for a create
    public = edited.public()
    assert ["HF_TOKEN", "***"] in public["env"] and ["MODEL", "sim-model"] in public["env"]
    assert HF_TOKEN not in str(public)
    again = panel.recipes.edit("admin", {"env": public["env"]})  # *** keeps the stored value
    assert ("HF_TOKEN", HF_TOKEN) in again.env
    entry = panel.audit.entries(1)[0]
    assert entry.event == "recipe_edited" and entry.meta == {"fields": "env,max_dph"}
    for entry in panel.audit.entries(50):
        assert HF_TOKEN not in str(entry.meta)
    panel.audit.record("recipe_edited", "api", fields=f"token {HF_TOKEN}")  # a slip: redacted
    assert HF_TOKEN not in caplog.text


def test_bad_recipe_edits_name_the_field_and_change_nothing(panel):
    before = panel.recipes.get()
    for changes, field in (
        ({"num_gpus": 0}, "num_gpus"),
        ({"min_reliability": 1.5}, "min_reliability"),
        ({"regions": ["Germany"]}, "regions"),
        ({"copy_paths": ["/root"]}, "copy_paths"),
        ({"env": [["HF_TOKEN", "***"]]}, "env"),  # no stored value to keep
        ({"nonsense": 1}, "nonsense"),
    ):
        with pytest.raises(InvalidRequest, match=field):
            panel.recipes.edit("api", changes)
    assert panel.recipes.get() == before


def test_a_private_image_without_its_login_cannot_be_moved(panel, clock):
    panel.recipes.edit("api", {"image": "registry.example.com/team/llm:1", "private_image": True})
    problem = panel.recipes.get().rebuild_problem()
    assert "registry.example.com" in problem and "image_login" in problem
    stuck_start(panel, clock)
    with pytest.raises(MoveRefused, match="private"):
        panel.mover.request("api")
    panel.recipes.edit("api", {"image_login": "-u me -p secret registry.example.com"})
    assert panel.recipes.get().rebuild_problem() is None
    assert panel.recipes.get().public()["image_login"] == "***"


def test_a_stuck_start_moves_to_the_cheapest_equivalent_offer(panel, sim, clock):
    stuck_start(panel, clock)
    offers = panel.mover.offers()
    assert offers and all(o.machine_id != sim.machine_id for o in offers)
    assert [o.dph_total for o in offers] == sorted(o.dph_total for o in offers)
    move = panel.mover.request("admin")
    assert move.state == "requested" and move.old_id == FIRST
    with pytest.raises(MoveRefused, match="under way"):
        panel.mover.request("admin")
    done = drive(panel, clock)
    assert done.state == "done", done.error
    assert done.new_machine == offers[0].machine_id and done.new_dph == offers[0].dph_total
    assert panel.instance.current_id() == done.new_id != FIRST
    state = panel.instance.state()
    assert state.status == "running" and state.instance_id == done.new_id
    assert state.endpoint_base_url is not None
    assert panel.power.session_healthy(state, panel.status.current_session())
    old = sim.instance(FIRST)
    assert old["intended_status"] == "stopped"  # the old start was cancelled, never ran
    assert [e for e in events(panel) if e.startswith("move")] == [
        "move_started",
        "move_old_stopped",
        "move_created",
        "move_completed",
    ]
    completed = next(e for e in panel.audit.entries(50) if e.event == "move_completed")
    assert completed.meta["old_machine_id"] == sim.machine_id
    assert completed.meta["new_machine_id"] == offers[0].machine_id
    assert completed.meta["old_instance"] == "kept"
    known = {k.id: k.state for k in panel.mover.known_instances()}
    assert known == {FIRST: "kept", done.new_id: "current"}
    session = panel.status.current_session()
    assert session is not None and session.instance_id == done.new_id


def test_an_offer_that_vanishes_between_search_and_create_is_skipped(panel, sim, clock):
    stuck_start(panel, clock)
    search = panel.client.search_offers
    chosen = []

    def search_then_someone_rents_the_best(query):
        offers = search(query)
        best = min(offers, key=lambda o: (o["dph_total"], -o["reliability2"]))
        chosen.append(best["id"])
        requests.post(f"{sim.url}/_sim/market", json={"action": "withdraw", "offer_id": best["id"]})
        return offers

    panel.client.search_offers = search_then_someone_rents_the_best
    panel.mover.request("api")
    done = drive(panel, clock)
    first_choice = chosen[0]
    assert done.state == "done", done.error
    failed = [e for e in panel.audit.entries(50) if e.event == "move_offer_failed"]
    assert [e.meta["offer_id"] for e in failed] == [first_choice]
    assert done.new_machine != failed[0].meta["machine_id"]


def test_a_create_whose_answer_was_lost_is_found_by_its_label_not_made_twice(panel, sim, clock):
    stuck_start(panel, clock)
    client = panel.client
    create = client.create_instance

    def create_then_lose_the_answer(offer_id, request):
        create(offer_id, request)
        raise VastError("vast.ai did not answer in time", kind=VastErrorKind.UNREACHABLE)

    client.create_instance = create_then_lose_the_answer
    panel.mover.request("api")
    move = advance_until(panel, clock, "creating")
    assert move.creating_offer is not None  # sent, its answer lost
    client.create_instance = create
    done = drive(panel, clock)
    assert done.state == "done", done.error
    assert len(sim.instances()) == 2  # the first one and the one create made: no second
    assert done.tries == 1


def test_the_old_instance_is_stopped_again_if_vast_ai_was_slow_to_stop_it(panel, sim, clock):
    stuck_start(panel, clock)
    panel.mover.request("api")
    advance_until(panel, clock, "booting")
    sim.free_gpu()  # the other renter leaves: the old start (not yet stopped) would run
    sim.external("start", FIRST)
    clock.advance(30)
    assert sim.instance(FIRST)["actual_status"] == "running"
    done = drive(panel, clock)
    assert done.state == "done", done.error
    again = [e for e in panel.audit.entries(50) if e.event == "move_old_stopped"]
    assert any(e.meta.get("again") for e in again)
    clock.advance(5)
    assert sim.instance(FIRST)["intended_status"] == "stopped"
    running = [i for i in sim.instances() if i["actual_status"] == "running"]
    assert [i["id"] for i in running] == [done.new_id]


def test_a_stop_during_the_move_stops_the_new_instance_and_ends_the_move(panel, sim, clock):
    stuck_start(panel, clock)
    panel.mover.request("api")
    move = advance_until(panel, clock, "booting")
    with pytest.raises(Exception, match="under way"):
        panel.power.power_on("api", wait_for_health=False)
    panel.power.power_off("api")
    failed = panel.mover.latest()
    assert failed.state == "failed" and "power-off" in failed.error
    clock.advance(5)
    assert sim.instance(move.new_id)["intended_status"] == "stopped"
    assert {k.id: k.state for k in panel.mover.known_instances()}[move.new_id] == "stopped"
    assert panel.instance.current_id() == FIRST  # no switch
    assert sim.instance(move.new_id) is not None  # stopped, never destroyed by a failed move


def test_the_old_instance_is_kept_or_destroyed_as_set_and_a_kept_one_on_a_click(
    make_panel, sim, clock
):
    panel = make_panel(VAST_MOVE_OLD="destroy")
    stuck_start(panel, clock)
    panel.mover.request("api")
    done = drive(panel, clock)
    assert done.state == "done" and sim.instance(FIRST) is None
    assert {k.id: k.state for k in panel.mover.known_instances()}[FIRST] == "destroyed"
    with pytest.raises(InvalidRequest, match="controls"):
        panel.mover.destroy("admin", done.new_id)


def test_a_kept_instance_is_destroyed_only_on_a_click(panel, sim, clock):
    stuck_start(panel, clock)
    panel.mover.request("api")
    done = drive(panel, clock)
    assert sim.instance(FIRST) is not None  # kept: stopped, storage still billed
    panel.mover.destroy("admin", FIRST)
    assert sim.instance(FIRST) is None
    entry = panel.audit.entries(1)[0]
    assert (entry.event, entry.actor, entry.meta["instance_id"]) == (
        "instance_destroyed",
        "admin",
        FIRST,
    )
    assert done.new_id == panel.instance.current_id()


def test_copy_paths_come_along_and_a_failed_copy_fails_the_move(make_panel, sim, clock):
    panel = make_panel(VAST_MOVE_COPY_PATHS="/workspace/")
    sim_files = sim.files(FIRST)
    assert any(p.startswith("/workspace/") for p in sim_files)
    stuck_start(panel, clock)
    panel.mover.request("api")
    done = drive(panel, clock)
    assert done.state == "done", done.error
    copied = {p: t for p, t in sim.files(done.new_id).items() if p.startswith("/workspace/")}
    assert copied == {p: t for p, t in sim_files.items() if p.startswith("/workspace/")}
    assert "move_copied" in events(panel)


def test_auto_moves_a_stuck_start_from_the_watchdogs_look(make_panel, sim, clock):
    panel = make_panel(VAST_MOVE="auto")
    watchdog = watchdog_for(panel)
    stuck_start(panel, clock)
    watchdog.look()  # the leader's look sees the stuck start and asks for a move
    move = panel.mover.latest()
    assert move is not None and move.actor == "system"
    assert drive(panel, clock).state == "done"


def test_ask_never_moves_by_itself_and_off_refuses(make_panel, clock):
    panel = make_panel()
    stuck_start(panel, clock)
    watchdog_for(panel).look()
    assert panel.mover.latest() is None
    off = make_panel(VAST_MOVE="off", VAST_DB_PATH=str(panel.config.db_path) + "-off")
    with pytest.raises(MoveRefused, match="off"):
        off.mover.request("api")


def test_a_spent_budget_refuses_a_move(make_panel, clock):
    panel = make_panel(VAST_BUDGET_USD="0.0001", VAST_BUDGET_PERIOD="day")
    stuck_start(panel, clock)
    clock.advance(3600)
    panel.instance.state()  # books an hour of storage: the budget is spent
    with pytest.raises(MoveRefused, match="budget"):
        panel.mover.request("api")
    assert store.current_session(panel.store.db) is None


def test_the_dead_man_switch_follows_the_move(make_panel, sim, clock):
    secret = "agent-secret-0123456789abcdef"
    panel = make_panel(VAST_AGENT_SECRET=secret)
    stuck_start(panel, clock)
    panel.mover.request("api")
    done = drive(panel, clock)
    assert done.state == "done", done.error
    created = sim.requests(method="PUT", path=f"/api/v0/asks/{done.candidates[0]['id']}/")
    assert created and created[-1]["json"]["env"]["VAST_AGENT_SECRET"] == secret
    assert dict(sim.instance(done.new_id)["extra_env"])["VAST_AGENT_SECRET"] == secret
    assert secret not in str(panel.recipes.get().public())
    sim.clear_requests()
    state = panel.instance.state()
    panel.agent.send_heartbeat(state, panel.status.current_session(), None)
    beats = [r for r in sim.llm_requests(method="POST") if r["path"] == "/vastpanel/heartbeat"]
    assert beats and state.endpoint_base_url == sim.llm_url_of(done.new_id)


def test_each_instance_keeps_its_own_costs_across_a_move_and_the_charges_of_both_are_read(
    panel, sim, clock
):
    stuck_start(panel, clock)
    panel.mover.request("api")
    done = drive(panel, clock)
    assert done.state == "done"
    db = panel.store.db
    old = sim.instance(FIRST)
    assert old["actual_status"] == "stopped"  # kept: storage still billed
    panel.instance.state(fresh=True)  # the new instance, read as the panel controls it
    new = sim.instance(done.new_id)
    assert new["actual_status"] == "running"
    switched = clock.now()

    clock.advance(3600.0)
    panel.instance.state(fresh=True)
    hour = switched, clock.now()
    old_gpu, old_storage = booked_between(db, *hour, FIRST)
    new_gpu, new_storage = booked_between(db, *hour, done.new_id)
    assert old_gpu == 0.0
    assert old_storage == pytest.approx(old["storage_total_cost"], rel=0.01)
    assert new_gpu == pytest.approx(new["dph_base"], rel=0.01)
    assert new_storage == pytest.approx(new["storage_total_cost"], rel=0.01)
    # The budget's burn is what is billed now: the new instance and the kept one's storage.
    rates = panel.costs.current_rates()
    assert rates.gpu_dph + rates.storage_dph == pytest.approx(
        new["dph_base"] + new["storage_total_cost"] + old["storage_total_cost"], rel=0.01
    )
    # The new instance's GPU time is booked from its first second, before the switch.
    assert booked_between(db, done.requested_at, switched, done.new_id)[0] > 0

    panel.mover.destroy("admin", FIRST)
    destroyed = clock.now()
    clock.advance(3600.0)
    panel.instance.state(fresh=True)
    assert booked_between(db, destroyed, clock.now(), FIRST) == (0.0, 0.0)

    status = panel.costs.read_charges()
    assert status.error is None, status
    sources = {w.source for w in ledger.read_billed_windows(db)}
    assert {f"instance-{FIRST}", f"instance-{done.new_id}"} <= sources
    # Each contract beside its own instance's estimate: the new one's is not the sum of both.
    checks = {c.window.source: c for c in panel.costs.contract_checks()}
    new_check = checks[f"instance-{done.new_id}"]
    assert new_check.row.difference_pct is not None, new_check
    assert abs(new_check.row.difference_pct) < 5, new_check
