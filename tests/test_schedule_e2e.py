"""Schedules end to end: the production server (gunicorn, gevent) against the simulator with
its fast timings, and a window a few minutes from now in New York time.

The start goes out the learned lead time before the window opens and the instance is healthy
when it opens; a restart inside the window starts nothing more; an idle instance is not stopped
inside the window and is stopped its idle time after the close; a skipped date starts nothing.
Windows are whole minutes, so these tests take minutes; they wait on the wall clock.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from conftest import CONTROL_KEY, INSTANCE_ID, VAST_KEY
from support import store, wait_for
from support.liveserver import PanelProcess, simulator_env
from vastpanel.clock import iso_utc
from vastpanel.schedule_windows import DAY_NAMES, parse_zone
from vastpanel.simulator import Simulator

pytestmark = pytest.mark.e2e

ZONE = parse_zone("America/New_York")
IDLE_S = 30.0  # VAST_AUTO_SHUTDOWN_MINUTES=0.5
INTERVAL_S = 2.0  # VAST_WATCHDOG_INTERVAL_S
TIMED_START_S = 5.0  # the seeded starts: the lead is their 90th percentile plus 2 minutes
LEAD_S = TIMED_START_S + 120.0
LATE_S = INTERVAL_S + 8  # a look, a vast.ai read and the stop, on a loaded machine


def window_from_now(at_least_s: float) -> tuple[float, float, str]:
    """Return (opens, closes, rule) for a one-minute window on a whole minute in New York,
    at least at_least_s from now."""
    start = datetime.fromtimestamp(time.time() + at_least_s, ZONE).replace(second=0, microsecond=0)
    start += timedelta(minutes=1)
    end = start + timedelta(minutes=1)
    rule = f"{DAY_NAMES[start.weekday()]} {start:%H:%M}-{end:%H:%M}"
    return start.timestamp(), end.timestamp(), rule


def puts(sim: Simulator, state: str) -> list[dict]:
    return [r for r in sim.requests("PUT") if (r.get("json") or {}).get("state") == state]


def audit(panel: PanelProcess, event: str) -> list[dict]:
    entries = panel.api("GET", "/audit", params={"limit": 1000}).json()
    return [e for e in entries if e["event"] == event]


def seconds(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def seed_timed_starts(db_path: Path, took: float, count: int = 5) -> None:
    """Give the new database `count` timed starts, as earlier sessions would have left."""
    db = store.open_db(str(db_path))
    store.migrate(db)
    for n in range(count):
        store.note_start_sent(db, 1000.0 * n, queued=False)
        store.note_healthy(db, 1000.0 * n + took)
    db.close()


@pytest.fixture
def make_sim():
    sims: list[Simulator] = []

    def make() -> Simulator:
        sim = Simulator(
            api_key=VAST_KEY,
            instance_id=INSTANCE_ID,
            initial_state="stopped",
            clock=time.time,
            schedule_delay=1,
            load_delay=1,
            warm_delay=1,
        )
        sims.append(sim.start())
        return sim

    yield make
    for sim in sims:
        sim.stop()


@pytest.fixture
def panel_env(tmp_path):
    def env(sim: Simulator, **overrides: str) -> dict[str, str]:
        return simulator_env(
            sim,
            tmp_path / "vastpanel.db",
            CONTROL_KEY,
            VAST_SCHEDULE_TZ="America/New_York",
            VAST_AUTO_SHUTDOWN_MINUTES=str(IDLE_S / 60),
            VAST_WATCHDOG_INTERVAL_S=str(INTERVAL_S),
            VAST_STATUS_TTL_S="1",
            **overrides,
        )

    return env


@pytest.mark.long
def test_warm_at_the_opening_held_through_the_window_stopped_after_it(
    make_sim, panel_env, tmp_path
):
    seed_timed_starts(tmp_path / "vastpanel.db", TIMED_START_S)
    opens, closes, rule = window_from_now(LEAD_S + 30)
    sim = make_sim()
    env = panel_env(sim, VAST_SCHEDULE=rule)
    log = tmp_path / "panel.log"
    panel = PanelProcess(env, log_path=log)
    try:
        schedule = panel.api("GET", "/schedule").json()
        assert schedule["lead_minutes"] * 60 == pytest.approx(LEAD_S)
        assert seconds(schedule["next_start_at"]) == pytest.approx(opens - LEAD_S)

        # The start goes out at the lead time before the opening, not earlier.
        assert wait_for(lambda: puts(sim, "running"), opens - time.time() + 5, every=0.2)
        (start,) = puts(sim, "running")
        assert opens - LEAD_S - 1 <= start["time"] <= opens - LEAD_S + LATE_S, panel.log()
        (started,) = audit(panel, "schedule_start")
        assert started["actor"] == "schedule"
        assert started["meta"]["window_opens_at"] == iso_utc(opens)
        healthy = wait_for(lambda: audit(panel, "instance_healthy"), opens - time.time() + 5)
        assert healthy and seconds(healthy[0]["ts"]) < opens, "not healthy when the window opened"

        # A restart inside the window resumes it: no second start, no stop while idle.
        wait_for(lambda: time.time() >= opens + 5, opens - time.time() + 10, every=0.2)
        panel.stop()
        panel = PanelProcess(env, log_path=log)
        status = panel.api("GET", "/status").json()
        assert status["status"] == "running"
        assert status["scheduled_until"] == iso_utc(closes)
        wait_for(lambda: time.time() >= closes, closes - time.time() + 5, every=0.5)
        assert puts(sim, "stopped") == [], "stopped while idle inside the window"
        assert len(puts(sim, "running")) == 1

        # After the close the idle rule takes over: stopped its idle time after the close.
        assert wait_for(lambda: puts(sim, "stopped"), IDLE_S + LATE_S + 5, every=0.2)
        (stop,) = puts(sim, "stopped")
        assert closes + IDLE_S - 1 <= stop["time"] <= closes + IDLE_S + LATE_S
        (shutdown,) = audit(panel, "auto_shutdown")
        assert shutdown["actor"] == "system"
        assert len(puts(sim, "running")) == 1
        assert audit(panel, "schedule_start_failed") == []
    finally:
        panel.stop()


def test_a_skipped_date_gets_no_start(make_sim, panel_env, tmp_path):
    opens, _closes, rule = window_from_now(20)
    skipped = datetime.fromtimestamp(opens, ZONE).date().isoformat()
    sim = make_sim()
    # No timed starts: the lead is 15 minutes, so without the skip the start would go out now.
    panel = PanelProcess(
        panel_env(sim, VAST_SCHEDULE=rule, VAST_SCHEDULE_SKIP=skipped),
        log_path=tmp_path / "panel.log",
    )
    try:
        schedule = panel.api("GET", "/schedule").json()
        assert schedule["skip"] == [skipped]
        assert seconds(schedule["next_window"]["opens_at"]) >= opens + 6 * 86_400  # next week
        wait_for(lambda: time.time() >= opens + 10, opens - time.time() + 15, every=0.5)
        assert puts(sim, "running") == [] and audit(panel, "schedule_start") == []
        assert panel.api("GET", "/status").json()["status"] == "stopped"
    finally:
        panel.stop()
