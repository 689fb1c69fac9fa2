"""The panel against the simulator in each state vast.ai can show, rate limits on as on vast.ai.

The panel and the simulator share one movable clock (the panel's sleeps move the simulator's
time too), so the panel's waits for vast.ai's 2 s / 1 s intervals are exact and instant.
"""

from __future__ import annotations

import pytest

from conftest import config_from
from support import store
from support.clock import SharedClock
from support.liveserver import SIMULATED_INSTANCE
from vastpanel import create_app
from vastpanel.simulator import ManualClock, Simulator
from vastpanel.watchdog.looks import watchdog_for

SIM_KEY = "sim-states-key-0123456789"
CONTROL_KEY = "states-control-key-0123456789"
INSTANCE_ID = 31337
IDLE_S = 30 * 60


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
        instance_id=INSTANCE_ID,
        clock=sim_clock,
        initial_state="running",
        load_delay=20.0,
    ) as simulator:
        assert simulator.state()["rate_limit"] == {"GET": 2.0, "PUT": 1.0}  # the default
        yield simulator


@pytest.fixture
def panel(sim, clock, tmp_path):
    config = config_from(
        {
            "VAST_URL": sim.url,
            "VAST_API_KEY": SIM_KEY,
            "VAST_INSTANCE_ID": str(INSTANCE_ID),
            "CONTROL_API_KEY": CONTROL_KEY,
            "VAST_DB_PATH": str(tmp_path / "panel.db"),
            "VAST_STATUS_TTL_S": "0",  # ask vast.ai on every read: meet its rate limit
            **SIMULATED_INSTANCE,
        }
    )
    app = create_app(config, clock=clock)
    panel = app.extensions["vastpanel"]
    yield panel
    panel.store.close()


def events(panel) -> list[str]:
    return [e.event for e in reversed(panel.audit.entries(100))]


def test_frozen_is_billed_gpu_time_and_shown(panel, sim, clock):
    assert panel.instance.state().status == "running"
    sim.external("frozen")
    clock.advance(2.0)  # the panel asks vast.ai at most every 2 s (its GET interval)
    state = panel.instance.state()
    assert (state.status, state.intended_status) == ("frozen", "frozen")
    assert "GPU is billed" in state.message
    assert store.current_session(panel.store.db) is not None


@pytest.mark.parametrize("down", ["unknown", "offline"])
def test_unknown_and_offline_close_the_session_and_are_audited(panel, sim, clock, down):
    panel.instance.state()
    clock.advance(600)
    sim.external(down)
    state = panel.instance.state()
    assert state.status == down and "billed" in state.message
    assert store.current_session(panel.store.db) is None
    assert events(panel)[-2:] == ["session_closed", "instance_down"]
    assert panel.status.report().totals.runtime_seconds == pytest.approx(600, abs=5)


def test_an_unknown_instance_is_stopped_when_idle_offline_is_not(panel, sim, clock):
    watchdog = watchdog_for(panel)
    sim.external("offline")
    watchdog.look()
    clock.advance(IDLE_S + 10)
    watchdog.look()
    assert sim.requests(method="PUT") == []
    sim.external("unknown")
    clock.advance(2.0)
    watchdog.look()  # still down: the idle time counts from when it was first seen down
    assert [r["json"] for r in sim.requests(method="PUT")] == [{"state": "stopped"}]
    assert sim.instance()["actual_status"] == "stopped"


def test_created_is_a_start_under_way(panel, sim):
    sim.external("created")
    assert panel.instance.state().status == "creating"
    result = panel.power.power_on("api", wait_for_health=False)
    assert "already under way" in result.message
    assert sim.requests(method="PUT") == []


def test_rebooting_is_starting_not_idle(panel, sim, clock):
    watchdog = watchdog_for(panel)
    watchdog.look()
    clock.advance(IDLE_S - 5)
    sim.external("rebooting")
    clock.advance(10)  # past the idle deadline, but rebooting
    watchdog.look()
    assert panel.instance.state().status == "rebooting"
    assert "already under way" in panel.power.power_on("api", wait_for_health=False).message
    assert sim.requests(method="PUT") == []


def test_a_manual_stop_right_after_a_status_read_meets_no_502(panel, sim, clock):
    sim.set_timing(schedule_delay=0, load_delay=0)
    sim.external("stop")
    assert panel.instance.state().status == "stopped"
    sim.external("start")  # started in the console: running, the shared answer says stopped
    clock.advance(0.5)
    assert panel.instance.state().status == "stopped"  # a status read within vast.ai's 2 s
    result = panel.power.power_off("api")  # confirms "stopped" afresh: 429 first, then waits 2 s
    assert not result.already_stopped
    assert [r["status"] for r in sim.requests(method="GET")] == [200, 429, 200]
    assert [r["json"] for r in sim.requests(method="PUT")] == [{"state": "stopped"}]
    assert clock.slept == [2.0]
