"""Idle truth end to end: gunicorn against the simulator, with no gateway posts unless said.

Each test runs the production server (vastpanel/testing/liveserver.py) on its own ports and
database, against its own simulator whose LLM stack serves vLLM-shaped /metrics that move with
the requests it really serves. They take minutes (a 1-minute idle time, a 3-minute stream) and
are independent of each other, so they can run in parallel.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from conftest import CONTROL_KEY, INSTANCE_ID, VAST_KEY
from support import wait_for
from support.liveserver import PanelProcess, simulator_env
from vastpanel.simulator import LlmConfig, Simulator

pytestmark = pytest.mark.e2e

IDLE_MINUTES = 1.0
IDLE_S = IDLE_MINUTES * 60
EVERY_S = 5.0  # VAST_METRICS_EVERY_S
INTERVAL_S = 5.0  # VAST_WATCHDOG_INTERVAL_S
# The stop comes IDLE_S after the LLM was last seen active, which is up to a read after the
# last call ended; the deadline look and the stop add a little on a loaded machine.
LATE_S = EVERY_S + INTERVAL_S + 15
CHAT = {"messages": [{"role": "user", "content": "are you there"}]}


def stops(sim: Simulator) -> list[dict]:
    """Return the stop calls the simulator answered, oldest first."""
    return [r for r in sim.requests("PUT") if (r.get("json") or {}).get("state") == "stopped"]


def metrics_reads(sim: Simulator) -> int:
    return len(sim.llm_requests("GET", "/metrics"))


@pytest.fixture
def make_sim():
    sims: list[Simulator] = []

    def make(llm: LlmConfig | None = None, initial_state: str = "running") -> Simulator:
        sim = Simulator(
            api_key=VAST_KEY,
            instance_id=INSTANCE_ID,
            initial_state=initial_state,
            clock=time.time,
            schedule_delay=0,
            load_delay=0,
            warm_delay=0,
            llm=llm or LlmConfig(),
        )
        sims.append(sim.start())
        return sim

    yield make
    for sim in sims:
        sim.stop()


@pytest.fixture
def make_panel(tmp_path):
    panels: list[PanelProcess] = []

    def make(sim: Simulator, workers: int = 1, **overrides: str) -> PanelProcess:
        settings = {
            "VAST_AUTO_SHUTDOWN_MINUTES": str(IDLE_MINUTES),
            "VAST_WATCHDOG_INTERVAL_S": str(INTERVAL_S),
            "VAST_METRICS_EVERY_S": str(EVERY_S),
            "VAST_STATUS_TTL_S": "3",
        }
        env = simulator_env(sim, tmp_path / "vastpanel.db", CONTROL_KEY, **settings | overrides)
        panel = PanelProcess(env, workers=workers, log_path=tmp_path / "panel.log")
        panels.append(panel)
        return panel

    yield make
    for panel in panels:
        panel.stop()


def status(panel: PanelProcess) -> dict:
    response = panel.api("GET", "/status")
    assert response.status_code == 200, response.text
    return response.json()


def audit_events(panel: PanelProcess, event: str) -> list[dict]:
    entries = panel.api("GET", "/audit", params={"limit": 1000}).json()
    return [e for e in entries if e["event"] == event]


def chat(sim: Simulator, **extra) -> requests.Response:
    response = requests.post(f"{sim.llm_url}/v1/chat/completions", json={**CHAT, **extra})
    assert response.status_code == 200, response.text
    return response


def wait_for_stop(sim: Simulator, timeout: float) -> dict:
    assert wait_for(lambda: stops(sim), timeout, every=0.2), f"no stop within {timeout:g} s"
    (stop,) = stops(sim)
    return stop


@pytest.mark.long
def test_a_client_every_20_s_keeps_it_running_then_it_stops_a_minute_after(make_sim, make_panel):
    sim = make_sim()
    panel = make_panel(sim)
    assert wait_for(lambda: status(panel)["status"] == "running", 20)
    began = time.time()
    last_call = began
    seen_llm = False
    while time.time() - began < 180:  # 3 minutes, three times the idle time
        chat(sim)
        last_call = time.time()
        while time.time() - last_call < 20:
            assert stops(sim) == [], "stopped while a client was using the LLM"
            body = status(panel)
            assert body["llm_metrics"] == "ok", body
            seen_llm = seen_llm or body["last_activity_source"] == "llm"
            time.sleep(2)
    assert seen_llm, "the status never named the LLM as the last activity"
    stop = wait_for_stop(sim, IDLE_S + LATE_S + 10)
    assert IDLE_S - 1 <= stop["time"] - last_call <= IDLE_S + LATE_S
    (shutdown,) = audit_events(panel, "auto_shutdown")
    assert shutdown["meta"]["last_signal"] == "llm"
    assert audit_events(panel, "llm_metrics_unavailable") == []


@pytest.mark.long
def test_a_three_minute_stream_is_not_cut_and_the_stop_comes_after_it(make_sim, make_panel):
    sim = make_sim(LlmConfig(token_delay_s=1.0))
    panel = make_panel(sim)
    assert wait_for(lambda: status(panel)["status"] == "running", 20)
    tokens, events = 180, []
    body = {**CHAT, "stream": True, "max_tokens": tokens}
    started = time.time()
    with requests.post(
        f"{sim.llm_url}/v1/chat/completions", json=body, stream=True, timeout=30
    ) as response:
        saw_running = False
        for line in response.iter_lines(decode_unicode=True):
            if not line:
                continue
            events.append(line)
            if len(events) % 30 == 0:  # about every 30 s, look at what the panel says
                saw_running = saw_running or status(panel)["llm_requests_running"] == 1
    ended = time.time()
    assert ended - started >= tokens * 1.0
    assert events[-1] == "data: [DONE]"
    finish = json.loads(events[-2][6:])["choices"][0]["finish_reason"]
    assert finish == "length" and len(events) == tokens + 3  # nothing was cut
    assert saw_running, "the status never showed the stream running"
    assert all(stop["time"] >= ended for stop in stops(sim)), "stopped during the stream"
    stop = wait_for_stop(sim, IDLE_S + LATE_S + 10)
    assert IDLE_S - 1 <= stop["time"] - ended <= IDLE_S + LATE_S


@pytest.mark.long
@pytest.mark.parametrize("broken", ["metrics_404", "port_not_mapped", "disable_log_stats"])
def test_without_metrics_the_gateway_posts_decide(make_sim, make_panel, broken):
    llm = LlmConfig(serve_metrics=broken != "metrics_404", log_stats=broken != "disable_log_stats")
    sim = make_sim(llm, initial_state="stopped")
    overrides = {"VAST_METRICS_PORT": "9100"} if broken == "port_not_mapped" else {}
    panel = make_panel(sim, **overrides)
    started = panel.api("POST", "/power/on", json={"wait_for_health": True}, timeout=60)
    assert started.status_code == 200, started.text  # the session is healthy: the LLM is up

    stop_calls = threading.Event()

    def use_the_llm():  # the LLM is busy throughout, but nobody can see it
        while not stop_calls.is_set() and not stops(sim):
            answer = requests.post(f"{sim.llm_url}/v1/chat/completions", json=CHAT)
            # The idle stop may land between the look at stops() and the call.
            assert answer.status_code == 200 or stops(sim), answer.text
            stop_calls.wait(5)

    caller = threading.Thread(target=use_the_llm, daemon=True)
    caller.start()
    try:
        last_post = None
        for _ in range(2):  # the gateway posts twice, 30 s apart
            assert panel.api("POST", "/activity").status_code == 200
            last_post = time.time()
            body = status(panel)
            # vLLM without its stats serves metrics, none of them vLLM's: "no metrics", not idle.
            expected = "no_metrics" if broken == "disable_log_stats" else "unavailable"
            assert body["llm_metrics"] == expected and body["status"] == "running"
            assert body["last_activity_source"] == "gateway"
            time.sleep(30)
        stop = wait_for_stop(sim, IDLE_S + LATE_S)
    finally:
        stop_calls.set()
        caller.join(10)
    assert IDLE_S - 1 <= stop["time"] - last_post <= IDLE_S + INTERVAL_S + 10
    (unavailable,) = audit_events(panel, "llm_metrics_unavailable")
    reason = unavailable["meta"]["reason"]
    assert {
        "metrics_404": "HTTP 404",
        "port_not_mapped": "9100 is not mapped",
        "disable_log_stats": "--disable-log-stats",
    }[broken] in reason
    (shutdown,) = audit_events(panel, "auto_shutdown")
    assert shutdown["meta"]["last_signal"] == "gateway"
    if broken != "port_not_mapped":
        assert metrics_reads(sim) >= 2
    else:
        assert metrics_reads(sim) == 0


def test_two_workers_share_one_metrics_read_per_interval(make_sim, make_panel):
    sim = make_sim()
    panel = make_panel(sim, workers=2)
    assert wait_for(lambda: status(panel)["llm_metrics"] == "ok", 20)
    finish = time.monotonic() + 30
    answered = []

    def poll():
        with requests.Session() as http:
            http.headers["X-API-Key"] = CONTROL_KEY
            while time.monotonic() < finish:
                try:
                    response = http.get(panel.url + "/infra/vast/status", timeout=30)
                except requests.ConnectionError:  # a keep-alive connection closed as we sent
                    answered.append("reset")
                    continue
                answered.append(response.status_code)

    first = metrics_reads(sim)
    began = time.monotonic()
    threads = [threading.Thread(target=poll) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    took = time.monotonic() - began
    reads = metrics_reads(sim) - first
    assert answered.count(200) > 100 and answered.count("reset") <= 2
    assert set(answered) <= {200, "reset"}
    assert reads <= took / EVERY_S + 1  # one read per interval for both workers together
    assert reads >= took / EVERY_S - 2  # ... and the reads went on


# A stall is not work (issue 22): vLLM's gauges stick after every request in flight is aborted
# (vllm-project/vllm#22545, #29928), and the simulator plays that by default. Times are short
# here: a stall time and an idle time of 0.1 and 0.2 minutes, the metrics read every second.
STALL_EVERY_S = 1.0
STALL_INTERVAL_S = 1.0


@pytest.mark.parametrize(("stall_minutes", "idle_minutes"), [(0.1, 0.2), (0.2, 0.1)])
def test_an_aborted_stream_leaves_the_gauge_stuck_and_the_stop_comes_the_longer_time_after(
    make_sim, make_panel, stall_minutes, idle_minutes
):
    sim = make_sim(LlmConfig(token_delay_s=0.2))
    panel = make_panel(
        sim,
        VAST_LLM_STALL_MINUTES=str(stall_minutes),
        VAST_AUTO_SHUTDOWN_MINUTES=str(idle_minutes),
        VAST_METRICS_EVERY_S=str(STALL_EVERY_S),
        VAST_WATCHDOG_INTERVAL_S=str(STALL_INTERVAL_S),
    )
    assert wait_for(lambda: status(panel)["llm_metrics"] == "ok", 20)
    body = {**CHAT, "stream": True, "max_tokens": 10_000}
    with requests.post(
        f"{sim.llm_url}/v1/chat/completions", json=body, stream=True, timeout=30
    ) as response:
        lines = response.iter_lines(decode_unicode=True)
        for _ in range(30):  # some 6 s of tokens, then the client goes away
            next(lines)
    aborted = time.time()
    # vLLM's gauge keeps saying 1 running; no counter moves.
    assert wait_for(lambda: "vllm:num_requests_running" in sim_metrics(sim), 5)
    assert running_gauge(sim) == 1.0
    stall_s, idle_s = stall_minutes * 60, idle_minutes * 60
    stop = wait_for_stop(sim, max(stall_s, idle_s) + 20)
    # Idle counts from the last counter move (up to a read before the abort): the stop comes
    # the longer of the stall and idle times after it, not their sum, as the agent's rule.
    after = stop["time"] - aborted
    assert max(stall_s, idle_s) - 2 * STALL_EVERY_S <= after <= max(stall_s, idle_s) + 5
    assert after < stall_s + idle_s - 1
    (stalled,) = audit_events(panel, "llm_stalled")
    assert stalled["meta"]["running"] == 1 and stalled["meta"]["stall_minutes"] == stall_minutes
    (shutdown,) = audit_events(panel, "auto_shutdown")
    assert shutdown["meta"]["llm_stalled"] is True
    assert audit_events(panel, "llm_stall_cleared") == []


def test_a_generation_with_tokens_flowing_longer_than_stall_and_idle_is_not_cut(
    make_sim, make_panel
):
    sim = make_sim(LlmConfig(token_delay_s=0.2))
    stall_s, idle_s = 6.0, 12.0
    panel = make_panel(
        sim,
        VAST_LLM_STALL_MINUTES=str(stall_s / 60),
        VAST_AUTO_SHUTDOWN_MINUTES=str(idle_s / 60),
        VAST_METRICS_EVERY_S=str(STALL_EVERY_S),
        VAST_WATCHDOG_INTERVAL_S=str(STALL_INTERVAL_S),
    )
    assert wait_for(lambda: status(panel)["llm_metrics"] == "ok", 20)
    tokens = 180  # 36 s: twice the stall and idle times together
    body = {**CHAT, "stream": True, "max_tokens": tokens}
    seen_stalled = False
    with requests.post(
        f"{sim.llm_url}/v1/chat/completions", json=body, stream=True, timeout=30
    ) as response:
        events = []
        for line in response.iter_lines(decode_unicode=True):
            if line:
                events.append(line)
            if len(events) % 20 == 0:
                seen_stalled = seen_stalled or status(panel)["llm_stalled"]
    ended = time.time()
    finish = json.loads(events[-2][6:])["choices"][0]["finish_reason"]
    assert finish == "length" and len(events) == tokens + 3  # nothing was cut
    assert not seen_stalled and audit_events(panel, "llm_stalled") == []
    assert all(stop["time"] >= ended for stop in stops(sim)), "stopped during the generation"
    stop = wait_for_stop(sim, idle_s + 20)
    assert idle_s - 2 * STALL_EVERY_S <= stop["time"] - ended <= idle_s + 5


def sim_metrics(sim: Simulator) -> str:
    return requests.get(f"{sim.llm_url}/metrics", timeout=5).text


def running_gauge(sim: Simulator) -> float:
    """Sum vllm:num_requests_running over its labels, as the simulator's /metrics shows it."""
    total = 0.0
    for line in sim_metrics(sim).splitlines():
        if line.startswith("vllm:num_requests_running{"):
            total += float(line.rsplit(" ", 1)[1])
    return total
