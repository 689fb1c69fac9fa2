"""Load with faults: 200 activity posters and a polling page while vast.ai fails 1 call in 10.

The production server (gunicorn, one worker, the watchdog on with a 2 s interval) runs against
the simulator, which answers about 10 % of its calls with a 500, a 429 or an HTML page where
JSON belongs. For 20 s here (bench/load_with_faults.py runs the same load for 60 s):
/activity never answers 5xx, last_activity never moves backwards (in the answers or in the
database), the page never answers 5xx, /healthz stays 200 with the watchdog alive, and the
watchdog keeps looking (its lease, renewed by each look, never shows two intervals without one). Once the load stops, the watchdog still stops the
idle instance, once.
"""

from __future__ import annotations

import time

import pytest

from support import wait_for
from support.fault_load import (
    audit_events,
    faults_served,
    queue_faults,
    run_fault_load,
    run_outage,
)
from support.liveserver import PanelProcess, instant_simulator, simulator_env

SIM_KEY = "sim-load-key-0123456789abcdef"
CONTROL_KEY = "load-control-key-fedcba987654"
INSTANCE_ID = 909
POSTERS = 200
SECONDS = 20.0
INTERVAL_S = 2.0
IDLE_MINUTES = 0.1  # 6 s: the posters keep it from falling due until they stop


@pytest.fixture
def sim():
    with instant_simulator(SIM_KEY, INSTANCE_ID, initial_state="running") as sim:
        yield sim


def test_activity_and_watchdog_under_load_while_vast_ai_fails_one_call_in_ten(sim, tmp_path):
    db_path = str(tmp_path / "panel.db")
    env = simulator_env(
        sim,
        db_path,
        CONTROL_KEY,
        VAST_STATUS_TTL_S="0.2",
        VAST_WATCHDOG_INTERVAL_S=str(INTERVAL_S),
        VAST_AUTO_SHUTDOWN_MINUTES=str(IDLE_MINUTES),
        VAST_WAIT_TIMEOUT_S="30",
        VASTPANEL_WATCHDOG="true",
    )
    plan = queue_faults(sim, calls=5000, every=10)
    server = PanelProcess(env, log_path=tmp_path / "server.log")
    try:
        # The watchdog's look at start-up opens the session (unless vast.ai failed it: retried).
        assert wait_for(lambda: "session_opened" in audit_events(db_path), timeout=10)
        report = run_fault_load(
            server,
            sim,
            db_path,
            posters=POSTERS,
            seconds=SECONDS,
            watchdog_interval_s=INTERVAL_S,
        )
        report.upstream_calls, report.upstream_failed = faults_served(sim, plan)
        print("\n".join(report.lines()))
        assert report.activity_ok > 1000
        assert report.activity_5xx == 0
        assert report.activity_error_count == 0, report.activity_errors[:5]
        assert report.answered_backwards == 0 and report.stored_backwards == 0
        assert report.page_polls > 0 and report.page_5xx == 0
        assert report.healthz_checks > 0 and report.healthz_not_ok == []
        # Looks go on under load: never two intervals without one; the lease never lapses.
        assert report.books_reads > SECONDS * 5  # read often enough to tell
        assert report.watchdog_renewals >= SECONDS / INTERVAL_S / 2
        assert report.longest_look_gap_s < 2 * INTERVAL_S
        assert report.watchdog_lapsed == 0
        # Faults happened. The panel asks vast.ai at most once per 2 s GET interval (whatever
        # the 0.2 s TTL) and waits out each 429, so about 8 to 10 calls fit in 20 s.
        assert report.upstream_calls >= SECONDS / 4 and report.upstream_failed >= 1
        assert "auto_shutdown" not in audit_events(db_path)  # activity kept it alive

        # The load is over: the watchdog stops the idle instance once it falls due, once.
        sim.clear_faults()
        idle_s = IDLE_MINUTES * 60
        assert wait_for(
            lambda: "auto_shutdown_complete" in audit_events(db_path),
            timeout=idle_s + 2 * INTERVAL_S + 5,
        )
        time.sleep(INTERVAL_S)  # one more look: no second stop
        assert audit_events(db_path).count("auto_shutdown_complete") == 1
        assert sim.instance()["intended_status"] == "stopped"
    finally:
        server.stop()


def test_a_stop_due_during_a_vast_ai_outage_goes_out_within_an_interval_of_its_return(
    sim, tmp_path
):
    """vast.ai unreachable for 20 s (bench/upstream_outage.py: 2 minutes) past the deadline."""
    db_path = str(tmp_path / "panel.db")
    idle_minutes = 0.05  # 3 s: due long before vast.ai comes back
    env = simulator_env(
        sim,
        db_path,
        CONTROL_KEY,
        # A failed answer is reused for the TTL: keep it under the interval, as by default
        # (5 s against 60 s), so the first look after the return asks vast.ai again.
        VAST_STATUS_TTL_S="1",
        VAST_WATCHDOG_INTERVAL_S=str(INTERVAL_S),
        VAST_AUTO_SHUTDOWN_MINUTES=str(idle_minutes),
        VASTPANEL_WATCHDOG="true",
    )
    server = PanelProcess(env, log_path=tmp_path / "server.log")
    try:
        report = run_outage(sim, db_path, outage_s=20.0, interval_s=INTERVAL_S, idle_s=3.0)
        print("\n".join(report.lines()))
        assert report.overdue_at_return_s > 10
        assert report.stop_after_return_s is not None
        assert 0 <= report.stop_after_return_s <= INTERVAL_S + 0.5  # scheduling slack
        assert report.stops_sent == 1
        assert report.events.count("auto_shutdown_complete") == 1
        # A stop tried during the outage is audited with its failure; none goes unaudited.
        failed = report.events.count("auto_shutdown_failed")
        assert report.events.count("auto_shutdown") == 1 + failed
        assert server.api("GET", "/costs").json()["sessions_count"] == 1
    finally:
        server.stop()
