"""The dead-man switch on the instance (deploy/instance/vastpanel_agent.py), piece by piece.

The agent runs in this process on a moved clock; everything it talks to is real HTTP on
loopback: its own heartbeat server, a metrics server serving exposition text the test sets,
and the vast.ai simulator it stops its instance at.
"""

from __future__ import annotations

import configparser
import json
import logging
import threading
from pathlib import Path

import pytest
import requests
import yaml

from support.agent import (
    AGENT_FILE,
    MetricsServer,
    exposition,
    load_agent_module,
    replay,
    send_heartbeat,
)
from vastpanel.domain.agent_link import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature
from vastpanel.simulator import Simulator

agent_mod = load_agent_module()
DEPLOY = AGENT_FILE.parent
SECRET = "agent-secret-0123456789abcdef"
INSTANCE_ID = 4711
GRACE_S = 600.0
IDLE_S = 300.0


class Clock:
    """Epoch seconds that move only when told."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def metrics():
    server = MetricsServer()
    yield server
    server.close()


@pytest.fixture
def sim():
    with Simulator(
        api_key="account-key-0123456789", instance_id=INSTANCE_ID, initial_state="running"
    ) as simulator:
        yield simulator


def make_config(tmp_path: Path, sim: Simulator, metrics: MetricsServer, **overrides):
    values = {
        "secret": SECRET,
        "container_id": str(INSTANCE_ID),
        "container_api_key": sim.backend.instance_api_key,
        "grace_s": GRACE_S,
        "idle_s": IDLE_S,
        "vast_url": sim.url,
        "metrics_url": metrics.url,
        "state_path": str(tmp_path / "agent" / "state.json"),
        "listen_port": 0,
        "boot_id": "boot-1",
        **overrides,
    }
    return agent_mod.AgentConfig(**values)


@pytest.fixture
def make_agent(tmp_path, sim, metrics):
    def make(clock=None, dry_run=False, **overrides):
        config = make_config(tmp_path, sim, metrics, **overrides)
        return agent_mod.Agent(config, dry_run=dry_run, clock=clock or Clock(1_800_000_000.0))

    return make


@pytest.fixture
def served(make_agent):
    """An agent serving heartbeats over HTTP; yields (agent, heartbeat URL)."""
    servers = []

    def serve(agent):
        server = agent_mod.make_server(agent)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}{agent_mod.HEARTBEAT_PATH}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def instance_stops(sim: Simulator) -> list[dict]:
    return [r for r in sim.requests("PUT") if (r.get("json") or {}).get("state") == "stopped"]


# --- the metrics ---------------------------------------------------------------------------------


def test_parse_metrics_sums_over_labels_and_ignores_the_rest():
    text = exposition(running=2, waiting=1, success=7, prompt=100, generation=250)
    text += 'vllm:num_requests_running{engine="2",model_name="a \\"quoted\\" }"} 3 1700000000000\n'
    text += "vllm:num_requests_waiting NaN\nnot a sample line\nvllm:other_total 99\n"
    metrics = agent_mod.parse_metrics(text)
    assert metrics.running == 5 and metrics.waiting == 1 and metrics.busy
    assert metrics.counters == {
        "vllm:request_success_total": 7.0,  # _created samples are not counts
        "vllm:prompt_tokens_total": 100.0,
        "vllm:generation_tokens_total": 250.0,
    }
    assert not agent_mod.parse_metrics(exposition()).busy


def test_parse_metrics_refuses_text_that_is_not_vllm():
    with pytest.raises(ValueError):
        agent_mod.parse_metrics("# just a comment\nhttp_requests_total 3\n")


@pytest.mark.parametrize(
    ("baseline", "now", "moved"),
    [
        (None, {"a": 5.0}, False),  # the first reading is only a baseline
        ({"a": 5.0}, {"a": 5.0}, False),
        ({"a": 5.0}, {"a": 6.0}, True),
        ({"a": 5.0}, {"a": 0.0}, False),  # vLLM restarted, nothing done since
        ({"a": 5.0}, {"a": 2.0}, True),  # vLLM restarted and served 2 since
    ],
)
def test_counters_moved(baseline, now, moved):
    assert agent_mod.counters_moved(baseline, now) is moved


@pytest.mark.parametrize(
    ("silent", "idle", "busy", "due"),
    [
        (GRACE_S, IDLE_S, False, True),
        (GRACE_S - 1, IDLE_S + 999, False, False),  # a heartbeat within the grace time
        (GRACE_S + 999, IDLE_S - 1, False, False),  # the LLM was used lately
        (GRACE_S + 999, IDLE_S + 999, True, False),  # a request in flight is never cut
    ],
)
def test_stop_reason(silent, idle, busy, due):
    now = 10_000.0
    reason = agent_mod.stop_reason(
        now=now, last_heartbeat=now - silent, last_activity=now - idle, busy=busy,
        grace_s=GRACE_S, idle_s=IDLE_S,
    )  # fmt: skip
    assert (reason is not None) is due


# --- heartbeats ----------------------------------------------------------------------------------


def test_a_heartbeat_signed_by_the_panel_is_accepted_and_answers_the_agents_settings(
    make_agent, served
):
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock)
    url = served(agent)
    clock.now += 500
    answer = send_heartbeat(url, SECRET, at=clock.now - 1, idle_deadline=clock.now + 60)
    assert answer.status_code == 200
    body = answer.json()
    assert body["ok"] is True and body["agent_version"] == agent_mod.VERSION
    assert body["grace_minutes"] == GRACE_S / 60 and body["idle_minutes"] == IDLE_S / 60
    assert agent.state.last_heartbeat == clock.now
    assert agent.state.panel_idle_deadline == clock.now + 60
    saved = json.loads(Path(agent.config.state_path).read_text())
    assert saved["last_heartbeat"] == clock.now


def test_forged_stale_and_replayed_heartbeats_are_refused_and_move_nothing(make_agent, served):
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock)
    url = served(agent)
    good = send_heartbeat(url, SECRET, at=clock.now)
    assert good.status_code == 200
    clock.now += 60
    refused = {
        "forged": send_heartbeat(url, "not-the-secret-0123456789", at=clock.now),
        "stale": send_heartbeat(url, SECRET, at=clock.now - 121),
        "future": send_heartbeat(url, SECRET, at=clock.now + 121),
        "replayed": replay(url, good),
        "older": send_heartbeat(url, SECRET, at=clock.now - 61),  # before the accepted one
        "unsigned": requests.post(url, data=b"{}", timeout=10),
    }
    for why, answer in refused.items():
        assert answer.status_code == 401, why
        assert answer.json()["ok"] is False, why
    assert agent.state.last_heartbeat == clock.now - 60  # the good one, still


def test_bad_bodies_methods_and_paths(make_agent, served):
    agent = make_agent(Clock(1_800_000_000.0))
    url = served(agent)
    assert requests.get(url, timeout=10).status_code == 404
    assert requests.post(url.replace("heartbeat", "other"), timeout=10).status_code == 404
    assert requests.post(url, data=b"x" * 5000, timeout=10).status_code == 413
    for body in (b"[1]", b"not json", b'{"idle_deadline": "soon"}'):
        ts = "1800000000.000"
        headers = {
            TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: signature(SECRET, ts, body),
        }  # the panel's
        assert requests.post(url, data=body, headers=headers, timeout=10).status_code == 400


# --- state across restarts and boots -------------------------------------------------------------


def test_a_restart_keeps_the_timers_and_a_new_boot_resets_them(make_agent):
    clock = Clock(1_800_000_000.0)
    first = make_agent(clock)
    accepted = first.receive_heartbeat(*signed(clock.now, b"{}"))
    assert accepted.status == 200
    clock.now += 3000
    restarted = make_agent(clock)  # the same boot: the process was restarted
    assert restarted.state.last_heartbeat == clock.now - 3000
    booted = make_agent(clock, boot_id="boot-2")  # the machine or container started again
    assert booted.state.last_heartbeat == clock.now
    assert booted.state.last_activity == clock.now
    # A heartbeat captured before the boot stays spent.
    assert booted.receive_heartbeat(*signed(clock.now - 3000, b"{}")).status == 401
    leftovers = [p.name for p in Path(booted.config.state_path).parent.iterdir()]
    assert leftovers == ["state.json"]  # written through a temporary file, replaced whole


def test_an_unreadable_state_file_starts_afresh(make_agent, tmp_path):
    path = tmp_path / "agent" / "state.json"
    path.parent.mkdir()
    path.write_text("{not json")
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock)
    assert agent.state.last_heartbeat == clock.now


def test_boot_id_reads_the_kernel_and_pid_1():
    boot, start = agent_mod.boot_id().split(":")
    assert boot and start


def signed(at: float, body: bytes) -> tuple[str, str, bytes]:
    timestamp = f"{at:.3f}"
    return timestamp, agent_mod.signature(SECRET, timestamp, body), body


# --- the check and the stop ----------------------------------------------------------------------


def test_silent_panel_and_idle_llm_stop_the_instance_with_its_own_key(make_agent, sim, metrics):
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock)
    assert agent.check() is None
    clock.now += IDLE_S  # idle long enough, but the panel's silence is still within grace
    assert agent.check() is None
    clock.now += GRACE_S - IDLE_S
    reason = agent.check()
    assert reason and "no valid heartbeat" in reason
    (stop,) = instance_stops(sim)
    assert stop["auth"] == "instance" and stop["path"] == f"/api/v0/instances/{INSTANCE_ID}/"
    assert sim.instance()["intended_status"] == "stopped"
    clock.now += 60
    assert agent.check() is None  # accepted once: not sent again at every check
    assert len(instance_stops(sim)) == 1


def test_a_busy_llm_is_never_cut_and_finished_requests_restart_the_idle_time(
    make_agent, sim, metrics
):
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock)
    metrics.text = exposition(running=1)
    clock.now += GRACE_S + IDLE_S + 3600
    assert agent.check() is None  # a request in flight for an hour: still no stop
    metrics.text = exposition(running=0, success=1, generation=900)
    clock.now += 30
    assert agent.check() is None
    clock.now += IDLE_S - 1
    assert agent.check() is None
    clock.now += 1
    assert agent.check()
    assert len(instance_stops(sim)) == 1


def test_heartbeats_arriving_mean_no_stop(make_agent, sim):
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock)
    for _ in range(10):
        clock.now += GRACE_S - 1
        assert agent.receive_heartbeat(*signed(clock.now, b"{}")).status == 200
        assert agent.check() is None
    assert instance_stops(sim) == []


def test_unreadable_metrics_count_as_idle(make_agent, sim, metrics):
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock)
    metrics.status = 503
    clock.now += GRACE_S
    assert agent.check()
    assert len(instance_stops(sim)) == 1


def test_dry_run_and_switched_off_send_nothing(make_agent, sim, caplog):
    clock = Clock(1_800_000_000.0)
    with caplog.at_level(logging.INFO, logger="vastpanel-agent"):
        dry = make_agent(clock, dry_run=True)
        off = make_agent(clock, enabled=False, state_path=dry.config.state_path + ".off")
        clock.now += GRACE_S
        reason = dry.check()
        assert reason and "no valid heartbeat" in reason
        assert off.check() is None
    assert instance_stops(sim) == []
    assert "dry run: would stop instance" in caplog.text
    assert "AGENT_ENABLED is false" in caplog.text
    assert sim.backend.instance_api_key not in caplog.text and SECRET not in caplog.text


def test_429_and_faults_are_retried_with_back_off(make_agent, sim, monkeypatch, caplog):
    monkeypatch.setattr(agent_mod, "FIRST_BACKOFF_S", 0.05)
    sim.add_fault("rate_limit", method="PUT", body={"detail": "too frequent threshold=0.1"})
    sim.add_fault("html", method="PUT")
    sim.add_fault("response", method="PUT", status=503, body="upstream down")
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock)
    clock.now += GRACE_S
    with caplog.at_level(logging.WARNING, logger="vastpanel-agent"):
        assert agent.check()
    puts = sim.requests("PUT")
    assert [r["status"] for r in puts] == [429, 502, 503, 200]
    assert puts[1]["time"] - puts[0]["time"] >= 0.09  # the threshold vast.ai named
    assert "retry in 0.1 s" in caplog.text
    assert "stop accepted by vast.ai (attempt 4)" in caplog.text


def test_a_rejected_key_is_not_retried(make_agent, sim, caplog):
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock, container_api_key="not-the-instance-key")
    clock.now += GRACE_S
    with caplog.at_level(logging.ERROR, logger="vastpanel-agent"):
        agent.check()
    assert [r["status"] for r in sim.requests("PUT")] == [401]
    assert "rejected CONTAINER_API_KEY" in caplog.text
    assert "not-the-instance-key" not in caplog.text


def test_a_heartbeat_during_the_retries_calls_the_stop_off(make_agent, sim, monkeypatch):
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock)
    monkeypatch.setattr(agent_mod, "FIRST_BACKOFF_S", 0.05)
    sim.add_fault("response", method="PUT", status=503, body="down", count=None)
    clock.now += GRACE_S
    original = agent.stopping.wait

    def heartbeat_while_waiting(seconds):
        agent.receive_heartbeat(*signed(clock.now, b"{}"))
        return original(seconds)

    monkeypatch.setattr(agent.stopping, "wait", heartbeat_while_waiting)
    agent.check()
    assert [r["status"] for r in sim.requests("PUT")] == [503]


# --- the simulator's instance key ----------------------------------------------------------------


def test_the_instance_key_may_only_stop_its_own_instance(sim):
    key = {"Authorization": f"Bearer {sim.backend.instance_api_key}"}
    url = f"{sim.url}/api/v0/instances/{INSTANCE_ID}/"
    assert requests.get(url, headers=key, timeout=10).status_code == 401
    assert requests.put(url, json={"state": "running"}, headers=key, timeout=10).status_code == 401
    other = f"{sim.url}/api/v0/instances/{INSTANCE_ID + 1}/"
    assert (
        requests.put(other, json={"state": "stopped"}, headers=key, timeout=10).status_code == 401
    )
    assert sim.instance()["intended_status"] == "running"
    ok = requests.put(url, json={"state": "stopped"}, headers=key, timeout=10)
    assert ok.status_code == 200 and ok.json() == {"success": True}
    assert [r["auth"] for r in sim.requests("PUT")] == [None, None, "instance"]
    assert sim.backend.instance_api_key not in json.dumps(sim.requests())


# --- configuration and deploy files --------------------------------------------------------------


def base_env(**overrides) -> dict[str, str]:
    env = {"VAST_AGENT_SECRET": SECRET, "CONTAINER_ID": "4711", "CONTAINER_API_KEY": "inst-key-1"}
    return {**env, **overrides}


def test_config_defaults():
    config = agent_mod.AgentConfig.from_env(base_env())
    assert (config.grace_s, config.idle_s, config.check_s) == (3600.0, 1800.0, 30.0)
    assert config.vast_url == "https://console.vast.ai"
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 8002)
    assert config.enabled and config.boot_id is None
    assert "inst-key-1" not in repr(config) and SECRET not in repr(config)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("VAST_AGENT_SECRET", "short"),
        ("CONTAINER_ID", "abc"),
        ("CONTAINER_API_KEY", ""),
        ("AGENT_GRACE_MINUTES", "0"),
        ("AGENT_IDLE_MINUTES", "soon"),
        ("AGENT_LISTEN", "8002"),
        ("AGENT_ENABLED", "maybe"),
        ("VAST_URL", "console.vast.ai"),
    ],
)
def test_config_errors_name_the_variable(name, value):
    with pytest.raises(agent_mod.ConfigError, match=name):
        agent_mod.AgentConfig.from_env(base_env(**{name: value}))


def test_main_exits_2_on_a_bad_setting(monkeypatch):
    monkeypatch.delenv("VAST_AGENT_SECRET", raising=False)
    assert agent_mod.main([]) == 2


def test_compose_runs_the_agent_beside_vllm_and_nginx():
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    agent = services["agent"]
    assert agent["restart"] == "always" and agent["pid"] == "host"
    assert "./vastpanel_agent.py:/opt/vastpanel-agent/vastpanel_agent.py:ro" in agent["volumes"]
    assert agent["command"][-1] == "/opt/vastpanel-agent/vastpanel_agent.py"
    env = agent["environment"]
    assert env["AGENT_METRICS_URL"] == "http://vllm:8000/metrics"
    for name in ("VAST_AGENT_SECRET", "CONTAINER_ID", "CONTAINER_API_KEY"):
        assert env[name].startswith("${" + name + ":?")
    assert "ports" not in agent  # reachable only through nginx
    nginx = (DEPLOY / "health-nginx.conf").read_text()
    assert "set $agent_upstream agent:8002;" in nginx
    assert "location = /vastpanel/heartbeat {" in nginx


def test_systemd_unit_restarts_always():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(DEPLOY / "vastpanel-agent.service", encoding="utf-8")
    service = parser["Service"]
    assert service["Restart"] == "always"
    assert service["ExecStart"] == "/usr/bin/python3 /opt/vastpanel-agent/vastpanel_agent.py"
    assert service["StateDirectory"] == "vastpanel-agent"
    assert parser["Install"]["WantedBy"] == "multi-user.target"
