"""The LLM's own metrics as an idle signal: parsing real vLLM text, judging, sharing, stopping.

The fixtures under tests/fixtures/vllm_*.prom are /metrics as vLLM serves them (the v1 engine's
metric set with its `engine` label, and the older engine's), written with prometheus_client, as
vLLM writes them: HELP and TYPE lines, `_total` and `_created` samples, histograms.
"""

from __future__ import annotations

import re

import pytest

from conftest import CONTROL_KEY, base_config, config_from, load_fixture
from support import store
from support.page import HTMX, signed_in_client
from vastpanel import create_app
from vastpanel.config import Config, ConfigError
from vastpanel.domain.idle import idle_deadline, last_signal
from vastpanel.domain.llm_load import MetricsUnreadable, VllmSample, judge, parse_vllm_metrics
from vastpanel.domain.power import HEALTHY_SESSION_KEY
from vastpanel.watchdog.looks import watchdog_for

IDLE_S = 30 * 60
EVERY_S = 15.0  # VAST_METRICS_EVERY_S' default
V1_IDLE = load_fixture("vllm_v1_idle.prom")
V1_BUSY = load_fixture("vllm_v1_busy.prom")


def with_load(text: str, running: int, waiting: int) -> str:
    """Return the metrics text with its running and waiting gauges set."""
    for name, value in (("running", running), ("waiting", waiting)):
        text = re.sub(
            rf"^(vllm:num_requests_{name}{{[^}}]*}}) .*$", rf"\1 {value}.0", text, flags=re.M
        )
    return text


# --- parsing and judging (plain functions) ----------------------------------------------------


@pytest.mark.parametrize(
    "fixture, running, waiting, success, prompt, generation",
    [
        ("vllm_v1_idle.prom", 0, 0, 41, 10254, 18311),
        ("vllm_v1_busy.prom", 3, 1, 44, 11020, 19987),
        ("vllm_v1_restarted.prom", 0, 0, 2, 310, 512),
        ("vllm_v0_idle.prom", 0, 0, 17, 4411, 9023),
        ("vllm_v0_busy.prom", 2, 0, 17, 4630, 9180),
    ],
)
def test_parses_both_engines_metric_sets(fixture, running, waiting, success, prompt, generation):
    sample = parse_vllm_metrics(load_fixture(fixture))
    assert (sample.running, sample.waiting) == (running, waiting)
    assert sample.counters == {
        "vllm:request_success_total": success,  # summed over finished_reason
        "vllm:prompt_tokens_total": prompt,
        "vllm:generation_tokens_total": generation,
    }


def test_gauges_are_summed_over_engines_and_models():
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="a"} 2.0\n'
        'vllm:num_requests_running{engine="1",model_name="a"} 1.0\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{engine="0",model_name="a"} 0.0\n'
        'vllm:num_requests_waiting{engine="1",model_name="b"} 4.0\n'
    )
    sample = parse_vllm_metrics(text)
    assert (sample.running, sample.waiting, sample.counters) == (3, 4, {})


@pytest.mark.parametrize(
    "text, reason",
    [
        (load_fixture("proxy_502.html"), "not Prometheus text"),
        ("ok", "not Prometheus text"),
        ("", "no vllm: metrics at all"),
        # vLLM with --disable-log-stats: its process metrics, not one vllm: metric
        ("# TYPE process_open_fds gauge\nprocess_open_fds 12.0\n", "--disable-log-stats"),
        (
            "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 1.0\n",
            "no vllm:num_requests_waiting (not a vLLM server?)",
        ),
    ],
)
def test_text_that_is_not_vllm_metrics_is_unreadable(text, reason):
    with pytest.raises(MetricsUnreadable) as caught:
        parse_vllm_metrics(text)
    assert reason in caught.value.reason


