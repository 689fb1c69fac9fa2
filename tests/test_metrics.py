"""GET /metrics: who may read it, that it parses, and that it says what /status says."""

from __future__ import annotations

import re

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import base_config, config_from
from support import ROOT
from vastpanel import create_app

TOKEN = "metrics-token-0123456789-secret"


def scrape(client, **kwargs) -> dict[tuple[str, tuple], float]:
    """Read /metrics into {(sample name, sorted labels): value}."""
    answer = client.get("/metrics", **kwargs)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.mimetype == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(answer.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_without_a_token_only_loopback_reads_metrics(app):
    client = app.test_client()
    assert client.get("/metrics").status_code == 200  # the test client comes from 127.0.0.1
    far = client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert far.status_code == 403 and "METRICS_TOKEN" in far.get_data(as_text=True)


def test_with_a_token_a_bearer_is_needed_from_anywhere(tmp_path, clock, vast):
    app = create_app(config_from(base_config(tmp_path, METRICS_TOKEN=TOKEN)), clock=clock)
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and TOKEN not in wrong.get_data(as_text=True)
    far = {"REMOTE_ADDR": "203.0.113.9"}
    ok = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, environ_base=far)
    assert ok.status_code == 200


def test_metrics_match_status_while_running(app, client, vast, clock, panel):
    vast.set_running()
    client.get("/infra/vast/status")
    clock.advance(600)
    panel.idle.record_activity()
    clock.advance(120)
    status = client.get("/infra/vast/status").get_json()
    samples = scrape(client)
    assert samples[("vastpanel_instance_status", (("status", "running"),))] == 1
    assert samples[("vastpanel_instance_status", (("status", "stopped"),))] == 0
    assert samples[("vastpanel_instance_up", ())] == 1
    assert samples[("vastpanel_session_seconds", ())] == pytest.approx(720)
    assert samples[("vastpanel_cost_usd_total", ())] == pytest.approx(status["total_cost_usd"])
    assert samples[("vastpanel_runtime_seconds_total", ())] == pytest.approx(
        status["total_runtime_hours"] * 3600
    )
    assert samples[("vastpanel_idle_seconds_left", ())] == pytest.approx(
        status["auto_shutdown_in_minutes"] * 60
    )
    assert samples[("vastpanel_last_activity_age_seconds", (("source", "gateway"),))] == 120
    assert samples[("vastpanel_price_usd_per_hour", ())] == status["dph_total"]
    assert samples[("vastpanel_sessions_total", ())] == 1
    ok = [v for (n, labels), v in samples.items() if n == "vastpanel_vast_calls_total"]
    assert sum(ok) >= 1


def test_a_vast_failure_is_status_error_not_a_failed_scrape(client, vast):
    def unreachable():
        raise requests.ConnectionError("vast.ai down")

    vast.on_get = unreachable
    samples = scrape(client)
    assert samples[("vastpanel_instance_status", (("status", "error"),))] == 1
    assert samples[("vastpanel_instance_up", ())] == 0


def test_the_sample_dashboard_reads_only_metrics_that_exist(client, vast):
    vast.set_running()
    text = client.get("/metrics").get_data(as_text=True)
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name, family.name + "_total", family.name + "_bucket"}
        names |= {s.name for s in family.samples}
    dashboard = (ROOT / "deploy" / "grafana" / "vastpanel-dashboard.json").read_text()
    used = set(re.findall(r"vastpanel_[a-z_]+", dashboard)) - {"vastpanel"}
    assert used and used <= names, used - names
