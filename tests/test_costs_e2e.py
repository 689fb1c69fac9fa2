"""Cost truth end to end against the simulator over real HTTP.

A simulated day runs in a second or two: the panel (in this process, its watchdog's looks
called as the scheduler would call them) and the simulator share one FakeClock, so the test
moves time for both and every vast.ai call is still a real HTTP request to the simulator, which
bills as vast.ai does. The restart and kill -9 test runs the production server (gunicorn) in
real time instead, against a simulator whose storage costs $360/h so seconds are visible.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, date, datetime, timedelta

import pytest
import requests

from conftest import config_from
from support import wait_for
from support.clock import FakeClock
from support.liveserver import PanelProcess, simulator_env
from vastpanel import create_app
from vastpanel.simulator import Hardware, Simulator
from vastpanel.watchdog.looks import watchdog_for

pytestmark = pytest.mark.e2e

SIM_KEY = "sim-costs-key-0123456789abcdef"
CONTROL_KEY = "costs-control-key-fedcba9876543210"
DAY = date(2024, 5, 1)
INTERVAL_S = 120.0  # the watchdog's interval in the simulated day
# vast.ai's documented minimum intervals, so the panel's calls must respect them.
RATE_LIMIT = {"GET": 2.0, "PUT": 1.0}


def midnight(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


class SimulatedDays:
    """The panel in this process and the simulator, both on one FakeClock the test moves."""

    def __init__(self, tmp_path, clock: FakeClock, sim: Simulator, **config: str):
        self.clock, self.sim = clock, sim
        env = simulator_env(
            sim,
            tmp_path / "panel.db",
            CONTROL_KEY,
            VAST_STATUS_TTL_S="1",
            VAST_AUTO_SHUTDOWN_MINUTES="30",
            VAST_WATCHDOG_INTERVAL_S=str(int(INTERVAL_S)),
            **config,
        )
        self.app = create_app(config_from(env), clock=clock)
        self.panel = self.app.extensions["vastpanel"]
        self.client = self.app.test_client()
        self.client.environ_base["HTTP_X_API_KEY"] = CONTROL_KEY
        self.watchdog = watchdog_for(self.panel)
        self.next_deadline: float | None = None
        self.stops: list[float] = []

    def look(self) -> None:
        """One watchdog look, as the scheduler runs it."""
        result = self.watchdog.look()
        assert result.leader and result.error is None, result
        self.next_deadline = result.next_deadline
        if result.stopped is not None and not result.stopped.already_stopped:
            self.stops.append(result.at)

    def run_until(self, until: float, *, active_until: float | None = None) -> None:
        """Move time to until, looking every interval and just after each deadline."""
        while self.clock.now() < until:
            step = min(INTERVAL_S, until - self.clock.now())
            if self.next_deadline is not None and self.next_deadline > self.clock.now():
                step = min(step, self.next_deadline - self.clock.now() + 0.05)
            self.clock.advance(step)
            if active_until is not None and self.clock.now() < active_until:
                assert self.client.post("/infra/vast/activity").status_code == 200
                self.chat()
            self.look()

    def power_on(self) -> requests.Response:
        self.clock.advance(2.0)  # vast.ai's GET interval since the last look
        answer = self.client.post("/infra/vast/power/on", json={"wait_for_health": False})
        self.clock.advance(2.0)
        if answer.status_code == 200:
            self.look()  # the scheduler's next look sees it running
        return answer

    def power_off(self) -> None:
        self.clock.advance(2.0)
        assert self.client.post("/infra/vast/power/off").status_code == 200

    def chat(self) -> None:
        """Some LLM traffic, which vast.ai bills as bandwidth."""
        if self.sim.instance()["actual_status"] == "running":
            requests.post(
                self.sim.llm_url + "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hello " * 50}]},
                timeout=5,
            ).raise_for_status()

    def read_charges(self) -> None:
        assert self.watchdog.read_charges()

    def costs(self) -> dict:
        return self.client.get("/infra/vast/costs").json

    def close(self) -> None:
        self.panel.store.close()


@pytest.fixture
def clock():
    return FakeClock(start=midnight(DAY))


def simulator(clock: FakeClock, **hardware) -> Simulator:
    return Simulator(
        api_key=SIM_KEY,
        instance_id=4321,
        schedule_delay=0,
        load_delay=0,
        warm_delay=0,
        stop_delay=0,
        clock=clock.now,
        wall_clock=clock.now,
        rate_limit=RATE_LIMIT,
        hardware=Hardware(dph_base=0.5, storage_cost=0.3, disk_space=120, **hardware),
    )


def at(day: date, hours: float) -> float:
    return midnight(day) + hours * 3600


def items(contract: dict) -> dict[str, dict]:
    return {item["type"]: item for item in contract["items"]}


@pytest.mark.parametrize("clip", [False, True], ids=["whole", "clipped"])
def test_a_contract_over_days_agrees_with_vast_ais_charges_and_a_mismatch_is_flagged_once(
    tmp_path, clock, clip
):
    # The instance is created as the panel starts, so the panel's records hold its contract.
    with simulator(clock, age_seconds=0) as sim:
        sim.set_billing(clip_to_range=clip)  # either reading of the undocumented point
        days = SimulatedDays(tmp_path, clock, sim)
        days.look()  # the panel starts with the day, the instance stopped
        for start, end in ((2, 5), (14, 20.5)):  # two sessions; the second ends idle
            days.run_until(at(DAY, start))
            assert days.power_on().status_code == 200
            if end == 5:
                days.run_until(at(DAY, end), active_until=at(DAY, end))
                days.power_off()
            else:
                days.run_until(at(DAY, end + 1), active_until=at(DAY, end - 0.5))
        # Idle 30 minutes after the last activity, posted at the looks until 20:00.
        assert len(days.stops) == 1 and at(DAY, 20.5) - INTERVAL_S <= days.stops[0] <= at(DAY, 20.5)
        running_hours = 3 + (days.stops[0] - at(DAY, 14)) / 3600
        days.run_until(at(DAY, 24.1))
        days.read_charges()

        costs = days.costs()
        (contract,) = costs["contracts"]  # one row for the contract, over its two days
        billed = sim.charges()["days"]
        gpu = sum(day["gpu"] for day in billed.values())
        disk = sum(day["disk"] for day in billed.values())
        bandwidth = sum(day["bwd"] + day["bwu"] for day in billed.values())
        assert gpu == pytest.approx(0.5 * running_hours, abs=0.5 * 10 / 3600)
        assert contract["start"] == "2024-05-01T00:00:00Z"
        assert contract["billed_usd"] == pytest.approx(gpu + disk + bandwidth, abs=0.001)
        assert contract["comparable"] and contract["mismatch"] is False
        assert abs(contract["difference_pct"]) < 0.1
        parts = items(contract)
        assert parts["gpu"]["estimate_usd"] == pytest.approx(parts["gpu"]["billed_usd"], rel=0.001)
        assert parts["disk"]["estimate_usd"] == pytest.approx(
            parts["disk"]["billed_usd"], rel=0.001
        )
        assert contract["summary"].startswith("vast.ai billed $")
        assert "for May 1–2; estimate $" in contract["summary"]
        # A contract over two days is never pinned on one of them.
        assert all(day["billed"] is None for day in costs["days"])
        print(
            f"contract over {contract['start']}..{contract['end']}: billed "
            f"{contract['billed_usd']:.6f}, estimate {contract['estimate_usd']:.6f} "
            f"({contract['difference_pct']:+.4f} %); gpu {parts['gpu']['estimate_usd']:.6f} vs "
            f"{parts['gpu']['billed_usd']:.6f}, disk {parts['disk']['estimate_usd']:.6f} vs "
            f"{parts['disk']['billed_usd']:.6f}; reading {costs['charges']['reading']}"
        )
        assert costs["bandwidth_cost_usd"] == pytest.approx(bandwidth, abs=0.001)
        assert costs["all_in_cost_usd"] == pytest.approx(
            costs["gpu_cost_usd"] + costs["storage_cost_usd"] + costs["bandwidth_cost_usd"]
        )
        assert costs["total_cost_usd"] == pytest.approx(running_hours * (0.5 + 0.05), rel=0.001)
        # Asked from the contract's first day, either reading gives the whole contract; the
        # probe (today alone) tells which one vast.ai plays: the simulator's clipping cuts the
        # amounts but leaves the row's window at the contract's.
        assert costs["charges"]["reading"] == ("clipped_amounts_only" if clip else "whole")

        # The next day vast.ai bills the GPU 20 % higher than its price: flagged, once.
        sim.set_billing(factor={"gpu": 1.2})
        following = DAY + timedelta(days=1)
        days.run_until(at(following, 9))
        assert days.power_on().status_code == 200
        days.run_until(at(following, 12), active_until=at(following, 12))
        days.power_off()
        days.run_until(at(following, 24.1))
        days.read_charges()
        days.run_until(at(following, 25.2))
        days.read_charges()
        (contract,) = days.costs()["contracts"]
        assert contract["mismatch"] is True and contract["difference_pct"] < -1
        mismatches = [e for e in days.panel.audit.entries(1000) if e.event == "cost_mismatch"]
        assert len(mismatches) == 1
        meta = mismatches[0].meta
        assert meta["window_start"] == "2024-05-01T00:00:00Z"
        assert meta["billed_gpu_usd"] > meta["estimate_gpu_usd"] * 1.01
        assert meta["billed_usd"] > meta["estimate_usd"]
        days.close()


def test_a_contract_older_than_the_panel_is_not_comparable_nor_flagged(tmp_path, clock):
    with simulator(clock) as sim:  # created three days before the panel first looked
        sim.set_billing(factor={"disk": 1.5})
        days = SimulatedDays(tmp_path, clock, sim)
        days.look()
        days.run_until(at(DAY, 30))
        days.read_charges()
        (contract,) = days.costs()["contracts"]
        assert contract["start"] == "2024-04-28T00:00:00Z"
        assert contract["comparable"] is False and contract["mismatch"] is False
        assert contract["estimate_usd"] is None and contract["difference_pct"] is None
        assert "not comparable: it begins before the panel's own records" in contract["summary"]
        assert not [e for e in days.panel.audit.entries(1000) if e.event == "cost_mismatch"]
        days.close()


def test_frozen_gpu_time_is_booked_as_vast_ai_bills_it(tmp_path, clock):
    # vast.ai's show-instance reference: frozen is "paused with memory preserved. GPU charges
    # apply." The simulator bills it so; the panel must book it so.
    with simulator(clock, age_seconds=0) as sim:
        days = SimulatedDays(tmp_path, clock, sim, VAST_AUTO_SHUTDOWN="false")
        days.look()
        days.run_until(at(DAY, 1))
        assert days.power_on().status_code == 200
        days.run_until(at(DAY, 3))
        assert sim.external("frozen")
        days.run_until(at(DAY, 5))
        status = days.client.get("/infra/vast/status").json
        assert status["status"] == "frozen" and days.panel.status.current_session() is not None
        days.power_off()
        days.run_until(at(DAY, 6))
        days.read_charges()
        (contract,) = days.costs()["contracts"]
        gpu = items(contract)["gpu"]
        assert gpu["billed_usd"] == pytest.approx(0.5 * 4, rel=0.01)  # 2 h running, 2 h frozen
        assert gpu["estimate_usd"] == pytest.approx(gpu["billed_usd"], rel=0.002)
        assert contract["mismatch"] is False
        days.close()


def test_storage_dearer_while_stopped_is_booked_at_the_rate_then_in_force(tmp_path, clock):
    with simulator(clock, age_seconds=0, stopped_storage_factor=1.5) as sim:
        days = SimulatedDays(tmp_path, clock, sim)
        days.look()
        days.run_until(at(DAY, 6))
        assert days.power_on().status_code == 200
        running_rate = sim.instance()["storage_total_cost"]
        assert running_rate == pytest.approx(0.3 * 120 / 720)
        days.run_until(at(DAY, 9), active_until=at(DAY, 9))
        days.power_off()
        days.run_until(at(DAY, 15))
        stopped_rate = sim.instance()["storage_total_cost"]
        assert stopped_rate == pytest.approx(1.5 * 0.3 * 120 / 720)  # dearer while stopped
        with sqlite3.connect(tmp_path / "panel.db") as conn:
            rows = conn.execute(
                "SELECT start_at, end_at, storage_dph, status FROM cost_ledger ORDER BY id"
            ).fetchall()
        # Each interval at the rate vast.ai showed for it: the stopped rate while stopped.
        for _, _, rate, status in rows:
            expected = stopped_rate if status == "stopped" else running_rate
            assert rate == pytest.approx(expected), (status, rate)
        assert {status for *_, status in rows} >= {"stopped", "running"}
        # The stop and the start are booked when the panel made them; vast.ai's own bill of
        # storage over the same window agrees.
        days.read_charges()
        (contract,) = days.costs()["contracts"]
        disk = items(contract)["disk"]
        assert disk["estimate_usd"] == pytest.approx(disk["billed_usd"], rel=0.002)
        expected = 12 * stopped_rate + 3 * running_rate
        assert disk["billed_usd"] == pytest.approx(expected, rel=0.01)
        print(
            f"storage: stopped ${stopped_rate:.4f}/h, running ${running_rate:.4f}/h; billed "
            f"{disk['billed_usd']:.6f}, estimate {disk['estimate_usd']:.6f}"
        )
        days.close()


def test_a_one_dollar_day_stops_a_36_dollar_an_hour_instance_and_refuses_power_on(tmp_path, clock):
    with simulator(clock, inet_up_cost=0.0) as sim:
        sim.set_billing(dph_base=35.95)  # with 0.05 $/h storage: $36/h while running
        days = SimulatedDays(tmp_path, clock, sim, VAST_BUDGET_USD="1", VAST_BUDGET_PERIOD="day")
        days.look()
        days.run_until(at(DAY, 9))
        assert days.power_on().status_code == 200
        days.run_until(at(DAY, 9.5), active_until=at(DAY, 9.5))
        assert len(days.stops) == 1
        stopped_at = days.stops[0]
        billed_at_stop = sim.charges()["days"][DAY.isoformat()]
        storage_since_stop = 0.05 * (clock.now() - stopped_at) / 3600
        spent = billed_at_stop["gpu"] + billed_at_stop["disk"] - storage_since_stop
        # Crossing $1 takes 100 s at $36/h; the stop comes within one interval of it.
        assert 1.0 <= spent <= 1.0 + 36 * INTERVAL_S / 3600
        # In fact the look scheduled at the predicted crossing stops it a few seconds after
        # (the panel first saw it running 2 s after vast.ai started billing it).
        assert spent <= 1.0 + 36 * 5 / 3600
        print(f"budget: stopped at ${spent:.4f} billed ({(spent - 1) / 36 * 3600:.1f} s past $1)")
        assert sim.instance()["actual_status"] == "stopped"
        entries = {e.event: e for e in days.panel.audit.entries(1000)}
        assert entries["budget_stop"].meta["spent_usd"] >= 1.0
        assert "budget_warning" in entries
        assert days.costs()["budget"]["state"] == "exceeded"

        refused = days.power_on()
        assert refused.status_code == 409 and "budget is spent" in refused.json["detail"]
        puts = [r for r in sim.requests("PUT") if r["json"] == {"state": "running"}]
        assert len(puts) == 1  # the refused power-on sent nothing

        day_end = datetime.fromtimestamp(at(DAY + timedelta(days=1), 0), UTC).isoformat()
        override = days.client.post("/infra/vast/budget/override", json={"until": day_end})
        assert override.status_code == 200 and override.json["state"] == "overridden"
        assert days.power_on().status_code == 200
        assert sim.instance()["actual_status"] == "running"
        entries = {e.event: e for e in days.panel.audit.entries(1000)}
        assert entries["budget_override"].actor == "api"
        days.run_until(at(DAY, 9.7), active_until=at(DAY, 9.7))
        assert len(days.stops) == 1  # overridden until the day ends
        assert stopped_at < clock.now()
        days.close()


STORAGE_DPH = 360.0  # $0.10 a second, so a second counted twice shows
# The instance stays stopped: its storage is billed at the stopped rate, which vast.ai prices
# higher (the simulator's default factor).
STOPPED_STORAGE_DPH = STORAGE_DPH * Hardware().stopped_storage_factor


def ledger_start(db_path) -> float:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT min(start_at) FROM cost_ledger").fetchone()[0]


def storage_now(server: PanelProcess) -> tuple[float, float, float]:
    """Return (storage $, time before asking, time after)."""
    before = time.time()
    answer = server.api("GET", "/costs")
    after = time.time()
    assert answer.status_code == 200, answer.text
    return answer.json()["storage_cost_usd"], before, after


def test_storage_keeps_counting_across_a_restart_and_a_kill_9_counted_once(tmp_path):
    hardware = Hardware(disk_space=100, storage_cost=STORAGE_DPH * 720 / 100)
    with Simulator(
        api_key=SIM_KEY, instance_id=99, hardware=hardware, rate_limit=RATE_LIMIT
    ) as sim:
        db_path = tmp_path / "panel.db"
        env = simulator_env(
            sim, db_path, CONTROL_KEY, VAST_WATCHDOG_INTERVAL_S="2", VAST_STATUS_TTL_S="2"
        )
        log_path = tmp_path / "server.log"
        server = PanelProcess(env, log_path=log_path)
        assert wait_for(lambda: storage_now(server)[0] > 0, timeout=20), server.log()
        time.sleep(1.5)
        server.stop()  # a restart
        time.sleep(2.0)
        server = PanelProcess(env, log_path=log_path)
        time.sleep(1.5)
        server.kill()  # kill -9, then down for a while
        time.sleep(2.0)
        server = PanelProcess(env, log_path=log_path)
        try:
            time.sleep(1.5)
            storage, before, after = storage_now(server)
        finally:
            server.stop()
        start = ledger_start(db_path)
        assert STOPPED_STORAGE_DPH * (before - start) / 3600 <= storage + 1e-6
        assert storage <= STOPPED_STORAGE_DPH * (after - start) / 3600 + 1e-6
        # Nor more than vast.ai billed, which counted from before the panel first looked.
        billed = sum(day["disk"] for day in sim.charges()["days"].values())
        assert storage <= billed
        print(
            f"restart + kill -9: storage ${storage:.4f}, expected "
            f"${STOPPED_STORAGE_DPH * (before - start) / 3600:.4f}.."
            f"${STOPPED_STORAGE_DPH * (after - start) / 3600:.4f}"
            f" (counted twice would add >= $0.15); simulator billed ${billed:.4f}"
        )
        with sqlite3.connect(db_path) as conn:
            rows = conn.execute("SELECT start_at, end_at FROM cost_ledger ORDER BY id").fetchall()
        for (_, end), (following, _) in zip(rows, rows[1:], strict=False):
            assert following == end  # intervals touch: no gap and no overlap
