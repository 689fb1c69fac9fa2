"""Memory: resident memory of the gunicorn worker(s) over 10,000 activity posts and 1,000 status calls.

The production server runs against the simulator; 8 keep-alive clients send the calls in two
equal halves (5,000 posts and 500 status calls each). RSS (VmRSS from /proc/PID/status) of
every worker is read after a short warm-up, after the first half and after the second.
Targets: under 100 MB, and no growth from the first half to the second (allowed: 1 MiB of
allocator noise).

    python3 bench/memory.py [--posts 10000] [--status 1000] [--workers 1]
"""

from __future__ import annotations

import argparse
import sys

from _support import api_headers, child_pids, rss_kib, run_load, stack

LIMIT_MIB = 100.0
NOISE_KIB = 1024
CLIENTS = 8


def load(url: str, posts: int, status_calls: int) -> int:
    """Send the posts and the status calls; return how many failed."""
    headers = api_headers()
    activity = run_load(
        "activity",
        lambda s: s.post(url + "/infra/vast/activity", json={}, headers=headers, timeout=10),
        clients=CLIENTS,
        duration_s=300,
        max_requests=posts,
    )
    status = run_load(
        "status",
        lambda s: s.get(url + "/infra/vast/status", headers=headers, timeout=10),
        clients=CLIENTS,
        duration_s=300,
        max_requests=status_calls,
    )
    if activity.count != posts or status.count != status_calls:
        raise SystemExit(f"sent {activity.count} posts and {status.count} status calls only")
    return activity.errors + status.errors


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    """Measure and print RSS per worker at each point, and the growth between the halves."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=10_000)
    parser.add_argument("--status", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    print(
        f"{args.posts} activity posts and {args.status} status calls in two halves, "
        f"{CLIENTS} clients, gunicorn workers={args.workers}"
    )
    with stack(workers=args.workers, env={"VAST_STATUS_TTL_S": "1"}) as (_sim, server, _):
        workers = child_pids(server.process.pid)
        errors = load(server.url, 200, 20)  # warm-up: imports, templates, connections
        readings = {"after warm-up": [rss_kib(pid) for pid in workers]}
        errors += load(server.url, args.posts // 2, args.status // 2)
        readings["after first half"] = [rss_kib(pid) for pid in workers]
        errors += load(server.url, args.posts - args.posts // 2, args.status - args.status // 2)
        readings["after second half"] = [rss_kib(pid) for pid in workers]
        if child_pids(server.process.pid) != workers:
            raise SystemExit("a worker was replaced during the run")
    for point, values in readings.items():
        shown = ", ".join(f"pid {p} {mib(v)}" for p, v in zip(workers, values, strict=True))
        print(f"RSS {point:18}: {shown}")
    first, second = readings["after first half"], readings["after second half"]
    growth = [b - a for a, b in zip(first, second, strict=True)]
    peak = max(second + first)
    print(f"growth first->second half: {', '.join(f'{g:+d} KiB' for g in growth)}")
    print(f"peak worker RSS / {LIMIT_MIB:g} MiB limit: {peak / 1024 / LIMIT_MIB:.3f}")
    print(f"errors: {errors}")
    ok = peak / 1024 < LIMIT_MIB and max(growth) <= NOISE_KIB and errors == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
