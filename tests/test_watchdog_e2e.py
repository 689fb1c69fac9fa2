"""The watchdog end to end: the real scheduler against the vast.ai simulator over loopback HTTP.

Timings are fractions of a minute (idle 3 s); every wait polls with a deadline of a few seconds.
The simulator and the panel share the wall clock, so the time the simulator saw the stop can be
compared with the idle deadline the panel stored.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CONTROL_KEY, INSTANCE_ID, VAST_KEY, config_from
from support import ROOT, store, wait_for
from support.liveserver import running_simulator, simulator_env
from vastpanel import create_app
from vastpanel.domain.instance import DOWN_SINCE_KEY
from vastpanel.simulator import Simulator
from vastpanel.watchdog.looks import EXTENSION, LEASE

IDLE_MINUTES = 0.05
IDLE_S = IDLE_MINUTES * 60
TARGET_S = 2.0  # the stop goes out within this long after the idle deadline
WAIT_S, POLL_S = 10.0, 0.02  # how long and how often a test waits


def stops(sim: Simulator) -> list[dict]:
    """Return the stop calls the simulator answered, oldest first."""
    return [r for r in sim.requests("PUT") if (r.get("json") or {}).get("state") == "stopped"]


def timeline(sim: Simulator, deadline: float) -> str:
    """Describe the simulator's requests in seconds from the deadline (for a failure)."""
    return "; ".join(
        f"{r['time'] - deadline:+.2f} {r['method']} {r['path']} {r['status']}"
        for r in sim.requests()
    )


def live_env(sim: Simulator, db_path: Path, **overrides: str) -> dict[str, str]:
    """Return the variables that point an app at the simulator with short timings."""
    return simulator_env(
        sim,
        db_path,
        CONTROL_KEY,
        **{
            "VAST_AUTO_SHUTDOWN_MINUTES": str(IDLE_MINUTES),
            "VAST_WATCHDOG_INTERVAL_S": "1",
            "VAST_STATUS_TTL_S": "1",  # a start outside is seen within about 2 s, not 6
            "VASTPANEL_WATCHDOG": "true",
            **overrides,
        },
    )


def idle_deadline(db, session: store.Session) -> float:
    """Return when this session fell due: the later of activity and first seen, plus idle."""
    last_activity = store.get_value(db, "last_activity") or 0.0
    return max(last_activity, session.started_at) + IDLE_S


@pytest.fixture
def sim():
    with running_simulator(VAST_KEY, INSTANCE_ID) as simulator:
        yield simulator


@pytest.fixture
def live_app(tmp_path, sim):
    """Build apps with the watchdog on against the simulator; shut them down after the test."""
    apps = []

    def make(**overrides: str):
        app = create_app(config_from(live_env(sim, tmp_path / "vastpanel.db", **overrides)))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions[EXTENSION].shutdown()
        app.extensions["vastpanel"].store.close()


def test_stop_goes_out_at_the_deadline_that_activity_moved(live_app, sim):
    # A 60 s interval: only the deadline look can stop it within seconds.
    app = live_app(VAST_WATCHDOG_INTERVAL_S="60")
    panel = app.extensions["vastpanel"]
    session = wait_for(lambda: store.current_session(panel.store.db), WAIT_S, POLL_S)
    assert session, "the look at start-up did not see the instance running"

    time.sleep(IDLE_S / 2)  # the LLM is used half-way through the idle time
    client = app.test_client()
    response = client.post("/infra/vast/activity", headers={"X-API-Key": CONTROL_KEY})
    assert response.status_code == 200

    assert wait_for(lambda: stops(sim), WAIT_S, POLL_S), "no stop within 10 s"
    (stop,) = stops(sim)
    deadline = idle_deadline(panel.store.db, session)
    assert deadline > session.started_at + IDLE_S  # the activity did move it
    assert 0 <= stop["time"] - deadline < TARGET_S
    assert sim.instance()["actual_status"] == "stopped"
    # The session closes under the power lock; auto_shutdown_complete is audited just after.
    assert wait_for(lambda: store.current_session(panel.store.db) is None, WAIT_S, POLL_S)
    wanted = {"auto_shutdown", "auto_shutdown_complete"}
    assert wait_for(lambda: wanted <= {e.event for e in panel.audit.entries(50)}, WAIT_S, POLL_S)
    assert app.extensions[EXTENSION].alive


