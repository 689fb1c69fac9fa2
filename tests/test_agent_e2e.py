"""The dead-man switch end to end, every piece real and over loopback HTTP.

The panel runs as in production (gunicorn, its watchdog on); the simulator plays vast.ai and
runs the real deploy/instance/vastpanel_agent.py as a subprocess while its instance runs, with
the instance's own id and key; the instance's port 8001 leads to the real nginx with the
shipped config, over TLS with the certificate install.sh made (the panel pins the fingerprint
install.sh printed), which passes the panel's heartbeat to the agent and the LLM's routes to the
simulated vLLM. Grace and idle times are seconds instead of minutes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from support import wait_for
from support.agent import MetricsServer, exposition, replay, send_heartbeat
from support.instance_nginx import (
    NGINX_CONF,
    installed_tls,
    nginx_bin,
    pinned_session,
    render_for_loopback,
    running_nginx,
)
from support.liveserver import PanelProcess, free_port, running_simulator, simulator_env
from vastpanel.simulator import AgentSettings, Simulator

pytestmark = pytest.mark.e2e

SIM_KEY = "sim-account-key-0123456789abcdef"
CONTROL_KEY = "agent-e2e-control-key-0123456789"
SECRET = "agent-e2e-secret-0123456789abcdef"
LLM_KEY = "agent-e2e-vllm-key-0123456789"  # the instance's VLLM_API_KEY, asked by nginx
INSTANCE_ID = 9090
GRACE_MINUTES = 0.05  # 3 s
IDLE_MINUTES = 0.05  # 3 s
GRACE_S = GRACE_MINUTES * 60
IDLE_S = IDLE_MINUTES * 60
CHECK_S = 0.2  # the agent's check interval
LOOK_S = 0.5  # the panel's watchdog interval
SLACK_S = 5.0  # upper bound slack on a loaded machine


@dataclass
class Stack:
    """The simulator (with its agent), nginx in front of the instance, and the panel's env."""

    sim: Simulator
    nginx_port: int
    env: dict[str, str]
    tmp_path: Path
    http: requests.Session  # the test's own client of nginx, pinning the certificate too

    @property
    def heartbeat_url(self) -> str:
        return f"https://127.0.0.1:{self.nginx_port}/vastpanel/heartbeat"

    def run_instance(self) -> None:
        """Start the instance (from vast.ai's console) and wait for its agent to listen."""
        self.sim.external("start")
        assert wait_for(lambda: agent_listening(self), 15), self.agent_log()

    def panel(self) -> PanelProcess:
        return PanelProcess(self.env, log_path=self.tmp_path / "panel.log")

    def agent_log(self) -> str:
        path = self.tmp_path / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stops(self, auth: str | None = None) -> list[dict]:
        puts = [r for r in self.sim.requests("PUT") if (r.get("json") or {}).get("state")]
        return [r for r in puts if auth is None or r["auth"] == auth]


@pytest.fixture
def stack(tmp_path):
    """Build the stack with the panel's settings given; the panel itself is started by tests."""
    binary = nginx_bin()
    made = []

    def build(
        panel_idle_minutes: float = 60.0,
        grace: float = GRACE_MINUTES,
        agent_env: dict[str, str] | None = None,
        **llm,
    ) -> Stack:
        nginx_port = free_port()
        sim = running_simulator(
            SIM_KEY,
            INSTANCE_ID,
            initial_state="stopped",  # started by the test once the panel runs
            host_ports={8001: nginx_port},
            agent=AgentSettings(
                secret=SECRET,
                state_dir=tmp_path / "agent-state",
                grace_minutes=grace,
                idle_minutes=IDLE_MINUTES,
                check_seconds=CHECK_S,
                log_path=tmp_path / "agent.log",
                extra_env=agent_env or {},
            ),
        ).start()
        made.append(sim)
        for name, value in llm.items():
            setattr(sim.backend.llm, name, value)
        # TLS, as installed: the panel pins the fingerprint install.sh printed.
        keys, fingerprint = installed_tls(tmp_path, f"VLLM_API_KEY={LLM_KEY}\n")
        conf = render_for_loopback(
            NGINX_CONF.read_text(encoding="utf-8"), nginx_port, sim.llm_port, keys, sim.agent.port
        )
        nginx = running_nginx(binary, conf, tmp_path, nginx_port)
        nginx.__enter__()
        made.append(nginx)
        env = simulator_env(
            sim,
            tmp_path / "panel.db",
            CONTROL_KEY,
            VAST_AGENT_SECRET=SECRET,
            VAST_WATCHDOG_INTERVAL_S=str(LOOK_S),
            VAST_AUTO_SHUTDOWN_MINUTES=str(panel_idle_minutes),
            VAST_STATUS_TTL_S="0.5",
            VAST_INSTANCE_PLAIN_HTTP="",
            VAST_INSTANCE_TLS_FINGERPRINT=fingerprint,
        )
        return Stack(sim, nginx_port, env, tmp_path, pinned_session(fingerprint))

    yield build
    for thing in reversed(made):
        if isinstance(thing, Simulator):
            thing.stop()
        else:
            thing.__exit__(None, None, None)


