"""How late the watchdog's looks come under the gevent worker while 200 clients post /activity.

The production server (one gunicorn gevent worker; the watchdog's looks are greenlets of the
same hub as the requests) watches a running simulated instance with a short look interval
(`--interval`, 2 s). Each look renews the watchdog's lease in SQLite until look time + 2.5
intervals, so a process of its own reads the lease every 10 ms and knows when every look ran.
First some looks on a quiet server give the schedule's anchor; then `--clients` (200) threads
post `POST /infra/vast/activity` back to back for `--seconds` (40).

Lateness of a look = when it ran - when the interval schedule said (anchor + k x interval);
the longest gap between two looks is printed too. Judged by: max lateness <= 1 s (ratio
max/1 s <= 1); /activity's p99 is printed beside it.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sqlite3
import sys
import time

from _support import CONTROL_KEY, percentile, run_load, stack

TARGET_MAX_S = 1.0
LEASE_TTL_INTERVALS = 2.5  # vastpanel/watchdog/looks.py: the lease lasts 2.5 intervals
POLL_S = 0.01


def watch_looks(db_path: str, interval_s: float, until: float, found) -> None:
    """Note the time of every look (from the lease's renewals) until the wall-clock deadline."""
    db = sqlite3.connect(db_path, timeout=5)
    last = None
    looks = []
    while time.time() < until:
        try:
            row = db.execute("SELECT expires_at FROM leases WHERE name = 'watchdog'").fetchone()
        except sqlite3.OperationalError:
            row = None  # busy for a moment: read again
        if row is not None and row[0] != last:
            last = row[0]
            looks.append(row[0] - LEASE_TTL_INTERVALS * interval_s)
        time.sleep(POLL_S)
    db.close()
    found.extend(looks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--interval", type=float, default=2.0, help="VAST_WATCHDOG_INTERVAL_S")
    parser.add_argument("--quiet-looks", type=int, default=3, help="looks before the load")
    args = parser.parse_args()

    env = {
        "VAST_WATCHDOG_INTERVAL_S": f"{args.interval:g}",
        "VAST_AUTO_SHUTDOWN_MINUTES": "60",  # no stop during the run
        "VAST_IDLE_SOURCES": "gateway",
    }
    with stack(env=env, sim_options={"initial_state": "running"}) as (_sim, server, folder):
        quiet_s = args.quiet_looks * args.interval + 1.0
        until = time.time() + quiet_s + args.seconds + args.interval
        manager = multiprocessing.Manager()
        found = manager.list()
        watcher = multiprocessing.get_context("spawn").Process(
            target=watch_looks, args=(str(folder / "panel.db"), args.interval, until, found)
        )
        watcher.start()
        time.sleep(quiet_s)
        load_started = time.time()
        activity = run_load(
            "activity",
            lambda s: s.post(
                server.url + "/infra/vast/activity",
                headers={"X-API-Key": CONTROL_KEY},
                timeout=10,
            ),
            clients=args.clients,
            duration_s=args.seconds,
            max_requests=10_000_000,
        )
        load_ended = time.time()
        watcher.join(timeout=args.seconds + 60)
        looks = sorted(found)

    before = [t for t in looks if t < load_started]
    during = [t for t in looks if load_started <= t <= load_ended]
    if not before or len(during) < 2:
        print(f"too few looks seen: {len(before)} before the load, {len(during)} during it")
        return 1
    anchor = before[-1]
    lateness = []
    for t in during:
        # Looks are never early (a few ms of polling aside): the slot is the one before.
        k = math.floor((t - anchor) / args.interval + 0.02)
        lateness.append(max(0.0, t - (anchor + k * args.interval)))
    gaps = [b - a for a, b in zip([before[-1], *during], during, strict=False)]
    worst = max(lateness)
    print(
        f"{args.clients} clients posting /activity for {args.seconds:g} s, looks every "
        f"{args.interval:g} s, one gevent worker"
    )
    print(activity.line())
    print(
        f"looks during the load: {len(during)} (expected ~{args.seconds / args.interval:.0f}); "
        f"lateness p50 {percentile(lateness, 50) * 1000:.0f} ms, "
        f"max {worst * 1000:.0f} ms; longest gap between looks {max(gaps):.2f} s"
    )
    print(f"/activity p99 {activity.ms(99):.1f} ms beside them")
    ratio = worst / TARGET_MAX_S
    print(f"ratio max lateness / {TARGET_MAX_S:g} s = {ratio:.3f} (target <= 1)")
    return 0 if ratio <= 1 and activity.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