def test_judge_gauges_counters_and_restarts():
    idle = parse_vllm_metrics(V1_IDLE)
    busy = parse_vllm_metrics(V1_BUSY)
    restarted = parse_vllm_metrics(load_fixture("vllm_v1_restarted.prom"))

    def verdict(previous, sample):
        found = judge(previous, sample)
        return found.active, found.restarted

    assert verdict(None, idle) == (False, False)  # a first read is a baseline
    assert verdict(None, busy) == (True, False)  # ... but running requests are activity at once
    assert verdict(idle.counters, idle) == (False, False)
    grew = VllmSample(0, 0, {**idle.counters, "vllm:generation_tokens_total": 18312})
    assert verdict(idle.counters, grew) == (True, False)  # work finished between the reads
    assert verdict(idle.counters, restarted) == (False, True)  # a new baseline, not activity
    assert verdict(busy.counters, VllmSample(1, 0, restarted.counters)) == (True, True)


def test_idle_deadline_counts_from_the_latest_signal():
    def deadline(llm_active_at=None, last_activity=None):
        return idle_deadline(
            auto_shutdown=True,
            idle_minutes=30,
            held_since=1000.0,
            last_activity=last_activity,
            llm_active_at=llm_active_at,
        )

    assert deadline() == 1000 + IDLE_S
    assert deadline(llm_active_at=5000.0) == 5000 + IDLE_S
    assert deadline(llm_active_at=5000.0, last_activity=6000.0) == 6000 + IDLE_S
    assert deadline(llm_active_at=500.0, last_activity=600.0) == 1000 + IDLE_S
    assert last_signal(6000.0, 5000.0) == ("gateway", 6000.0)
    assert last_signal(None, 5000.0) == ("llm", 5000.0)
    assert last_signal(None, None) == (None, None)


# --- configuration ------------------------------------------------------------------------


def test_metrics_settings_default_and_validate():
    config = Config.from_env({"VAST_HEALTH_PORT": "9001"})
    assert config.idle_sources == ("gateway", "llm")
    assert config.llm_metrics_port == 9001  # nginx's port, which routes /metrics
    assert (config.llm_metrics_path, config.llm_metrics_every_s) == ("/metrics", 15.0)
    config = Config.from_env(
        {
            "VAST_IDLE_SOURCES": " LLM ",
            "VAST_METRICS_PORT": "8000",
            "VAST_METRICS_TOKEN": "metrics-token-123",
            "VAST_METRICS_EVERY_S": "5",
        }
    )
    assert config.idle_sources == ("llm",) and config.llm_metrics_port == 8000
    assert "metrics-token-123" in config.secrets and config.llm_metrics_every_s == 5
    for name, value in [
        ("VAST_IDLE_SOURCES", "gateway,gpu"),
        ("VAST_IDLE_SOURCES", ","),
        ("VAST_METRICS_PORT", "0"),
        ("VAST_METRICS_PATH", "metrics"),
        ("VAST_METRICS_EVERY_S", "0"),
    ]:
        with pytest.raises(ConfigError, match=name):
            Config.from_env({name: value})


# --- the panel with vast.ai and the instance faked ---------------------------------------------


@pytest.fixture
def watchdog(panel):
    return watchdog_for(panel)


def events(panel) -> list[str]:
    return [e.event for e in reversed(panel.audit.entries(1000))]


def status(client) -> dict:
    response = client.get("/infra/vast/status")
    assert response.status_code == 200
    return response.json


@pytest.fixture
def believing(tmp_path, clock, vast):
    """An app that believes vLLM's gauges however long no counter moves (no stall rule)."""
    app = create_app(config_from(base_config(tmp_path, VAST_LLM_STALL_MINUTES="0")), clock=clock)
    yield app
    app.extensions["vastpanel"].store.close()