def agent_listening(stack: Stack) -> bool:
    """Tell whether the agent answers through nginx (a refusal of an unsigned post)."""
    try:
        return stack.http.post(stack.heartbeat_url, data=b"{}", timeout=2).status_code == 401
    except requests.RequestException:
        return False


def agent_ok(panel: PanelProcess) -> bool:
    return panel.api("GET", "/status").json()["agent"] == "ok"


def audit(panel: PanelProcess) -> list[dict]:
    return panel.api("GET", "/audit?limit=200").json()


def test_panel_killed_while_idle_the_agent_stops_the_instance_and_the_panel_books_it(stack):
    s = stack()
    panel = s.panel()
    try:
        s.run_instance()
        assert wait_for(lambda: agent_ok(panel), 15), panel.log()
        # The panel keeps the instance alive past the agent's grace and idle times.
        time.sleep(GRACE_S + IDLE_S)
        assert s.stops() == [], s.agent_log()
        panel.kill()
        killed_at = time.time()
        assert wait_for(lambda: s.stops(), GRACE_S + IDLE_S + SLACK_S), s.agent_log()
        (stop,) = s.stops()
        assert stop["auth"] == "instance"  # the instance's own key, not the account's
        # At least the grace after the last heartbeat (at most a look before the kill).
        assert killed_at + GRACE_S - LOOK_S - 0.5 <= stop["time"] <= killed_at + GRACE_S + SLACK_S
        assert s.sim.instance()["actual_status"] == "stopped"
        time.sleep(1.0)
        assert len(s.stops()) == 1
        assert "stopping instance 9090: no valid heartbeat" in s.agent_log()
        assert "stop accepted by vast.ai" in s.agent_log()
        assert "the panel's last idle deadline was" in s.agent_log()
    finally:
        panel.kill()

    panel = s.panel()  # restarted on the same database
    try:
        closed = wait_for(lambda: [e for e in audit(panel) if e["event"] == "session_closed"], 10)
        assert closed, panel.log()
        (entry,) = closed
        assert entry["actor"] == "agent" and entry["meta"]["stopped_by"] == "agent"
        assert entry["meta"]["agent_grace_minutes"] == GRACE_MINUTES
        with sqlite3.connect(s.env["VAST_DB_PATH"]) as db:
            rows = db.execute("SELECT ended_at, closed_by FROM sessions").fetchall()
        db.close()
        assert len(rows) == 1 and rows[0][0] is not None and rows[0][1] == "agent"
        body = panel.api("GET", "/status").json()
        assert body["status"] == "stopped" and body["agent"] is None
        assert SECRET not in panel.log() and SECRET not in s.agent_log()
        assert s.sim.backend.instance_api_key not in s.agent_log()
    finally:
        panel.stop()


def test_panel_alive_and_instance_idle_only_the_panel_stops_it(stack):
    panel_idle_minutes = 0.2  # 12 s, four times the agent's grace
    s = stack(panel_idle_minutes=panel_idle_minutes)
    panel = s.panel()
    try:
        s.run_instance()
        assert wait_for(lambda: agent_ok(panel), 15), panel.log()
        assert wait_for(lambda: s.stops(), panel_idle_minutes * 60 + SLACK_S), panel.log()
        time.sleep(1.0)
        (stop,) = s.stops()
        assert stop["auth"] == "account"  # the panel's
        events = [e["event"] for e in audit(panel)]
        assert "auto_shutdown_complete" in events
        assert "stopping instance" not in s.agent_log()
    finally:
        panel.stop()


