"""Status fan-out: many pollers of /infra/vast/status share one vast.ai answer per TTL.

50 pollers (threads, one keep-alive requests.Session each) call GET /infra/vast/status on the
production server for 30 s, each waiting --interval seconds between its calls (a page polls
every 2-5 s; 0.5 s is harsher). The simulator counts the GETs it received. Run once with one
gunicorn worker and once with two (the answer is shared through SQLite with a lease).
Targets: upstream GETs <= duration / VAST_STATUS_TTL_S + 2, and p95 latency under 20 ms.

    python3 bench/status_fanout.py [--pollers 50] [--seconds 30] [--interval 0.5] [--ttl 5]
                                   [--workers 1 2]
"""

from __future__ import annotations

import argparse
import sys

from _support import api_headers, run_load, stack

TARGET_P95_MS = 20.0


def one_run(workers: int, pollers: int, seconds: float, interval: float, ttl: float) -> bool:
    """Poll one server with `workers` workers; print the figures and tell whether they pass."""
    with stack(workers=workers, env={"VAST_STATUS_TTL_S": f"{ttl:g}"}) as (sim, server, _):
        url = server.url + "/infra/vast/status"
        server.api("GET", "/status")  # the first answer, then count from a clean log
        sim.clear_requests()
        headers = api_headers()
        result = run_load(
            f"workers={workers}",
            lambda session: session.get(url, headers=headers, timeout=10),
            clients=pollers,
            duration_s=seconds,
            max_requests=1_000_000,
            pause_s=interval,
        )
        times = [r["time"] for r in sim.requests(method="GET")]
    gets = len(times)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    allowed = result.elapsed / ttl + 2
    p95 = result.ms(95)
    print(result.line())
    if gaps:
        print(f"  gaps between upstream GETs: min {min(gaps):.2f} s, max {max(gaps):.2f} s")
    print(
        f"  upstream GETs: {gets} (allowed <= {result.elapsed:.1f} / {ttl:g} + 2 = "
        f"{allowed:.1f}); ratio GETs/allowed {gets / allowed:.2f}; "
        f"p95 {p95:.2f} ms / {TARGET_P95_MS:g} ms target = {p95 / TARGET_P95_MS:.2f}"
    )
    for sample in result.error_samples:
        print(f"  error: {sample}")
    return gets <= allowed and p95 < TARGET_P95_MS and result.errors == 0


def main(argv: list[str] | None = None) -> int:
    """Run the fan-out once per worker count and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=0.5, help="pause between polls, s")
    parser.add_argument("--ttl", type=float, default=5.0, help="VAST_STATUS_TTL_S")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    print(
        f"{args.pollers} pollers, {args.seconds:g} s, {args.interval:g} s between polls, "
        f"VAST_STATUS_TTL_S={args.ttl:g}; load generator: Python threads"
    )
    passed = [one_run(w, args.pollers, args.seconds, args.interval, args.ttl) for w in args.workers]
    return 0 if all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
