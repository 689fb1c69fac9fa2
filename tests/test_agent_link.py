"""The panel's side of the dead-man switch: heartbeats from the watchdog's look to the real agent.

In this process: the app on a moved clock, the vast.ai simulator, and the real agent from
deploy/instance/ serving heartbeats on loopback, its port being the instance's health port.
"""

from __future__ import annotations

import threading

import pytest
from flask import render_template

from conftest import CONTROL_KEY, INSTANCE_ID, VAST_KEY, config_from
from support import store
from support.agent import MetricsServer, load_agent_module
from support.clock import FakeClock
from support.liveserver import SIMULATED_INSTANCE, free_port, running_simulator
from vastpanel import ConfigError, create_app
from vastpanel.config import Config
from vastpanel.watchdog.looks import watchdog_for
from vastpanel.web.pages import status_context

agent_mod = load_agent_module()
SECRET = "link-secret-0123456789abcdef"
GRACE_MINUTES = 10.0


@pytest.fixture
def sim():
    with running_simulator(VAST_KEY, INSTANCE_ID, rate_limit={}) as simulator:
        yield simulator


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def agent(tmp_path, sim, clock):
    """The real agent serving heartbeats where the instance's port 8001 leads."""
    metrics = MetricsServer()
    config = agent_mod.AgentConfig(
        secret=SECRET,
        container_id=str(INSTANCE_ID),
        container_api_key=sim.backend.instance_api_key,
        grace_s=GRACE_MINUTES * 60,
        idle_s=300.0,
        vast_url=sim.url,
        metrics_url=metrics.url,
        state_path=str(tmp_path / "agent.json"),
        listen_port=0,
        boot_id="b1",
    )
    agent = agent_mod.Agent(config, clock=clock.now)
    server = agent_mod.make_server(agent)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    sim.backend.host_ports[8001] = server.server_address[1]
    yield agent
    server.shutdown()
    server.server_close()
    metrics.close()


def make_app(tmp_path, sim, clock, **overrides):
    config = {
        "VAST_URL": sim.url,
        "VAST_API_KEY": VAST_KEY,
        "VAST_INSTANCE_ID": str(INSTANCE_ID),
        "CONTROL_API_KEY": CONTROL_KEY,
        "VAST_DB_PATH": str(tmp_path / "vastpanel.db"),
        "VAST_STATUS_TTL_S": "0",
        "VAST_AGENT_SECRET": SECRET,
        **SIMULATED_INSTANCE,
        **overrides,
    }
    return create_app(config_from(config), clock=clock)


def beat(panel):
    """Read the instance, as the watchdog's look does, then send the heartbeat."""
    panel.instance.state()
    return panel.agent.send_heartbeat(
        panel.instance.cached_state(),
        panel.status.current_session(),
        panel.idle.next_idle_deadline(),
    )


def status(app) -> dict:
    response = app.test_client().get("/infra/vast/status", headers={"X-API-Key": CONTROL_KEY})
    assert response.status_code == 200
    return response.get_json()


def events(panel, name: str):
    return [e for e in panel.audit.entries(100) if e.event == name]


def test_the_watchdogs_look_sends_a_signed_heartbeat_the_agent_accepts(tmp_path, sim, clock, agent):
    app = make_app(tmp_path, sim, clock)
    panel = app.extensions["vastpanel"]
    assert status(app)["agent"] is None  # running, nothing sent yet in this session
    clock.advance(30)
    look = watchdog_for(panel).look()
    assert look.leader and look.stopped is None
    assert agent.state.last_heartbeat == clock.now()
    assert agent.state.panel_idle_deadline == panel.idle.next_idle_deadline()
    assert status(app)["agent"] == "ok"
    report = panel.status.report().agent
    assert report.agent_version == agent_mod.VERSION and report.grace_minutes == GRACE_MINUTES


def test_the_page_shows_the_agent(tmp_path, sim, clock, agent):
    app = make_app(tmp_path, sim, clock)
    panel = app.extensions["vastpanel"]
    beat(panel)
    with app.test_request_context("/"):
        html = render_template("_status.html", standalone=True, **status_context())
    assert 'data-agent="ok"' in html
    assert f"agent {agent_mod.VERSION}" in html
    assert "stops the GPU after 10 min without heartbeat and 5 min idle" in html