def test_panel_dead_during_a_long_stream_no_stop_until_it_ends(stack):
    # A 12 s stream (120 tokens, 0.1 s each) against 3 s of grace and 3 s of idle time: the
    # stream runs well past the moment the agent would stop an idle instance.
    s = stack(token_delay_s=0.1)
    panel = s.panel()
    stream_end: list[float] = []
    chunks: list[bytes] = []

    def stream():
        body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 120}
        url = f"https://127.0.0.1:{s.nginx_port}/v1/chat/completions"
        headers = {"Authorization": f"Bearer {LLM_KEY}"}
        with s.http.post(url, json=body, headers=headers, stream=True, timeout=60) as response:
            for line in response.iter_lines():
                if line:
                    chunks.append(line)
        stream_end.append(time.time())

    try:
        s.run_instance()
        assert wait_for(lambda: agent_ok(panel), 15), panel.log()
        reader = threading.Thread(target=stream, daemon=True)
        reader.start()
        panel.kill()
        reader.join(60)
        assert stream_end, "the stream did not end"
        assert chunks[-1] == b"data: [DONE]" and len(chunks) >= 120
        assert s.stops() == [], s.agent_log()  # nothing was cut
        assert wait_for(lambda: s.stops(), IDLE_S + SLACK_S), s.agent_log()
        (stop,) = s.stops()
        assert stop["auth"] == "instance"
        assert stream_end[0] + IDLE_S - CHECK_S - 0.1 <= stop["time"]
        assert stop["time"] <= stream_end[0] + IDLE_S + SLACK_S
    finally:
        panel.kill()


def test_forged_and_replayed_heartbeats_are_refused_and_do_not_postpone_the_stop(stack):
    s = stack()  # no panel: the test sends the heartbeats, through nginx
    s.run_instance()
    valid = send_heartbeat(s.heartbeat_url, SECRET, instance_id=INSTANCE_ID, http=s.http)
    assert valid.status_code == 200, valid.text
    valid_at = time.time()
    answers = []
    while not s.stops() and time.time() < valid_at + GRACE_S + IDLE_S + SLACK_S:
        answers.append(("replayed", replay(s.heartbeat_url, valid, s.http)))
        forged = send_heartbeat(
            s.heartbeat_url, "forged-secret-0123456789", instance_id=INSTANCE_ID, http=s.http
        )
        answers.append(("forged", forged))
        time.sleep(0.2)
    assert len(answers) >= 10
    for kind, answer in answers:
        if answer.status_code == 503:
            continue  # the stop took the agent down with the instance
        assert answer.status_code == 401, (kind, answer.text)
    (stop,) = s.stops()
    assert stop["auth"] == "instance"
    # Not postponed: due the grace time after the one valid heartbeat.
    assert valid_at + GRACE_S - 0.5 <= stop["time"] <= valid_at + GRACE_S + 3.0
    log = s.agent_log()
    assert "heartbeat refused: replayed timestamp" in log
    assert "heartbeat refused: bad signature" in log
    state = json.loads((s.tmp_path / "agent-state" / "vastpanel-agent-state.json").read_text())
    assert state["last_signed_at"] == float(valid.request.headers["X-Vastpanel-Timestamp"])


def test_a_stuck_gauge_after_a_long_generation_stops_the_instance_one_stall_time_later(stack):
    # vLLM's metrics as they look when a user aborts a long answer: tokens flow for longer than
    # grace plus idle time, then the gauge stays at 1 running while no counter moves again.
    metrics = MetricsServer()
    s = stack(agent_env={"AGENT_METRICS_URL": metrics.url, "AGENT_STALL_MINUTES": "0.05"})
    stall_s = 3.0
    try:
        s.run_instance()
        generated = 0
        flowing_until = time.time() + GRACE_S + IDLE_S + 2
        while time.time() < flowing_until:
            generated += 7
            metrics.text = exposition(running=1, prompt=40, generation=generated)
            time.sleep(CHECK_S / 2)
        aborted_at = time.time()
        assert s.stops() == [], s.agent_log()  # the generation was not cut
        assert wait_for(lambda: s.stops(), stall_s + SLACK_S), s.agent_log()
        (stop,) = s.stops()
        assert stop["auth"] == "instance"
        # Idle from the last counter move the agent saw (at most a check before the abort).
        assert (
            aborted_at + stall_s - CHECK_S - 0.2 <= stop["time"] <= aborted_at + stall_s + SLACK_S
        )
        log = s.agent_log()
        assert log.count("LLM stalled: vLLM reports 1 running and 0 waiting") == 1
        assert "a stuck gauge, not work" in log
    finally:
        metrics.close()


