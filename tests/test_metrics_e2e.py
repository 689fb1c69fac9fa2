"""/metrics under gunicorn with two workers: it parses with prometheus_client's parser, the
shared gauges match /infra/vast/status whichever worker answers, and the per-process counters
add up across workers (vast.ai calls equal what the simulator saw)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import CONTROL_KEY, INSTANCE_ID, VAST_KEY
from support import store, wait_for
from support.liveserver import PanelProcess, running_simulator, simulator_env
from vastpanel.simulator import Simulator

pytestmark = pytest.mark.e2e

TOKEN = "metrics-e2e-token-0123456789"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with running_simulator(VAST_KEY, INSTANCE_ID) as simulator:
        yield simulator


def scrape(server: PanelProcess, token: str = TOKEN) -> dict[tuple[str, tuple], float]:
    """Read /metrics on a fresh connection into {(sample name, sorted labels): value}."""
    answer = requests.get(
        server.url + "/metrics",
        headers={"Authorization": f"Bearer {token}", "Connection": "close"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def test_metrics_match_status_under_two_workers(sim, tmp_path):
    # Migrated first: two workers migrating a new file at once can race (see store.migrate).
    db = store.open_db(str(tmp_path / "panel.db"))
    store.migrate(db)
    db.close()
    env = simulator_env(
        sim,
        tmp_path / "panel.db",
        CONTROL_KEY,
        VAST_STATUS_TTL_S="2",
        VAST_WATCHDOG_INTERVAL_S="2",
        METRICS_TOKEN=TOKEN,
    )
    server = PanelProcess(env, workers=2, log_path=tmp_path / "server.log")
    try:
        assert requests.get(server.url + "/metrics", timeout=10).status_code == 401
        for _ in range(10):
            server.api("GET", "/status", headers={"Connection": "close"})
        for _ in range(8):
            status = server.api("GET", "/status").json()
            samples = scrape(server)
            now_status = status["status"]
            assert samples[("vastpanel_instance_status", (("status", now_status),))] == 1
            ones = [k for k, v in samples.items() if k[0] == "vastpanel_instance_status" and v]
            assert len(ones) == 1
            assert samples[("vastpanel_instance_up", ())] == (now_status == "running")
            assert samples[("vastpanel_cost_usd_total", ())] == pytest.approx(
                status["total_cost_usd"], abs=0.26 / 3600 * 5
            )
            assert samples[("vastpanel_runtime_seconds_total", ())] == pytest.approx(
                status["total_runtime_hours"] * 3600, abs=5
            )
            assert samples[("vastpanel_idle_seconds_left", ())] == pytest.approx(
                status["auto_shutdown_in_minutes"] * 60, abs=5
            )
            assert samples[("vastpanel_sessions_total", ())] == 1
            time.sleep(0.3)

        # Counters from both workers add up to one true count.
        def calls_match():
            samples = scrape(server)
            counted = sum(
                v
                for (name, labels), v in samples.items()
                if name == "vastpanel_vast_calls_total" and ("method", "GET") in labels
            )
            return counted == len(sim.requests("GET")) and counted

        assert wait_for(calls_match, 10), (scrape(server), len(sim.requests("GET")))
        looks = scrape(server)
        roles = {
            dict(k[1])["role"]
            for k, v in looks.items()
            if k[0] == "vastpanel_watchdog_looks_total" and v
        }
        assert roles == {"leader", "follower"}  # one leads, the other follows: both counted
    finally:
        server.stop()