def test_no_secret_no_heartbeat_and_status_off(tmp_path, sim, clock, agent):
    app = make_app(tmp_path, sim, clock, VAST_AGENT_SECRET="")
    panel = app.extensions["vastpanel"]
    before = agent.state.last_heartbeat
    clock.advance(30)
    assert beat(panel) is None
    assert agent.state.last_heartbeat == before
    assert status(app)["agent"] == "off"


def test_a_wrong_secret_is_refused_and_shown_unreachable(tmp_path, sim, clock, agent):
    app = make_app(tmp_path, sim, clock, VAST_AGENT_SECRET="another-secret-0123456789")
    panel = app.extensions["vastpanel"]
    first = beat(panel)
    assert first.failures == 1 and first.error == "HTTP 401: bad signature"
    assert status(app)["agent"] is None  # one failure may be the container still starting
    beat(panel)
    assert status(app)["agent"] == "unreachable"


def test_unreachable_is_audited_once_per_session(tmp_path, sim, clock):
    sim.backend.host_ports[8001] = free_port()  # nothing listens there
    app = make_app(tmp_path, sim, clock)
    panel = app.extensions["vastpanel"]
    for _ in range(4):
        clock.advance(60)
        beat(panel)
    (entry,) = events(panel, "agent_unreachable")
    assert entry.meta["failures"] == 2 and "cannot connect" in entry.meta["error"]
    assert SECRET not in str(entry.meta)
    # A new session may be audited again.
    panel.power.power_off("api")
    sim.external("start")
    clock.advance(60)  # the panel asks vast.ai at most every 2 s
    assert panel.instance.state().status == "running"
    for _ in range(3):
        clock.advance(60)
        beat(panel)
    assert len(events(panel, "agent_unreachable")) == 2


def test_a_switched_off_agent_shows_off(tmp_path, sim, clock, agent):
    object.__setattr__(agent.config, "enabled", False)
    app = make_app(tmp_path, sim, clock)
    beat(app.extensions["vastpanel"])
    assert status(app)["agent"] == "off"


def test_a_stop_seen_after_the_agents_grace_is_booked_as_the_agents(tmp_path, sim, clock, agent):
    app = make_app(tmp_path, sim, clock)
    panel = app.extensions["vastpanel"]
    beat(panel)
    clock.advance(GRACE_MINUTES * 60 + 1)
    sim.external("stop")  # as the agent would, with nobody telling the panel
    assert panel.instance.state().status == "stopped"
    (closed,) = events(panel, "session_closed")
    assert closed.actor == "agent" and closed.meta["stopped_by"] == "agent"
    assert closed.meta["agent_grace_minutes"] == GRACE_MINUTES
    (session,) = store.list_sessions(panel.store.db, 0)
    row = panel.store.db.execute(
        "SELECT closed_by FROM sessions WHERE id = ?", [session.id]
    ).fetchone()
    assert row[0] == "agent"
    with app.test_request_context("/"):
        html = render_template("_status.html", standalone=True, **status_context())
    assert "Stopped by the dead-man switch on the instance" in html


def test_a_stop_seen_within_the_grace_is_not_the_agents(tmp_path, sim, clock, agent):
    app = make_app(tmp_path, sim, clock)
    panel = app.extensions["vastpanel"]
    beat(panel)
    clock.advance(60)
    sim.external("stop")  # from vast.ai's console
    assert panel.instance.state().status == "stopped"
    (closed,) = events(panel, "session_closed")
    assert closed.actor == "system" and "stopped_by" not in closed.meta


def test_config_reads_the_secret_and_keeps_it_secret():
    config = Config.from_env({"VAST_AGENT_SECRET": SECRET})
    assert config.agent_secret == SECRET and SECRET in config.secrets
    with pytest.raises(ConfigError, match="VAST_AGENT_SECRET"):
        Config.from_env({"VAST_AGENT_SECRET": "short"})