def test_a_heartbeat_for_another_instance_does_not_postpone_the_stop(stack):
    s = stack()  # no panel: the test sends the heartbeats, through nginx
    s.run_instance()
    valid = send_heartbeat(s.heartbeat_url, SECRET, instance_id=INSTANCE_ID, http=s.http)
    assert valid.status_code == 200, valid.text
    valid_at = time.time()
    while not s.stops() and time.time() < valid_at + GRACE_S + IDLE_S + SLACK_S:
        other = send_heartbeat(s.heartbeat_url, SECRET, instance_id=INSTANCE_ID + 1, http=s.http)
        assert other.status_code in (403, 503), other.text  # 503: the agent went with the stop
        ahead = send_heartbeat(
            s.heartbeat_url, SECRET, instance_id=INSTANCE_ID, at=time.time() + 60, http=s.http
        )
        assert ahead.status_code in (401, 503), ahead.text
        time.sleep(0.2)
    (stop,) = s.stops()
    assert valid_at + GRACE_S - 0.5 <= stop["time"] <= valid_at + GRACE_S + 3.0
    assert (
        "heartbeat refused: heartbeat for instance '9091', this is instance 9090" in s.agent_log()
    )


def test_an_agent_killed_and_restarted_keeps_its_timers(stack):
    s = stack()
    s.run_instance()
    valid = send_heartbeat(s.heartbeat_url, SECRET, instance_id=INSTANCE_ID, http=s.http)
    assert valid.status_code == 200
    valid_at = time.time()
    time.sleep(GRACE_S * 2 / 3)  # a restart that reset the timers would postpone the stop
    first = s.sim.agent.process
    first.send_signal(9)  # kill -9; the instance's supervisor starts it again (same boot)
    first.wait(10)
    assert wait_for(lambda: s.sim.agent.boots == 2 and agent_listening(s), 10), s.agent_log()
    assert wait_for(lambda: s.stops(), GRACE_S + IDLE_S + SLACK_S), s.agent_log()
    (stop,) = s.stops()
    # Due the grace after the heartbeat before the kill: the restart did not reset the timers.
    assert valid_at + GRACE_S - 0.5 <= stop["time"] <= valid_at + GRACE_S + 1.5


def test_dry_run_logs_the_stop_and_sends_nothing(stack, tmp_path):
    s = stack()
    s.sim.agent.settings.args = ("--dry-run",)
    s.run_instance()
    assert wait_for(lambda: "dry run: would stop instance 9090" in s.agent_log(), 10 + GRACE_S)
    assert "DRY RUN" in s.agent_log()
    time.sleep(1.0)
    assert s.stops() == []
    assert s.sim.instance()["actual_status"] == "running"


def test_a_new_boot_resets_the_timers(stack):
    s = stack()  # no panel ever: the agent stops each boot after its own grace time
    for boot in (1, 2):
        booted_at = time.time()
        s.run_instance()
        assert wait_for(lambda n=boot: len(s.stops()) == n, GRACE_S + IDLE_S + SLACK_S)
        stop = s.stops()[-1]
        # Not at once for the silence of the boot before: a grace time after this boot.
        assert booted_at + GRACE_S - 0.5 <= stop["time"] <= booted_at + GRACE_S + SLACK_S
        assert wait_for(lambda: s.sim.agent.process is None, 10)
    assert s.sim.agent.boots == 2


def test_nginx_passes_only_posts_and_answers_503_without_the_agent(stack):
    s = stack()  # the instance is stopped: no agent runs
    assert s.http.get(s.heartbeat_url, timeout=10).status_code == 403
    answer = s.http.post(s.heartbeat_url, data=b"{}", timeout=10)
    assert answer.status_code == 503 and answer.json()["ok"] is False