def test_a_busy_llm_keeps_the_instance_running_and_says_so(believing, vast, clock):
    panel = believing.extensions["vastpanel"]
    client = believing.test_client()
    client.environ_base["HTTP_X_API_KEY"] = CONTROL_KEY
    watchdog = watchdog_for(panel)
    vast.set_running()
    watchdog.look()
    vast.metrics = (200, V1_BUSY)
    clock.advance(IDLE_S + 60)  # no gateway post at all
    look = watchdog.look()
    assert look.stopped is None and vast.puts == []
    assert look.next_deadline == clock.now() + IDLE_S
    body = status(client)
    assert body["llm_metrics"] == "ok" and body["last_activity_source"] == "llm"
    assert (body["llm_requests_running"], body["llm_requests_waiting"]) == (3, 1)
    assert body["auto_shutdown_in_minutes"] == pytest.approx(30)

    vast.metrics = (200, V1_BUSY)  # idle from now on: the counters stay where they are
    clock.advance(IDLE_S)
    watchdog.look()
    assert vast.puts == []  # the fresh read before the stop still saw 3 running
    vast.metrics = (200, with_load(V1_BUSY, 0, 0))
    clock.advance(EVERY_S)
    watchdog.look()  # this read sees nothing running: idle from the read before
    assert vast.puts == []
    clock.advance(IDLE_S)
    watchdog.look()
    assert vast.puts == ["stopped"]
    shutdown = [e for e in panel.audit.entries(100) if e.event == "auto_shutdown"][0]
    assert shutdown.meta["last_signal"] == "llm"
    assert shutdown.meta["inactive_minutes"] == pytest.approx(30 + EVERY_S / 60)


def test_counters_that_grew_are_activity_and_a_reset_is_a_new_baseline(panel, vast, clock):
    vast.set_running()
    panel.status.report()
    started = store.current_session(panel.store.db).started_at
    clock.advance(60)
    grown = V1_IDLE.replace("} 18311.0", "} 18400.0")
    vast.metrics = (200, grown)
    report = panel.status.report()
    assert report.llm.active_at == clock.now() and report.last_activity_source == "llm"
    assert report.idle_deadline == clock.now() + IDLE_S
    active_at = clock.now()
    clock.advance(60)
    vast.metrics = (200, load_fixture("vllm_v1_restarted.prom"))  # vLLM restarted
    report = panel.status.report()
    assert report.llm.ok and report.llm.active_at == active_at  # not activity
    clock.advance(60)
    report = panel.status.report()  # same counters as the new baseline
    assert report.llm.active_at == active_at and active_at > started


def test_one_read_per_interval_and_none_while_stopped(panel, vast, clock):
    for _ in range(5):
        panel.status.report()
    assert vast.metrics_gets == 0  # stopped: never read
    vast.set_running()
    clock.advance(5)  # VAST_STATUS_TTL_S: the next report sees it running
    for _ in range(5):
        panel.status.report()
        clock.advance(EVERY_S / 5 - 0.01)
    assert vast.metrics_gets == 1
    clock.advance(0.1)
    panel.status.report()
    assert vast.metrics_gets == 2


def test_unavailable_metrics_fall_back_and_are_audited_once_per_session(
    client, panel, vast, clock, watchdog
):
    vast.set_running()
    vast.metrics = (404, "404 page not found\n")
    watchdog.look()
    body = status(client)
    assert body["llm_metrics"] == "unavailable" and body["status"] == "running"
    assert body["llm_requests_running"] is None
    assert "llm_metrics_unavailable" not in events(panel)  # may still be loading the model
    store.set_value(panel.store.db, HEALTHY_SESSION_KEY, store.current_session(panel.store.db).id)
    for _ in range(4):
        clock.advance(EVERY_S)
        watchdog.look()
        assert status(client)["llm_metrics"] == "unavailable"
    (entry,) = [e for e in panel.audit.entries(100) if e.event == "llm_metrics_unavailable"]
    assert "answered HTTP 404" in entry.meta["reason"]
    assert entry.meta["fallback"] == "gateway posts"

    panel.idle.record_activity()  # the gateway's posts decide meanwhile
    assert status(client)["last_activity_source"] == "gateway"
    vast.metrics = (200, V1_IDLE)
    clock.advance(EVERY_S)
    assert status(client)["llm_metrics"] == "ok"
    vast.metrics = (502, "bad gateway")
    clock.advance(EVERY_S)
    status(client)
    assert events(panel).count("llm_metrics_unavailable") == 1
    assert events(panel).count("llm_metrics_available") == 1

    clock.advance(IDLE_S)
    watchdog.look()
    assert vast.puts == ["stopped"]  # the gateway's last post decided
    vast.set_running()  # started again from the console
    clock.advance(EVERY_S)
    watchdog.look()  # a new session; its first failed read is not audited yet
    assert events(panel).count("llm_metrics_unavailable") == 1
    clock.advance(601)  # past VAST_WAIT_TIMEOUT_S: the LLM should be up by now
    watchdog.look()
    assert events(panel).count("llm_metrics_unavailable") == 2  # once for the new session


