"""End to end: the real server (gunicorn) against the vast.ai simulator, over loopback HTTP."""

from __future__ import annotations

import sqlite3
import time

import pytest
import requests

from support import wait_for
from support.liveserver import PanelProcess, simulator_env
from support.page import TOKEN
from vastpanel.simulator import Simulator

SIM_KEY = "sim-e2e-key-0123456789abcdef"
CONTROL_KEY = "e2e-control-key-fedcba987654"
INSTANCE_ID = 777
# An answer is reused for VAST_STATUS_TTL_S (1 s here), but never asked again within vast.ai's
# 2 s GET interval: past this, the next read asks the simulator.
ANSWER_REUSED_S = 2.1
WAIT_S, POLL_S = 15.0, 0.2  # how long and how often a test waits for the server or vast.ai


@pytest.fixture
def sim():
    with Simulator(
        api_key=SIM_KEY,
        instance_id=INSTANCE_ID,
        schedule_delay=0.5,
        load_delay=1.0,
        warm_delay=1.5,
        stop_delay=0.2,
    ) as sim:
        yield sim


@pytest.fixture
def panel_env(sim, tmp_path):
    return simulator_env(
        sim,
        tmp_path / "panel.db",
        CONTROL_KEY,
        VAST_STATUS_TTL_S="1",
        VAST_WAIT_TIMEOUT_S="30",
        VAST_AUTO_SHUTDOWN_MINUTES="60",
    )


@pytest.fixture
def server(panel_env, tmp_path):
    process = PanelProcess(panel_env, log_path=tmp_path / "server.log")
    yield process
    process.stop()


def events(server) -> list[str]:
    return [e["event"] for e in server.api("GET", "/audit?limit=1000").json()]


def test_full_power_cycle_with_health_wait(server, sim):
    assert server.api("GET", "/status").json()["status"] == "stopped"
    started = server.api("POST", "/power/on", json={"wait_for_health": True})
    assert started.status_code == 200, started.text
    body = started.json()
    assert body["status"] == "running"
    assert body["endpoint_base_url"] == sim.llm_url
    assert body["health_url"] == sim.llm_url + "/health"
    # The gateway can now use the model behind the endpoint.
    model = requests.get(body["endpoint_base_url"] + "/v1/models", timeout=5).json()["data"][0]
    chat = requests.post(
        body["endpoint_base_url"] + "/v1/chat/completions",
        json={"model": model["id"], "messages": [{"role": "user", "content": "hi"}]},
        timeout=5,
    )
    assert chat.status_code == 200
    assert server.api("POST", "/activity").status_code == 200
    status = server.api("GET", "/status").json()
    assert status["status"] == "running"
    assert status["auto_shutdown_in_minutes"] > 59
    time.sleep(1.0)
    stopped = server.api("POST", "/power/off").json()
    assert stopped["status"] == "stopped"
    assert stopped["session_runtime_minutes"] > 0
    assert stopped["session_cost_usd"] > 0
    assert len(sim.requests(method="PUT")) == 2
    assert sim.instance()["intended_status"] == "stopped"
    assert events(server)[:2] == ["power_off_complete", "power_off_requested"]
    assert "power_on_complete" in events(server)
    costs = server.api("GET", "/costs").json()
    assert costs["sessions_count"] == 1
    assert costs["total_cost_usd"] == pytest.approx(stopped["session_cost_usd"])


def test_a_start_outside_the_panel_opens_a_session(server, sim):
    sim.external("start")
    status = wait_for(
        lambda: (s := server.api("GET", "/status").json())["status"] == "running" and s,
        WAIT_S,
        POLL_S,
    )
    assert status
    assert status["auto_shutdown_in_minutes"] is not None
    assert "session_opened" in events(server)
    sim.external("stop")
    assert wait_for(
        lambda: server.api("GET", "/status").json()["status"] == "stopped", WAIT_S, POLL_S
    )
    assert "session_closed" in events(server)
    assert server.api("GET", "/costs").json()["sessions_count"] == 1


