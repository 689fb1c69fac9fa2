"""Upstream outage, full length: vast.ai unreachable for 2 minutes past the idle deadline.

The same scenario as the outage test in tests/test_reliability_load.py (which runs 20 s), from
vastpanel/testing/fault_load.py: the production server (watchdog on) against the simulator with the
instance running; the simulator's API is taken off the air (connections refused) just after
the session opens, the idle deadline passes during the outage, then it comes back.
Target: the stop goes out within one watchdog interval of vast.ai's return, audited once (one
auto_shutdown_complete, one stop sent). A stop tried while vast.ai was away (when the last
answer still said running) is audited as auto_shutdown + auto_shutdown_failed.

    python3 bench/upstream_outage.py [--outage 120] [--interval 10] [--ttl 5] [--workers 1]
"""

from __future__ import annotations

import argparse
import sys

from _support import stack

from support.fault_load import run_outage

IDLE_MINUTES = 0.05


def main(argv: list[str] | None = None) -> int:
    """Run the outage and print when the stop went out and what was audited."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=120.0, help="seconds unreachable")
    parser.add_argument("--interval", type=float, default=10.0, help="watchdog interval, s")
    parser.add_argument("--ttl", type=float, default=5.0, help="VAST_STATUS_TTL_S (default 5)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    env = {
        "VAST_STATUS_TTL_S": f"{args.ttl:g}",
        "VAST_WATCHDOG_INTERVAL_S": f"{args.interval:g}",
        "VAST_AUTO_SHUTDOWN_MINUTES": f"{IDLE_MINUTES:g}",
        "VASTPANEL_WATCHDOG": "true",
    }
    print(
        f"outage {args.outage:g} s, idle {IDLE_MINUTES * 60:g} s, watchdog interval "
        f"{args.interval:g} s, VAST_STATUS_TTL_S={args.ttl:g}, gunicorn workers={args.workers}"
    )
    sim_options = {"initial_state": "running"}
    with stack(workers=args.workers, env=env, sim_options=sim_options) as (sim, _server, folder):
        report = run_outage(
            sim,
            str(folder / "panel.db"),
            outage_s=args.outage,
            interval_s=args.interval,
            idle_s=IDLE_MINUTES * 60,
        )
    for line in report.lines():
        print(line)
    after = report.stop_after_return_s
    ok = (
        after is not None
        and 0 <= after <= args.interval
        and report.stops_sent == 1
        and report.events.count("auto_shutdown_complete") == 1
        # A stop tried during the outage is audited with its failure; no attempt is unaudited.
        and report.events.count("auto_shutdown") == 1 + report.events.count("auto_shutdown_failed")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
