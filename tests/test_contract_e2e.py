"""Contracts end, end to end: gunicorn against the simulator playing a contract that ends.

At its end_date the simulator's host stops the instance, and a start answers 400 (vast.ai's
guide: expired instances cannot restart and may be deleted 48 hours later). The panel must say
so itself: it warns a day before, refuses a start with the reason (409), answers /v1/ with 503
in OpenAI's shape, and sends vast.ai no start at all, however often it is asked.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import requests

from conftest import CONTROL_KEY
from support import wait_for
from support.liveserver import PanelProcess, simulator_env
from vastpanel.simulator import Hardware, Simulator

pytestmark = pytest.mark.e2e

SIM_KEY = "sim-contract-key-0123456789"
LLM_KEY = "team-key-contract-0123456789"
ENDS_IN_S = 8.0


def audit(panel: PanelProcess, event: str) -> list[dict]:
    entries = panel.api("GET", "/audit", params={"limit": 1000}).json()
    return [e for e in entries if e["event"] == event]


def starts(sim: Simulator) -> list[dict]:
    return [r for r in sim.requests("PUT") if (r.get("json") or {}).get("state") == "running"]


def test_an_ended_contract_is_warned_of_refused_and_never_started(tmp_path):
    ends_at = time.time() + ENDS_IN_S
    with Simulator(
        api_key=SIM_KEY,
        instance_id=5150,
        initial_state="running",
        clock=time.time,
        schedule_delay=0,
        load_delay=0,
        warm_delay=0,
        hardware=Hardware(age_seconds=0),
        contract_ends_at=ends_at,
    ) as sim:
        env = simulator_env(
            sim,
            tmp_path / "panel.db",
            CONTROL_KEY,
            LLM_API_KEYS=LLM_KEY,
            VAST_WATCHDOG_INTERVAL_S="1",
            VAST_STATUS_TTL_S="1",
        )
        panel = PanelProcess(env, log_path=tmp_path / "panel.log")
        try:
            status = panel.api("GET", "/status").json()
            assert status["status"] == "running"
            expected = datetime.fromtimestamp(ends_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            assert status["contract_ends_at"] == expected
            # Less than a day left: the one-day warning, once.
            assert wait_for(lambda: audit(panel, "contract_ending"), 10)
            (warning,) = audit(panel, "contract_ending")
            assert warning["meta"]["days_before"] == 1

            # The end: the host stops the instance; the panel sees it and says so once.
            assert wait_for(lambda: panel.api("GET", "/status").json()["status"] == "stopped", 30)
            assert wait_for(lambda: audit(panel, "contract_ended"), 10)
            for _ in range(3):
                answer = panel.api("POST", "/power/on", json={"wait_for_health": False})
                assert answer.status_code == 409, answer.text
                assert "contract ended on" in answer.json()["detail"]
                assert "may delete it 48 h later" in answer.json()["detail"]
                llm = requests.post(
                    panel.url + "/v1/chat/completions",
                    json={"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"Authorization": f"Bearer {LLM_KEY}"},
                    timeout=30,
                )
                assert llm.status_code == 503
                error = llm.json()["error"]
                assert error["code"] == "contract_ended"
                assert error["message"] == answer.json()["detail"]
            time.sleep(3)  # watchdog looks go on meanwhile
            assert starts(sim) == []  # vast.ai was never asked to start it
            assert len(audit(panel, "contract_ended")) == 1
            assert len(audit(panel, "power_on_failed")) == 3  # the three refused power-ons
            page_status = panel.api("GET", "/status").json()
            assert page_status["contract_ends_at"] == expected
        finally:
            panel.stop()
