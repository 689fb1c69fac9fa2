"""Metrics scrape: what one GET /metrics costs on the production server with two workers.

A Prometheus scrape reads the shared state from SQLite (the same report as /infra/vast/status)
and sums every worker's counter files. One client scrapes 200 times in a row (Prometheus
scrapes every 15-60 s, so this is far harsher) with the instance running, two workers.
Target: p95 under 50 ms, zero errors.

    python3 bench/metrics_scrape.py [--scrapes 200] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import time

import requests
from _support import percentile, stack

TARGET_P95_MS = 50.0


def main(argv: list[str] | None = None) -> int:
    """Scrape the server repeatedly and print the latency figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    token = "bench-metrics-token-0123456789"
    env = {"METRICS_TOKEN": token}
    with stack(workers=args.workers, env=env, sim_options={"initial_state": "running"}) as (
        _,
        server,
        _,
    ):
        session = requests.Session()
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(5):  # warm-up: both workers import and open their connections
            session.get(server.url + "/metrics", headers=headers, timeout=10)
        took, errors, size = [], 0, 0
        give_up = time.monotonic() + 120
        for _ in range(args.scrapes):
            if time.monotonic() > give_up:
                break
            started = time.perf_counter()
            answer = session.get(server.url + "/metrics", headers=headers, timeout=10)
            took.append((time.perf_counter() - started) * 1000)
            errors += answer.status_code != 200
            size = len(answer.content)
    p50, p95 = percentile(took, 50), percentile(took, 95)
    print(
        f"{len(took)} scrapes, {args.workers} workers: p50 {p50:.1f} ms, p95 {p95:.1f} ms, "
        f"max {max(took):.1f} ms, {size} bytes, {errors} errors; "
        f"p95 {p95:.1f} ms / {TARGET_P95_MS:g} ms target = {p95 / TARGET_P95_MS:.2f}"
    )
    return 0 if p95 < TARGET_P95_MS and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
