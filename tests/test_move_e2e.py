"""Moving to another machine end to end: the production server, the simulated market over real
HTTP on wall time, the watchdog's leader carrying the move out.

With VAST_MOVE=auto, a /v1/ request finds the instance stopped on a machine whose GPU someone
else has: its start is queued, the panel moves the recipe to an equivalent offer, and the
request gets its answer from the new instance; the old one never runs beside it. A kill -9 in
the middle of a move leaves a move the restarted server finishes, without a second create.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import openai
import pytest

from support import wait_for
from support.liveserver import PanelProcess, simulator_env
from vastpanel.simulator import Simulator

pytestmark = pytest.mark.e2e

SIM_KEY = "move-e2e-sim-key-0123456789abcdef"
CONTROL_KEY = "move-e2e-control-key-0123456789"
LLM_KEY = "move-e2e-llm-key-0123456789abcdef"
FIRST = 5150
WAIT_S = 60.0


@pytest.fixture
def sim():
    with Simulator(
        api_key=SIM_KEY,
        instance_id=FIRST,
        gpu_taken=True,
        schedule_delay=0.2,
        create_delay=0.5,
        load_delay=1.0,
        warm_delay=1.0,
        stop_delay=0.2,
    ) as simulator:
        yield simulator


def panel_env(sim, tmp_path, **overrides: str) -> dict[str, str]:
    return simulator_env(
        sim,
        tmp_path / "panel.db",
        CONTROL_KEY,
        VAST_MOVE="auto",
        VAST_WATCHDOG_INTERVAL_S="1",
        VAST_STATUS_TTL_S="0.5",
        VAST_WAIT_TIMEOUT_S="60",
        LLM_API_KEYS=LLM_KEY,
        **overrides,
    )


class RunningWatch:
    """Polls the simulator while it lasts: the most instances ever seen running at once."""

    def __init__(self, sim):
        self.sim = sim
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        end = time.monotonic() + 300
        while not self._stop.is_set() and time.monotonic() < end:
            running = [i for i in self.sim.instances() if i["actual_status"] == "running"]
            self.most = max(self.most, len(running))
            time.sleep(0.02)

    def __enter__(self) -> RunningWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def move_state(db_path) -> str | None:
    with sqlite3.connect(db_path) as db:
        row = db.execute("SELECT state FROM moves ORDER BY id DESC LIMIT 1").fetchone()
    return row[0] if row else None


def audit_events(db_path) -> list[tuple[str, str]]:
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT event, actor FROM audit ORDER BY id").fetchall()


def test_auto_moves_a_stuck_cold_start_and_the_waiting_request_gets_its_answer(sim, tmp_path):
    server = PanelProcess(panel_env(sim, tmp_path), log_path=tmp_path / "server.log")
    try:
        llm = openai.OpenAI(base_url=server.url + "/v1", api_key=LLM_KEY, timeout=WAIT_S)
        with RunningWatch(sim) as watch:
            answer = llm.chat.completions.create(
                model="sim-model", messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
        assert answer.choices[0].message.content
        instances = sim.instances()
        assert len(instances) == 2  # the first and the one the move created
        new = next(i for i in instances if i["id"] != FIRST)
        assert new["actual_status"] == "running" and new["machine_id"] != sim.machine_id
        assert sim.instance(FIRST)["intended_status"] == "stopped"
        assert watch.most == 1  # never two running at once
        status = server.api("GET", "/status").json()
        assert status["instance_id"] == new["id"] and status["status"] == "running"
        events = audit_events(tmp_path / "panel.db")
        assert ("move_started", "system") in events and ("move_completed", "system") in events
        served = sim.llm_requests(path="/v1/chat/completions")
        assert served  # by the new instance's LLM (the first never ran)
    finally:
        server.stop()


@pytest.mark.parametrize("moment", ["searching", "booting"])
def test_a_kill_mid_move_is_finished_by_the_restarted_server(sim, tmp_path, moment):
    db_path = tmp_path / "panel.db"
    env = panel_env(sim, tmp_path)
    sim.set_timing(create_delay=3.0)  # a boot long enough to be killed in
    sim.add_fault("slow", delay=2.0, method="POST", count=1)  # and a search
    server = PanelProcess(env, log_path=tmp_path / "server.log")
    try:
        assert server.api("POST", "/power/on", json={"wait_for_health": False}).status_code == 200
        assert wait_for(lambda: move_state(db_path) == moment, WAIT_S, 0.01), move_state(db_path)
        server.kill()
        assert move_state(db_path) == moment
        with RunningWatch(sim) as watch:
            server = PanelProcess(env, log_path=tmp_path / "server.log")
            assert wait_for(lambda: move_state(db_path) == "done", WAIT_S, 0.1), move_state(db_path)
        assert len(sim.instances()) == 2  # nothing created twice
        assert watch.most <= 1
        new = next(i for i in sim.instances() if i["id"] != FIRST)
        assert server.api("GET", "/status").json()["instance_id"] == new["id"]
        assert sim.instance(FIRST)["intended_status"] == "stopped"
        events = [e for e, _ in audit_events(db_path)]
        assert events.count("move_started") == 1 and events.count("move_completed") == 1
        assert events.count("move_created") == 1
    finally:
        server.stop()
