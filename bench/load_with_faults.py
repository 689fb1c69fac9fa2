"""Load with faults, full length: 200 activity posters for 60 s while vast.ai fails 1 call in 10.

The same scenario as tests/test_reliability_load.py (which runs it for 20 s), from
vastpanel/testing/fault_load.py: the production server (one worker, the watchdog every 2 s)
against the simulator, which answers one call in every ten with a 500, a 429 or an HTML page; a
signed-in page polls its widgets; /healthz and the watchdog's lease are watched throughout.
Targets: zero 5xx from /activity and the page, last_activity never backwards, /healthz always
200 with the watchdog alive, never two watchdog intervals without a look (read from the lease
each look renews) and the lease never lapsed; then one auto-stop once the load ends.

    python3 bench/load_with_faults.py [--posters 200] [--seconds 60] [--workers 1]
"""

from __future__ import annotations

import argparse
import sys

from _support import stack

from support import wait_for
from support.fault_load import audit_events, faults_served, queue_faults, run_fault_load

INTERVAL_S = 2.0
IDLE_MINUTES = 0.1


def main(argv: list[str] | None = None) -> int:
    """Run the load, print what it saw, then wait for the one auto-stop."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posters", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    env = {
        "VAST_STATUS_TTL_S": "0.2",
        "VAST_WATCHDOG_INTERVAL_S": str(INTERVAL_S),
        "VAST_AUTO_SHUTDOWN_MINUTES": str(IDLE_MINUTES),
        "VASTPANEL_WATCHDOG": "true",
    }
    print(
        f"{args.posters} activity posters for {args.seconds:g} s, page polling, vast.ai failing "
        f"1 call in 10; gunicorn workers={args.workers}; load generator: Python threads"
    )
    sim_options = {"initial_state": "running"}
    with stack(workers=args.workers, env=env, sim_options=sim_options) as (sim, server, folder):
        db_path = str(folder / "panel.db")
        plan = queue_faults(sim, calls=20_000, every=10)
        if not wait_for(lambda: "session_opened" in audit_events(db_path), timeout=15):
            raise SystemExit("the watchdog never opened the session")
        report = run_fault_load(
            server,
            sim,
            db_path,
            posters=args.posters,
            seconds=args.seconds,
            watchdog_interval_s=INTERVAL_S,
        )
        report.upstream_calls, report.upstream_failed = faults_served(sim, plan)
        for line in report.lines():
            print(line, flush=True)
        sim.clear_faults()
        timeout = IDLE_MINUTES * 60 + 2 * INTERVAL_S + 5
        wait_for(lambda: "auto_shutdown_complete" in audit_events(db_path), timeout=timeout)
        wait_for(lambda: False, timeout=INTERVAL_S)  # one more look: no second stop
        stops = audit_events(db_path).count("auto_shutdown_complete")
    print(f"auto_shutdown_complete after the load: {stops} (target 1)")
    ok = (
        report.activity_5xx == 0
        and report.activity_error_count == 0
        and report.answered_backwards == report.stored_backwards == 0
        and report.page_5xx == 0
        and not report.healthz_not_ok
        and report.watchdog_lapsed == 0
        and report.longest_look_gap_s < 2 * INTERVAL_S
        and stops == 1
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
