"""How long a move to another machine takes, against the simulator's own start time.

The production server and the simulated market (wall time, the demo's ratios: scheduling
`--schedule` 1 s, creating `--create` 2 s, loading `--load` 4 s, the model's warm-up `--warm`
3 s) in a temporary folder. First the baseline: a start on a free machine, from
`POST /infra/vast/power/on` (waiting for health) to its answer. Then the same instance is
stopped, another renter takes its machine's GPU, and with VAST_MOVE=auto a start is asked
again: from vast.ai's queued answer ("stuck") to the moment the new instance is healthy and
the panel controls it (`move_completed`), split into the search and the create (up to
`move_created`) and the new instance's boot. Repeated `--rounds` times (3).

Judged by: the move takes no longer than the search, the create and one start, plus the
watchdog's stored steps (each step waits for the move job, every 2 s): ratio
move / (search and create + start + 2 steps x 2 s) <= 1.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import time

from _support import CONTROL_KEY, INSTANCE_ID, SIM_KEY

from support import wait_for
from support.liveserver import PanelProcess, simulator_env
from vastpanel.simulator import Simulator

STEP_S = 2.0  # vastpanel/watchdog/looks.py MOVE_EVERY_S


def audit_times(db_path: str, *events: str) -> dict[str, float]:
    """Return when each of these events was last written."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute(
            f"SELECT event, max(ts) FROM audit WHERE event IN ({', '.join('?' for _ in events)}) "
            "GROUP BY event",
            events,
        ).fetchall()
    return dict(rows)


def one_round(args, folder) -> tuple[float, float, float, float]:
    """Return (start, move, search and create, new boot) in seconds for one round."""
    with Simulator(
        api_key=SIM_KEY,
        instance_id=INSTANCE_ID,
        schedule_delay=args.schedule,
        create_delay=args.create,
        load_delay=args.load,
        warm_delay=args.warm,
        stop_delay=0.5,
    ) as sim:
        db_path = folder / "panel.db"
        env = simulator_env(
            sim,
            db_path,
            CONTROL_KEY,
            VAST_MOVE="auto",
            VAST_WATCHDOG_INTERVAL_S="1",
            VAST_STATUS_TTL_S="0.5",
            VAST_WAIT_TIMEOUT_S="120",
        )
        server = PanelProcess(env, log_path=folder / "server.log")
        try:
            sent = time.monotonic()
            on = server.api("POST", "/power/on", json={"wait_for_health": True}, timeout=180)
            start_s = time.monotonic() - sent
            if on.status_code != 200:
                raise RuntimeError(f"the baseline start answered {on.status_code}: {on.text}")
            assert server.api("POST", "/power/off").status_code == 200
            wait_for(lambda: sim.instance()["actual_status"] == "stopped", 30, 0.05)
            time.sleep(2.5)  # vast.ai's 2 s between reads: the stop is seen as stopped
            sim.take_gpu()
            asked = server.api("POST", "/power/on", json={"wait_for_health": False})
            if asked.status_code != 200:
                raise RuntimeError(f"the second start answered {asked.status_code}: {asked.text}")
            done = wait_for(
                lambda: "move_completed" in audit_times(str(db_path), "move_completed"),
                180,
                0.05,
            )
            if not done:
                raise RuntimeError(f"no move completed: {server.log()[-3000:]}")
            times = audit_times(
                str(db_path), "power_on_queued", "move_started", "move_created", "move_completed"
            )
        finally:
            server.stop()
    stuck = times["power_on_queued"]
    move_s = times["move_completed"] - stuck
    search_create_s = times["move_created"] - stuck
    return start_s, move_s, search_create_s, move_s - search_create_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--schedule", type=float, default=1.0)
    parser.add_argument("--create", type=float, default=2.0)
    parser.add_argument("--load", type=float, default=4.0)
    parser.add_argument("--warm", type=float, default=3.0)
    args = parser.parse_args()

    import tempfile
    from pathlib import Path

    results = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="vastpanel-bench-") as tmp:
            results.append(one_round(args, Path(tmp)))
    start, move, search_create, boot = (statistics.median(r[i] for r in results) for i in range(4))
    print(
        f"{args.rounds} rounds, simulator delays: scheduling {args.schedule:g} s, creating "
        f"{args.create:g} s, loading {args.load:g} s, warm-up {args.warm:g} s (medians)"
    )
    print(f"a start on a free machine: {start:.1f} s (power/on to healthy)")
    print(
        f"a move, stuck to the new instance healthy and switched: {move:.1f} s "
        f"(search and create {search_create:.1f} s, the new instance's boot {boot:.1f} s)"
    )
    for i, (s, m, sc, b) in enumerate(results, 1):
        print(
            f"  round {i}: start {s:.1f} s, move {m:.1f} s (search+create {sc:.1f} s, boot {b:.1f} s)"
        )
    allowed = search_create + start + 2 * STEP_S
    ratio = move / allowed
    print(f"ratio move / (search and create + start + 2 steps) = {ratio:.2f} (target <= 1)")
    return 0 if ratio <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
