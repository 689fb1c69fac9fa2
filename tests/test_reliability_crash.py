"""Crash safety: kill -9 the production server mid-action, restart it, and check the books.

Each test kills gunicorn (the whole process group, as a crash would) at a chosen moment: during
a power on that waits for health, right after activity posts were answered, and during a stop
(while vast.ai holds the stop call, and just after it answered). After a restart on the same
database, sessions, costs, last activity and the audit log agree with what happened before the
kill and with the simulator: nothing acknowledged is lost, no session is opened twice, an open
session stays open, and every audit entry written before the kill is still there, unchanged.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime

import pytest
import requests

from support import wait_for
from support.liveserver import PanelProcess, simulator_env
from vastpanel.simulator import Simulator

SIM_KEY = "sim-crash-key-0123456789abcdef"
CONTROL_KEY = "crash-control-key-fedcba987654"
INSTANCE_ID = 808
WAIT_S, POLL_S = 15.0, 0.02  # how long and how often a test waits for the server or vast.ai


@pytest.fixture
def sim():
    with Simulator(
        api_key=SIM_KEY,
        instance_id=INSTANCE_ID,
        schedule_delay=0.2,
        load_delay=0.3,
        warm_delay=60.0,  # the health URL stays unready: a power on keeps waiting
        stop_delay=0.0,
    ) as sim:
        yield sim


@pytest.fixture
def panel_env(sim, tmp_path):
    return simulator_env(
        sim,
        tmp_path / "panel.db",
        CONTROL_KEY,
        VAST_STATUS_TTL_S="0.5",
        VAST_WAIT_TIMEOUT_S="60",
        VAST_AUTO_SHUTDOWN_MINUTES="60",
    )


class Books:
    """What the database holds, read straight from the SQLite file."""

    def __init__(self, db_path: str):
        with sqlite3.connect(db_path) as db:
            self.sessions = db.execute(
                "SELECT id, started_at, ended_at, dph_total, opened_by, closed_by FROM sessions "
                "ORDER BY id"
            ).fetchall()
            self.audit = db.execute(
                "SELECT id, ts, event, actor, meta FROM audit ORDER BY id"
            ).fetchall()
            row = db.execute("SELECT value FROM state WHERE key = 'last_activity'").fetchone()
            self.last_activity = row[0] if row else None
        db.close()

    @property
    def events(self) -> list[str]:
        return [row[2] for row in self.audit]

    @property
    def open_sessions(self) -> list[tuple]:
        return [s for s in self.sessions if s[2] is None]


def in_background(call) -> threading.Thread:
    """Run an API call that the kill will cut off; its connection error is expected."""

    def run():
        try:
            call()
        except requests.RequestException:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def assert_kept(before: Books, after: Books) -> None:
    """Every audit entry and session written before the kill is still there, unchanged."""
    assert after.audit[: len(before.audit)] == before.audit
    for old, new in zip(before.sessions, after.sessions, strict=False):
        assert new[:2] == old[:2]  # same id, same start; only an open one may have closed since
        if old[2] is not None:
            assert new == old


def test_kill_during_a_power_on_waiting_for_health(panel_env, sim, tmp_path):
    db_path = panel_env["VAST_DB_PATH"]
    first = PanelProcess(panel_env, log_path=tmp_path / "first.log")
    try:
        waiting = in_background(
            lambda: first.api("POST", "/power/on", json={"wait_for_health": True}, timeout=60)
        )
        # The wait has seen the instance running (session open) and is polling its health URL.
        assert wait_for(lambda: Books(db_path).open_sessions, 20, POLL_S)
        assert wait_for(lambda: sim.llm_requests(path="/health"), 10, POLL_S)
        before = Books(db_path)
    finally:
        first.kill()
    waiting.join(10)
    # The first read of the instance may have captured its recipe before the start was asked.
    power_events = [e for e in before.events if e != "recipe_captured"]
    assert power_events[:2] == ["power_on_requested", "session_opened"]
    assert "power_on_complete" not in before.events

    second = PanelProcess(panel_env, log_path=tmp_path / "second.log")
    try:
        for _ in range(3):
            status = second.api("GET", "/status").json()
            assert status["status"] == "running"
            time.sleep(0.3)
        after = Books(db_path)
        assert_kept(before, after)
        assert len(after.sessions) == 1 and len(after.open_sessions) == 1  # still the one, open
        assert after.events.count("session_opened") == 1
        # The dead process's health wait does not hold off auto-shutdown or the page forever.
        assert status["auto_shutdown_in_minutes"] is not None
        costs = second.api("GET", "/costs").json()
        assert costs["sessions_count"] == 1 and costs["total_cost_usd"] > 0
        off = second.api("POST", "/power/off").json()
        assert off["session_runtime_minutes"] > 0
    finally:
        second.stop()
    final = Books(db_path)
    assert len(final.sessions) == 1 and final.open_sessions == []
    assert final.events[-2:] == ["power_off_requested", "power_off_complete"]


def test_kill_right_after_activity_posts(panel_env, sim, tmp_path):
    db_path = panel_env["VAST_DB_PATH"]
    sim.external("start")
    assert wait_for(lambda: sim.instance()["actual_status"] == "running", 10, POLL_S)
    first = PanelProcess(panel_env, log_path=tmp_path / "first.log")
    acknowledged: list[str] = []
    lock = threading.Lock()

    def post_activity(count: int) -> None:
        with requests.Session() as session:
            for _ in range(count):
                answer = session.post(
                    first.url + "/infra/vast/activity",
                    headers={"X-API-Key": CONTROL_KEY},
                    timeout=10,
                )
                assert answer.status_code == 200
                with lock:
                    acknowledged.append(answer.json()["last_activity"])

    try:
        assert first.api("GET", "/status").json()["status"] == "running"  # opens the session
        posters = [threading.Thread(target=post_activity, args=(25,)) for _ in range(8)]
        for poster in posters:
            poster.start()
        for poster in posters:
            poster.join(30)
    finally:
        first.kill()  # right after the last answer: nothing may be lost
    assert len(acknowledged) == 200
    before = Books(db_path)

    second = PanelProcess(panel_env, log_path=tmp_path / "second.log")
    try:
        status = second.api("GET", "/status").json()
        after = Books(db_path)
    finally:
        second.stop()
    latest = max(datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ") for t in acknowledged)
    assert after.last_activity >= latest.replace(tzinfo=UTC).timestamp()
    assert after.last_activity == before.last_activity
    assert status["last_activity"] == max(acknowledged)
    assert_kept(before, after)
    assert len(after.sessions) == 1 and len(after.open_sessions) == 1
    assert after.events.count("session_opened") == 1


@pytest.mark.parametrize("moment", ["while vast.ai holds the stop", "as vast.ai answers it"])
def test_kill_during_a_stop(panel_env, sim, tmp_path, moment):
    db_path = panel_env["VAST_DB_PATH"]
    sim.external("start")
    assert wait_for(lambda: sim.instance()["actual_status"] == "running", 10, POLL_S)
    first = PanelProcess(panel_env, log_path=tmp_path / "first.log")
    try:
        assert first.api("GET", "/status").json()["status"] == "running"  # opens the session
        first.api("POST", "/activity")
        if moment == "while vast.ai holds the stop":
            # vast.ai holds the stop call, then fails it without stopping anything.
            sim.add_fault("response", method="PUT", status=504, delay=5.0)
        sim.clear_requests()
        stopping = in_background(lambda: first.api("POST", "/power/off", timeout=30))
        assert wait_for(lambda: "power_off_requested" in Books(db_path).events, WAIT_S, POLL_S)
        if moment == "while vast.ai holds the stop":
            time.sleep(0.5)  # the stop call is in flight, held by vast.ai
        else:
            assert wait_for(lambda: sim.requests(method="PUT"), WAIT_S, every=0.001)
        before = Books(db_path)
    finally:
        first.kill()
    stopping.join(10)
    sim.clear_faults()
    stopped_upstream = sim.instance()["intended_status"] == "stopped"
    assert stopped_upstream == (moment == "as vast.ai answers it")

    second = PanelProcess(panel_env, log_path=tmp_path / "second.log")
    try:
        # Past the status TTL and vast.ai's 2 s between GETs (the first process's last GET
        # was just before the stop): the restart asks vast.ai afresh.
        time.sleep(2.1)
        status = second.api("GET", "/status").json()
        after = Books(db_path)
        assert_kept(before, after)
        assert len(after.sessions) == 1
        assert after.last_activity == before.last_activity
        if stopped_upstream:
            # Closed either by the stop that was cut off, or on seeing it stopped: once only.
            assert status["status"] in ("stopped", "stopping")
            assert wait_for(
                lambda: second.api("GET", "/status").json()["status"] == "stopped", WAIT_S, POLL_S
            )
            assert Books(db_path).open_sessions == []
        else:
            assert status["status"] == "running"
            assert len(after.open_sessions) == 1  # the stop never happened: still open
            assert second.api("POST", "/power/off").status_code == 200
        costs = second.api("GET", "/costs").json()
        assert costs["sessions_count"] == 1
    finally:
        second.stop()
    final = Books(db_path)
    assert len(final.sessions) == 1 and final.open_sessions == []
    assert final.events.count("session_opened") == 1
    assert final.events.count("session_closed") + final.events.count("power_off_complete") == 1
