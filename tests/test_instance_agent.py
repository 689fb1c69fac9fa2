"""The dead-man switch on the instance (deploy/instance/vastpanel_agent.py), piece by piece.

The agent runs in this process on a moved clock; everything it talks to is real HTTP on
loopback: its own heartbeat server, a metrics server serving exposition text the test sets,
and the vast.ai simulator it stops its instance at.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
import yaml

from support import wait_for
from support.agent import (
    AGENT_FILE,
    MetricsServer,
    exposition,
    heartbeat_body,
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


def beat(url: str, secret: str = SECRET, **kwargs) -> requests.Response:
    """Send a heartbeat over HTTP as the panel watching this instance signs it."""
    return send_heartbeat(url, secret, instance_id=INSTANCE_ID, **kwargs)


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
    answer = beat(url, at=clock.now - 1, idle_deadline=clock.now + 60)
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
    good = beat(url, at=clock.now)
    assert good.status_code == 200
    clock.now += 60
    refused = {
        "forged": beat(url, "not-the-secret-0123456789", at=clock.now),
        "stale": beat(url, at=clock.now - 121),
        "future": beat(url, at=clock.now + 121),
        "replayed": replay(url, good),
        "older": beat(url, at=clock.now - 61),  # before the accepted one
        "unsigned": requests.post(url, data=b"{}", timeout=10),
    }
    for why, answer in refused.items():
        assert answer.status_code == 401, why
        assert answer.json()["ok"] is False, why
    assert agent.state.last_heartbeat == clock.now - 60  # the good one, still


def test_a_heartbeat_for_another_instance_is_refused_and_moves_nothing(make_agent, served):
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock)
    url = served(agent)
    before = dict(vars(agent.state))
    clock.now += 60
    for instance_id in (INSTANCE_ID + 1, None, True, "4711x"):
        answer = send_heartbeat(url, SECRET, instance_id=instance_id, at=clock.now)
        assert answer.status_code == 403, instance_id
        assert "this is instance 4711" in answer.json()["error"]
    assert vars(agent.state) == before  # no timer and no replay window moved
    assert beat(url, at=clock.now).status_code == 200  # the panel's own, with the same timestamp


def test_a_heartbeat_dated_ahead_is_refused_and_does_not_block_the_panels_next_ones(
    make_agent, served
):
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock)
    url = served(agent)
    ahead = beat(url, at=clock.now + 115)  # inside the 2 minutes, from the future
    assert ahead.status_code == 401 and "ahead of the agent's clock" in ahead.json()["error"]
    assert agent.state.last_signed_at is None and agent.state.last_heartbeat == clock.now
    clock.now += 30
    assert beat(url, at=clock.now).status_code == 200  # not taken for a replay
    assert beat(url, at=clock.now + agent_mod.MAX_AHEAD_S + 0.5).status_code == 401
    assert beat(url, at=clock.now + agent_mod.MAX_AHEAD_S).status_code == 200  # clock skew


def test_bad_bodies_methods_and_paths(make_agent, served):
    agent = make_agent(Clock(1_800_000_000.0))
    url = served(agent)
    assert requests.get(url, timeout=10).status_code == 404
    assert requests.post(url.replace("heartbeat", "other"), timeout=10).status_code == 404
    assert requests.post(url, data=b"x" * 5000, timeout=10).status_code == 413
    for body in (b"[1]", b"not json", b'{"instance_id": 4711, "idle_deadline": "soon"}'):
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
    accepted = first.receive_heartbeat(*signed(clock.now))
    assert accepted.status == 200
    clock.now += 3000
    restarted = make_agent(clock)  # the same boot: the process was restarted
    assert restarted.state.last_heartbeat == clock.now - 3000
    booted = make_agent(clock, boot_id="boot-2")  # the machine or container started again
    assert booted.state.last_heartbeat == clock.now
    assert booted.state.last_activity == clock.now
    # A heartbeat captured before the boot stays spent.
    assert booted.receive_heartbeat(*signed(clock.now - 3000)).status == 401
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


def signed(at: float, body: bytes | None = None) -> tuple[str, str, bytes]:
    """A heartbeat's timestamp, signature and body (by default the panel's for this instance)."""
    body = heartbeat_body(INSTANCE_ID) if body is None else body
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


def test_a_long_generation_is_never_cut_and_its_end_starts_the_idle_time(make_agent, sim, metrics):
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock)
    generated = 0
    for _ in range(int((GRACE_S + IDLE_S + 3600) / 30)):  # well past every limit
        generated += 40  # tokens flow at every read
        metrics.text = exposition(running=1, generation=generated)
        clock.now += 30
        assert agent.check() is None
        assert agent.describe()["llm_stalled"] is False
    metrics.text = exposition(running=0, success=1, generation=generated + 40)
    clock.now += 30
    assert agent.check() is None
    clock.now += IDLE_S - 1
    assert agent.check() is None
    clock.now += 1
    assert agent.check()
    assert len(instance_stops(sim)) == 1


STALL_S = 600.0  # the default, AGENT_STALL_MINUTES=10


def stuck_after_one_request(agent, metrics, clock) -> float:
    """Serve one request, then leave the gauge up as vLLM does when it is aborted.

    Returns when the counters last moved.
    """
    metrics.text = exposition(success=5, prompt=50, generation=500)
    assert agent.check() is None  # the baseline
    clock.now += 60
    metrics.text = exposition(running=1, success=5, prompt=60, generation=540)
    assert agent.check() is None
    moved_at = clock.now
    clock.now += 30
    metrics.text = exposition(running=1, success=5, prompt=60, generation=540)  # aborted: stuck
    return moved_at


def test_a_stuck_gauge_counts_as_idle_from_the_last_counter_move(make_agent, sim, metrics, caplog):
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock)
    booted = clock.now
    with caplog.at_level(logging.INFO, logger="vastpanel-agent"):
        moved_at = stuck_after_one_request(agent, metrics, clock)
        while clock.now < moved_at + STALL_S - 1:  # the gauge is believed for the stall time
            assert agent.check() is None
            assert agent.describe()["llm_stalled"] is False
            clock.now += 30
        clock.now = moved_at + STALL_S - 1
        assert agent.check() is None
        clock.now = moved_at + STALL_S
        # Stalled now; idle since the last move (longer than IDLE_S), silent since the boot.
        assert booted + GRACE_S <= clock.now
        reason = agent.check()
    assert reason and "1 running and 0 waiting but no counter moved" in reason
    assert "a stuck gauge, not work" in reason
    assert agent.state.last_activity == moved_at
    (stop,) = instance_stops(sim)
    assert stop["auth"] == "instance"
    assert caplog.text.count("LLM stalled: vLLM reports 1 running and 0 waiting") == 1


def test_a_stall_waits_for_the_idle_time_after_the_last_counter_move(make_agent, sim, metrics):
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock, idle_s=STALL_S + 300)  # the idle time outlasts the stall time
    moved_at = stuck_after_one_request(agent, metrics, clock)
    clock.now = moved_at + STALL_S
    assert agent.check() is None
    assert agent.describe()["llm_stalled"] is True
    clock.now = moved_at + STALL_S + 299
    assert agent.check() is None
    clock.now = moved_at + STALL_S + 300
    assert agent.check()


def test_waiting_requests_stall_too_and_a_moving_counter_clears_the_stall(
    make_agent, sim, metrics, caplog
):
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock)
    metrics.text = exposition(waiting=2, success=3)
    assert agent.check() is None
    clock.now += STALL_S
    agent.receive_heartbeat(*signed(clock.now))  # the panel is there: no stop, only the reading
    with caplog.at_level(logging.INFO, logger="vastpanel-agent"):
        assert agent.check() is None
        assert agent.describe()["llm_stall"]["waiting"] == 2
        clock.now += 30
        metrics.text = exposition(running=1, waiting=1, success=3, prompt=20)  # served at last
        assert agent.check() is None
    assert agent.describe()["llm_stalled"] is False and agent.state.last_activity == clock.now
    assert "LLM stall cleared: a counter moved" in caplog.text
    assert instance_stops(sim) == []


def test_a_stall_time_of_0_believes_the_gauge(make_agent, sim, metrics):
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock, stall_s=0.0)
    stuck_after_one_request(agent, metrics, clock)
    for _ in range(10):
        clock.now += GRACE_S
        assert agent.check() is None
    assert agent.describe()["llm_stalled"] is False and agent.describe()["stall_minutes"] == 0
    assert instance_stops(sim) == []


def test_the_heartbeat_answer_says_the_llm_is_stalled(make_agent, served, metrics):
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock)
    url = served(agent)
    moved_at = stuck_after_one_request(agent, metrics, clock)
    assert beat(url, at=clock.now).json()["llm_stalled"] is False
    clock.now = moved_at + STALL_S
    agent.check()
    answer = beat(url, at=clock.now).json()
    assert answer["llm_stalled"] is True and answer["stall_minutes"] == STALL_S / 60
    assert answer["llm_stall"] == {
        "running": 1.0,
        "waiting": 0.0,
        "no_progress_since": moved_at,
        "stalled_since": clock.now,
    }
    saved = json.loads(Path(agent.config.state_path).read_text())
    assert saved["stall"]["since"] == clock.now  # a restart keeps the stall and its log quiet


def test_heartbeats_arriving_mean_no_stop(make_agent, sim):
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock)
    for _ in range(10):
        clock.now += GRACE_S - 1
        assert agent.receive_heartbeat(*signed(clock.now)).status == 200
        assert agent.check() is None
    assert instance_stops(sim) == []


def test_unreadable_metrics_count_as_idle(make_agent, sim, metrics):
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock)
    metrics.status = 503
    clock.now += GRACE_S
    assert agent.check()
    assert len(instance_stops(sim)) == 1
    assert "503" in agent.describe()["llm_metrics_error"]


def test_metrics_without_vllm_samples_say_why(make_agent, metrics, caplog):
    """vLLM run with --disable-log-stats answers /metrics without a single vllm: sample."""
    clock = Clock(1_800_000_000.0)
    agent = make_agent(clock)
    metrics.text = "# HELP python_info Python platform information\npython_info 1.0\n"
    with caplog.at_level(logging.INFO, logger="vastpanel-agent"):
        for _ in range(3):
            assert agent.observe_llm() is False
            clock.now += 30
        assert "--disable-log-stats" in agent.describe()["llm_metrics_error"]
        metrics.text = exposition()
        agent.observe_llm()
    assert caplog.text.count("metrics unreadable at") == 1  # once per cause, not every check
    assert "metrics readable again" in caplog.text
    assert agent.describe()["llm_metrics_error"] is None


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
        agent.receive_heartbeat(*signed(clock.now))
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
    assert config.stall_s == 600.0
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
        ("AGENT_STALL_MINUTES", "-1"),
        ("AGENT_STALL_MINUTES", "nan"),
        ("AGENT_LISTEN", "8002"),
        ("AGENT_ENABLED", "maybe"),
        ("VAST_URL", "console.vast.ai"),
    ],
)
def test_config_errors_name_the_variable(name, value):
    with pytest.raises(agent_mod.ConfigError, match=name):
        agent_mod.AgentConfig.from_env(base_env(**{name: value}))


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("2.5", 150.0), ("", 600.0)])
def test_stall_minutes_take_decimals_and_0_for_off(value, seconds):
    config = agent_mod.AgentConfig.from_env(base_env(AGENT_STALL_MINUTES=value))
    assert config.stall_s == seconds


# --- where the settings come from on a VM -------------------------------------------------------


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_the_agents_file_fills_in_what_the_environment_leaves_unset(tmp_path):
    agent_file = write(
        tmp_path / "agent.env",
        f"# written by install.sh\nVAST_AGENT_SECRET={SECRET}\nCONTAINER_ID=4711\n"
        "CONTAINER_API_KEY='key-from-file'\nAGENT_IDLE_MINUTES=5\n",
    )
    environ = {"AGENT_ENV_FILE": agent_file, "AGENT_IDLE_MINUTES": "7", "CONTAINER_ID": ""}
    env, files = agent_mod.gather_env(environ, str(tmp_path / "no-etc-environment"))
    assert files == [agent_file]
    config = agent_mod.AgentConfig.from_env(env)
    assert config.container_id == "4711"  # an empty variable counts as unset
    assert config.container_api_key == "key-from-file"  # quotes removed
    assert config.idle_s == 7 * 60  # the environment wins


def test_vasts_etc_environment_gives_the_instance_id_and_key_only(tmp_path):
    etc_environment = write(
        tmp_path / "environment",
        'PATH="/usr/local/sbin:/usr/bin"\nCONTAINER_ID="4711"\nCONTAINER_API_KEY="vm-key"\n'
        "VAST_AGENT_SECRET=not-taken-from-here-0123456789\nexport PUBLIC_IPADDR=203.0.113.7\n",
    )
    environ = {"AGENT_ENV_FILE": "", "VAST_AGENT_SECRET": SECRET}
    env, files = agent_mod.gather_env(environ, etc_environment)
    assert files == [etc_environment]
    assert (env["CONTAINER_ID"], env["CONTAINER_API_KEY"]) == ("4711", "vm-key")
    assert env["VAST_AGENT_SECRET"] == SECRET and "PATH" not in env and "PUBLIC_IPADDR" not in env
    # Set in the environment or the agent's file, they are not looked up there.
    env, files = agent_mod.gather_env({**environ, **base_env()}, etc_environment)
    assert files == [] and env["CONTAINER_API_KEY"] == "inst-key-1"


def test_an_agent_file_named_but_missing_or_unreadable_is_a_config_error(tmp_path):
    for path in (tmp_path / "missing.env", tmp_path):  # a folder cannot be read as a file
        with pytest.raises(agent_mod.ConfigError, match="AGENT_ENV_FILE"):
            agent_mod.gather_env({"AGENT_ENV_FILE": str(path)}, str(tmp_path / "none"))


def test_the_agent_starts_from_its_root_only_file(tmp_path, sim):
    """The file itself, run as install.sh and compose run it: its secrets only in the 0600 file."""
    agent_file = tmp_path / "vastpanel-agent.env"
    agent_file.write_text(
        f"VAST_AGENT_SECRET={SECRET}\nCONTAINER_ID={INSTANCE_ID}\n"
        f"CONTAINER_API_KEY={sim.backend.instance_api_key}\n"
    )
    agent_file.chmod(0o600)
    env = {
        "PATH": os.environ["PATH"],
        "AGENT_ENV_FILE": str(agent_file),
        "AGENT_LISTEN": "127.0.0.1:0",
        "AGENT_STATE_PATH": str(tmp_path / "state.json"),
        "AGENT_METRICS_URL": "http://127.0.0.1:9/metrics",
        "VAST_URL": sim.url,
        "AGENT_BOOT_ID": "boot-file",
    }
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(AGENT_FILE), "--dry-run"], env=env, stdout=log, stderr=log
        )
    try:
        assert wait_for(lambda: "heartbeat on" in log_path.read_text(), 10), log_path.read_text()
    finally:
        proc.terminate()
        proc.wait(10)
    text = log_path.read_text()
    assert f"instance {INSTANCE_ID}" in text and f"read from {agent_file}" in text
    assert SECRET not in text and sim.backend.instance_api_key not in text


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
    # The secret, id and key come from the root-only file install.sh writes, not from compose.
    assert env["AGENT_ENV_FILE"] == "/etc/vastpanel-agent.env"
    assert not {"VAST_AGENT_SECRET", "CONTAINER_ID", "CONTAINER_API_KEY"} & set(env)
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