def test_instances_started_outside_or_exited_are_seen_and_stopped(live_app, sim):
    sim.external("stop")
    app = live_app()
    panel = app.extensions["vastpanel"]
    watchdog = app.extensions[EXTENSION]
    assert wait_for(lambda: watchdog.last_look_at, WAIT_S, POLL_S)

    for exit_container in (False, True):
        before = len(stops(sim))
        sim.external("start")  # from vast.ai's console
        if exit_container:
            # Exited is not billed GPU time: no session, but the idle rule still stops it,
            # counting from when it was first seen exited.
            sim.external("exit")
            down_since = wait_for(
                lambda: store.get_value(panel.store.db, DOWN_SINCE_KEY), WAIT_S, POLL_S
            )
            assert down_since, "the watchdog did not see the instance exited"
            deadline = (
                max(store.get_value(panel.store.db, "last_activity") or 0.0, down_since) + IDLE_S
            )
        else:
            session = wait_for(lambda: store.current_session(panel.store.db), WAIT_S, POLL_S)
            assert session, "the watchdog did not see the instance started outside"
            deadline = idle_deadline(panel.store.db, session)
        assert wait_for(lambda n=before: len(stops(sim)) > n, WAIT_S, POLL_S), "no stop within 10 s"
        stop = stops(sim)[-1]
        assert 0 <= stop["time"] - deadline < TARGET_S, timeline(sim, deadline)
        # The simulator logs the stop before the panel has closed the session: wait for that.
        assert wait_for(lambda: store.current_session(panel.store.db) is None, WAIT_S, POLL_S)
        assert len(stops(sim)) == before + 1
    seen = [
        e.meta.get("seen_status") for e in panel.audit.entries(50) if e.event == "session_opened"
    ]
    assert seen == ["running"]
    down = [
        e.meta.get("seen_status") for e in panel.audit.entries(50) if e.event == "instance_down"
    ]
    assert down == ["exited"]


# --- two processes, one database ------------------------------------------------------------


def start_worker(env: dict[str, str], ready_dir: Path) -> subprocess.Popen:
    """Start one app process (the watchdog on, as in production) against the simulator."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "watchdog_worker.py"), str(ready_dir), "60"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def lease_pid(db) -> int | None:
    """Return the pid of the process holding the watchdog lease."""
    lease = store.read_lease(db, LEASE)
    return int(lease.holder.rsplit(":", 2)[1]) if lease else None


def test_two_processes_stop_once_and_the_survivor_takes_over_a_kill_9(tmp_path, sim):
    sim.external("stop")
    db_path = tmp_path / "vastpanel.db"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VAST", "FLASK", "WERKZEUG"))},
        **live_env(sim, db_path),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("VASTPANEL_WATCHDOG")  # the real app's default: on
    workers = [start_worker(env, tmp_path) for _ in range(2)]
    db = store.open_db(str(db_path))
    try:
        assert wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == 2, 30, POLL_S), (
            "workers not up"
        )
        pids = {w.pid for w in workers}
        assert wait_for(lambda: lease_pid(db) in pids, WAIT_S, POLL_S), "no worker took the lease"

        sim.external("start")
        assert wait_for(lambda: stops(sim), WAIT_S, POLL_S), "no stop within 10 s"
        time.sleep(2.5)  # a few more looks by both: nobody stops it again
        (first,) = stops(sim)
        (session,) = store.list_sessions(db, 0)
        deadline = idle_deadline(db, session)
        assert 0 <= first["time"] - deadline < TARGET_S, timeline(sim, deadline)

        leader = next(w for w in workers if w.pid == lease_pid(db))
        survivor = next(w for w in workers if w is not leader)
        leader.send_signal(signal.SIGKILL)
        leader.wait(timeout=WAIT_S)  # reaped: its pid is gone

        sim.external("start")
        assert wait_for(lambda: len(stops(sim)) == 2, WAIT_S, POLL_S), (
            "the survivor did not stop it"
        )
        assert lease_pid(db) == survivor.pid
        deadline = idle_deadline(db, store.list_sessions(db, 0)[-1])
        assert 0 <= stops(sim)[-1]["time"] - deadline < TARGET_S, timeline(sim, deadline)

        survivor.send_signal(signal.SIGTERM)
        out, err = survivor.communicate(timeout=WAIT_S)
        assert survivor.returncode == 0, err
        report = json.loads(out.strip().splitlines()[-1])
        assert report["follower"] > 0 and report["leader"] > 0  # it followed, then led
        assert VAST_KEY not in err
        assert len(stops(sim)) == 2
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.communicate(timeout=WAIT_S)
        db.close()