def test_unmapped_metrics_port_is_unavailable_not_an_error(tmp_path, clock, vast):
    app = create_app(config_from(base_config(tmp_path, VAST_METRICS_PORT="9100")), clock=clock)
    client = app.test_client()
    vast.set_running()
    body = client.get("/infra/vast/status", headers={"X-API-Key": CONTROL_KEY}).json
    assert body["llm_metrics"] == "unavailable" and vast.metrics_gets == 0
    reading = store.read_llm_reading(app.extensions["vastpanel"].store.db)
    assert reading.error == "container port 9100 is not mapped on the instance"


@pytest.mark.parametrize("sources, metrics", [("gateway", "off"), ("llm", "ok")])
def test_idle_sources_pick_the_signals(tmp_path, clock, vast, sources, metrics):
    app = create_app(config_from(base_config(tmp_path, VAST_IDLE_SOURCES=sources)), clock=clock)
    panel = app.extensions["vastpanel"]
    vast.set_running()
    panel.status.report()
    clock.advance(60)
    panel.idle.record_activity()
    report = panel.status.report()
    assert report.llm_metrics == metrics
    if sources == "gateway":
        assert vast.metrics_gets == 0 and report.last_activity_source == "gateway"
    else:  # posts are not counted
        assert report.last_activity is None and report.idle_deadline == (
            store.current_session(panel.store.db).started_at + IDLE_S
        )


def test_the_metrics_token_is_sent_and_never_shown(tmp_path, clock, vast):
    token = "metrics-bearer-0123456789"
    app = create_app(config_from(base_config(tmp_path, VAST_METRICS_TOKEN=token)), clock=clock)
    panel = app.extensions["vastpanel"]
    vast.set_running()
    vast.metrics = (401, f"wrong token {token}")
    store.set_value(panel.store.db, HEALTHY_SESSION_KEY, 1)
    panel.status.report()
    (call,) = [c for c in vast.mock.calls if c.request.url.endswith("/metrics")]
    assert call.request.headers["Authorization"] == f"Bearer {token}"
    assert token not in str([e.meta for e in panel.audit.entries(100)])
    assert "llm_metrics_unavailable" in events(panel)


def test_the_page_shows_the_llm_load_the_source_and_why_the_countdown_is_paused(app, vast, clock):
    admin = signed_in_client(app)
    vast.set_running()
    vast.metrics = (200, V1_BUSY)
    html = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert "LLM: 3 requests running, 1 waiting" in html
    assert "paused: the LLM is busy (3 requests running, 1 waiting)" in html
    assert 'data-source="llm"' in html and "LLM busy" in html

    vast.metrics = (404, "not found")
    clock.advance(EVERY_S)
    app.extensions["vastpanel"].idle.record_activity()
    html = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert 'data-llm-metrics="unavailable"' in html and "answered HTTP 404" in html
    assert "gateway posts decide" in html and "gateway post" in html and "paused" not in html