@pytest.mark.parametrize(
    ("fault", "options", "detail"),
    [
        ("response", {"status": 500, "body": {"error": "internal"}, "count": 3}, "refused"),
        ("html", {"count": 3}, "failing (502)"),
        ("html", {"count": 1, "status": 200}, "not a JSON object"),
        ("rate_limit", {"count": 3}, "rate limiting"),
        ("rate_limit", {"count": 1, "retry_after": 300}, "retry after 300"),
    ],
)
def test_status_faults_give_502_and_lose_nothing(server, sim, fault, options, detail):
    server.api("POST", "/activity")
    # A good read first: the recipe is captured from it (audited once), not during the fault.
    assert server.api("GET", "/status").status_code == 200
    before = server.api("GET", "/audit").json()
    time.sleep(ANSWER_REUSED_S)  # let the cached answer expire
    sim.clear_requests()
    sim.add_fault(fault, method="GET", **options)
    response = server.api("GET", "/status")
    assert response.status_code == 502
    assert detail in response.json()["detail"]
    assert len(sim.requests(method="GET")) <= 3  # bounded retries, no burst
    assert server.api("GET", "/audit").json() == before
    time.sleep(ANSWER_REUSED_S)
    sim.clear_faults()
    recovered = server.api("GET", "/status").json()
    assert recovered["status"] == "stopped"
    assert recovered["last_activity"] is not None


def test_429_is_retried_with_backoff(server, sim):
    # Past the cached answer and the simulator's own 2 s GET interval since the watchdog's
    # look at start-up: the only 429s are the injected ones.
    time.sleep(2.1)
    sim.clear_requests()
    sim.add_fault("rate_limit", method="GET", count=2, retry_after=0.3)
    assert server.api("GET", "/status").status_code == 200
    times = [r["time"] for r in sim.requests(method="GET")]
    statuses = [r["status"] for r in sim.requests(method="GET")]
    assert statuses == [429, 429, 200]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(gap >= 0.28 for gap in gaps), gaps  # Retry-After honoured, not a burst


def test_gpu_taken_then_stop_cancels(server, sim):
    sim.add_fault("resources_unavailable")
    response = server.api("POST", "/power/on", json={"wait_for_health": False})
    assert response.status_code == 200
    assert response.json()["status"] == "scheduling"
    assert "queued" in response.json()["message"]
    time.sleep(ANSWER_REUSED_S)
    assert server.api("GET", "/status").json()["status"] == "scheduling"
    stopped = server.api("POST", "/power/off")
    assert stopped.status_code == 200
    assert stopped.json()["session_runtime_minutes"] == 0
    assert wait_for(lambda: sim.instance()["intended_status"] == "stopped", WAIT_S, POLL_S)
    assert "power_on_queued" in events(server)


def test_no_credit_is_502_and_audited(server, sim):
    sim.add_fault("missing_billing")
    response = server.api("POST", "/power/on")
    assert response.status_code == 502
    assert "missing_billing" in response.json()["detail"]
    assert events(server)[0] == "power_on_failed"


def test_vanished_instance(server, sim):
    sim.external("vanish")
    time.sleep(ANSWER_REUSED_S)
    assert server.api("GET", "/status").json()["status"] == "not_found"
    assert server.api("POST", "/power/on").status_code == 502
    assert len(sim.requests(method="PUT")) == 0


def test_vast_ai_unreachable_then_back(server, sim):
    time.sleep(ANSWER_REUSED_S)
    sim.pause()
    try:
        response = server.api("GET", "/status")
        assert response.status_code == 502
        assert "unreachable" in response.json()["detail"]
        off = server.api("POST", "/power/off")
        assert off.status_code == 502
        assert events(server)[0] == "power_off_failed"
    finally:
        sim.resume()
    time.sleep(ANSWER_REUSED_S)
    assert server.api("GET", "/status").status_code == 200


