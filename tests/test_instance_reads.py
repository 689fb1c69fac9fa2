"""Every read from the instance is bounded in time and size (issue 23 §1): the heartbeat, the
LLM's metrics, the health URL and the /v1/ proxy's non-streamed answers, against a hostile
instance over real HTTP on 127.0.0.1 (vast.ai faked with `responses`).

The hostile instance trickles a byte every TRICKLE_EVERY_S (no read ever times out) for
HOSTILE_FOR_S, or floods FLOOD_BYTES; a read that waits for it all, or keeps it all, fails here.
"""

from __future__ import annotations

import time
import tracemalloc

import pytest

from conftest import CONTROL_KEY, base_config, config_from
from support import store
from support.hostile_instance import HostileInstance
from vastpanel import create_app
from vastpanel.domain.power import HEALTHY_SESSION_KEY
from vastpanel.web import proxy

TRICKLE_EVERY_S = 0.3
HOSTILE_FOR_S = 15.0
FLOOD_BYTES = 64 * 1024 * 1024
SECRET = "reads-agent-secret-0123456789"
LLM_KEY = "reads-team-key-0123456789abcdef"
# The reads' deadlines (heartbeat and metrics 3 s, health 5 s) and a second of slack.
HEARTBEAT_BOUND_S = 4.0
METRICS_BOUND_S = 4.0
HEALTH_BOUND_S = 6.0


@pytest.fixture
def app(tmp_path, clock, vast):
    config = base_config(tmp_path, VAST_AGENT_SECRET=SECRET, LLM_API_KEYS=LLM_KEY)
    app = create_app(config_from(config), clock=clock)
    yield app
    app.extensions["vastpanel"].store.close()


def hostile_instance(vast, mode: str, **options) -> HostileInstance:
    """Start a hostile server and make vast.ai's running instance's port 8001 lead to it."""
    options.setdefault("length", 10_000)  # within every read's cap: only time can cut it
    server = HostileInstance(mode, every_s=TRICKLE_EVERY_S, limit_s=HOSTILE_FOR_S, **options)
    vast.set_running()
    port = {"HostIp": "0.0.0.0", "HostPort": str(server.port)}
    vast.set(public_ipaddr="127.0.0.1", ports={"8001/tcp": [port]})
    vast.mock.add_passthru(f"http://127.0.0.1:{server.port}")
    return server


def timed(call):
    began = time.monotonic()
    result = call()
    return result, time.monotonic() - began


@pytest.mark.parametrize("mode", ["trickle", "trickle_headers"])
def test_a_trickling_instance_holds_a_heartbeat_no_longer_than_its_deadline(panel, vast, mode):
    with hostile_instance(vast, mode) as server:
        state = panel.instance.state()
        session = panel.status.current_session()
        link, took = timed(lambda: panel.agent.send_heartbeat(state, session, None))
    assert server.seen == ["POST /vastpanel/heartbeat HTTP/1.1"]
    assert took < HEARTBEAT_BOUND_S, took
    assert link.answered_at is None and "in time" in link.error


@pytest.mark.parametrize("mode", ["trickle", "trickle_headers"])
def test_a_trickling_instance_holds_a_metrics_read_no_longer_than_its_deadline(panel, vast, mode):
    with hostile_instance(vast, mode) as server:
        state = panel.instance.state()
        reading, took = timed(lambda: panel.llm.reading(state, fresh=True))
    assert server.seen == ["GET /metrics HTTP/1.1"]
    assert took < METRICS_BOUND_S, took
    assert not reading.ok and "in time" in reading.error


@pytest.mark.parametrize(("mode", "healthy"), [("trickle", True), ("trickle_headers", False)])
def test_a_trickling_instance_holds_a_health_probe_no_longer_than_its_deadline(
    panel, vast, mode, healthy
):
    with hostile_instance(vast, mode) as server:
        state = panel.instance.state()
        session = panel.status.current_session()
        answer, took = timed(lambda: panel.power.session_healthy(state, session))
    assert server.seen == ["GET /health HTTP/1.1"]
    assert took < HEALTH_BOUND_S, took
    assert answer is healthy  # a 200 is healthy whatever its body: the body is not read


def test_a_flooding_instance_is_read_no_further_than_each_reads_cap(panel, vast):
    with hostile_instance(vast, "flood", flood_bytes=FLOOD_BYTES) as server:
        state = panel.instance.state()
        session = panel.status.current_session()
        tracemalloc.start()
        try:
            link = panel.agent.send_heartbeat(state, session, None)
            reading = panel.llm.reading(state, fresh=True)
            healthy = panel.power.session_healthy(state, session)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert len(server.seen) == 3
    assert peak < 16 * 1024 * 1024, peak  # the metrics' 4 MiB cap is the largest
    assert "over" in link.error and "over" in reading.error
    assert healthy is True


def test_a_non_streamed_answer_that_trickles_is_cut_at_its_deadline(app, panel, vast, monkeypatch):
    monkeypatch.setattr(proxy, "SMALL_ANSWER_S", 2.0, raising=False)
    with hostile_instance(vast, "trickle", length=100_000):  # small: read at once, not relayed
        panel.instance.state()  # its health answered already in this session: no probe
        session = panel.status.current_session()
        store.set_value(panel.store.db, HEALTHY_SESSION_KEY, session.id)
        client = app.test_client()
        response, took = timed(
            lambda: client.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": []},
                headers={"Authorization": f"Bearer {LLM_KEY}"},
            )
        )
    assert took < 4.0, took
    assert response.status_code == 502
    assert response.get_json()["error"]["code"] == "upstream_broke"
    assert panel.wake.proxy_stats().in_flight == 0


def test_an_instance_on_loopback_is_never_connected_to_without_the_test_setting(
    tmp_path, clock, vast
):
    config = base_config(
        tmp_path,
        VAST_AGENT_SECRET=SECRET,
        LLM_API_KEYS=LLM_KEY,
        VAST_ALLOW_LOOPBACK_INSTANCE_FOR_TESTS="",
    )
    app = create_app(config_from(config), clock=clock)
    panel = app.extensions["vastpanel"]
    with hostile_instance(vast, "flood", flood_bytes=1024) as server:
        state = panel.instance.state()
        session = panel.status.current_session()
        panel.agent.send_heartbeat(state, session, None)
        panel.llm.reading(state, fresh=True)
        panel.power.session_healthy(state, session)
        status = app.test_client().get("/infra/vast/status", headers={"X-API-Key": CONTROL_KEY})
    assert server.seen == []
    body = status.get_json()
    assert body["status"] == "running" and body["endpoint_base_url"] is None
    assert "loopback" in body["message"]
    assert "VAST_ALLOW_LOOPBACK_INSTANCE_FOR_TESTS" in body["message"]
    panel.store.close()
