"""Starvation: /infra/vast/activity and /healthz while hostile clients hold connections.

The scenario of tests/test_starvation.py, from vastpanel/testing/starvation.py: against the
production server (gunicorn with the repo's config) and the simulator, all at once, 100 idle
half-open connections (`GET /healthz HTTP/1.1\\r\\n` and nothing more, reopened when the
server closes them), 50 clients posting wrong keys to /signin from their own loopback
addresses (one a second each), and 20 power-ons waiting for health while the start is queued
(the GPU is taken). The LLM gateway posts /activity 300 times (20 ms apart) and /healthz is
probed every 0.5 s. Figures: p50/p99 of /activity, /healthz answered, the load that was held,
and the ratio p99 / 100 ms. Target: ratio < 1, no error, every probe answered, every power-on
healthy once the GPU is freed.

    python3 bench/starvation.py [--half-open 100] [--guessers 50] [--power-ons 20] [--posts 300]
"""

from __future__ import annotations

import argparse
import sys

from _support import stack

from support.starvation import TARGET_P99_S, run_starvation


def main(argv: list[str] | None = None) -> int:
    """Run the hostile load once and print what the gateway saw."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--half-open", type=int, default=100)
    parser.add_argument("--guessers", type=int, default=50)
    parser.add_argument("--power-ons", type=int, default=20)
    parser.add_argument("--posts", type=int, default=300)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    print(
        f"{args.half_open} half-open connections, {args.guessers} wrong-key sign-in clients, "
        f"{args.power_ons} power-ons waiting for health; {args.posts} activity posts; "
        f"gunicorn workers={args.workers}"
    )
    env = {"VAST_WAIT_TIMEOUT_S": "180"}
    with stack(workers=args.workers, env=env) as (sim, server, _folder):
        report = run_starvation(
            server,
            sim,
            half_open=args.half_open,
            guessers=args.guessers,
            power_ons=args.power_ons,
            posts=args.posts,
        )
    for line in report.lines():
        print(line, flush=True)
    healthy = ["200 Instance running and healthy"] * args.power_ons
    ok = (
        report.activity_ms(99) < TARGET_P99_S * 1000
        and not report.activity_errors
        and report.healthz_s
        and not report.healthz_errors
        and report.power_ons_waiting == args.power_ons
        and report.power_on_answers == healthy
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