def test_kill_9_mid_session_keeps_costs_and_audit(panel_env, sim, tmp_path):
    first = PanelProcess(panel_env, log_path=tmp_path / "first.log")
    try:
        assert first.api("POST", "/power/on").status_code == 200
        first.api("POST", "/activity")
        time.sleep(1.0)
        audit_before = first.api("GET", "/audit?limit=1000").json()
        runtime_before = first.api("GET", "/costs").json()["total_runtime_hours"]
    finally:
        first.kill()
    second = PanelProcess(panel_env, log_path=tmp_path / "second.log")
    try:
        costs = second.api("GET", "/costs").json()
        assert costs["sessions_count"] == 1  # the open session is still the one session
        assert costs["total_runtime_hours"] > runtime_before  # and it keeps counting
        audit_after = second.api("GET", "/audit?limit=1000").json()
        assert audit_after[-len(audit_before) :] == audit_before
        status = second.api("GET", "/status").json()
        assert status["status"] == "running"
        assert status["last_activity"] is not None
        off = second.api("POST", "/power/off").json()
        assert off["session_runtime_minutes"] * 60 > 1.0
    finally:
        second.stop()
    with sqlite3.connect(panel_env["VAST_DB_PATH"]) as db:
        assert db.execute("SELECT count(*) FROM sessions").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM sessions WHERE ended_at IS NULL").fetchone()[0] == 0


def test_auto_shutdown_under_the_production_server(panel_env, sim, tmp_path):
    env = {**panel_env, "VAST_AUTO_SHUTDOWN_MINUTES": "0.05", "VAST_WATCHDOG_INTERVAL_S": "1"}
    server = PanelProcess(env, log_path=tmp_path / "server.log")
    try:
        assert server.api("POST", "/power/on").status_code == 200
        server.api("POST", "/activity")
        assert server.api("GET", "/status").json()["auto_shutdown_in_minutes"] > 0
        assert wait_for(lambda: sim.instance()["intended_status"] == "stopped", WAIT_S, POLL_S)
        assert wait_for(lambda: "auto_shutdown_complete" in events(server), 5, POLL_S)
        time.sleep(1.5)  # a few more looks: nothing more is sent
        assert [r["json"] for r in sim.requests(method="PUT")] == [
            {"state": "running"},
            {"state": "stopped"},
        ]
        log = events(server)
        assert log.count("auto_shutdown") == 1 and log.count("auto_shutdown_complete") == 1
        entry = next(e for e in server.api("GET", "/audit").json() if e["event"] == "auto_shutdown")
        assert entry["actor"] == "system"
        assert entry["meta"]["inactive_minutes"] >= 0.05
        assert server.api("GET", "/costs").json()["sessions_count"] == 1
    finally:
        server.stop()


def test_a_copied_cookie_is_refused_after_sign_out(server, sim):
    browser = requests.Session()
    page = browser.get(server.url + "/signin", timeout=10)
    signed = browser.post(
        server.url + "/signin",
        data={"csrf_token": TOKEN.search(page.text).group(1), "key": CONTROL_KEY},
        allow_redirects=False,
        timeout=10,
    )
    assert signed.status_code == 303
    stolen = requests.Session()  # a copy of the cookie, replayed from elsewhere
    stolen.cookies.set("vastpanel_session", browser.cookies["vastpanel_session"])
    token = TOKEN.search(stolen.get(server.url + "/", timeout=10).text).group(1)

    home = browser.get(server.url + "/", timeout=10).text
    out = browser.post(
        server.url + "/signout",
        data={"csrf_token": TOKEN.search(home).group(1)},
        allow_redirects=False,
        timeout=10,
    )
    assert out.status_code == 303
    replay = stolen.post(
        server.url + "/power/off", data={"csrf_token": token}, allow_redirects=False, timeout=10
    )
    assert replay.status_code == 302 and replay.headers["Location"] == "/signin"
    assert sim.requests(method="PUT") == []
    assert stolen.get(server.url + "/", allow_redirects=False, timeout=10).status_code == 302
