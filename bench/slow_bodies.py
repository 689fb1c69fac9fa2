"""Slow request bodies: the gateway's /infra/vast/activity while 1,000 sockets each send
`POST /signin` with `Content-Length: 60000` and never the body (issue 23 §2).

One production server (gunicorn with the repo's config); the sockets come from 127.0.0.2, the
gateway posts from 127.0.0.1 every 50 ms on a new connection, for the body bound
(VASTPANEL_BODY_TIMEOUT_S, 10 s) and 2 s more; each post's latency counts, a failed one as 5 s
(the gateway's timeout). The figures: /activity p99 and the ratio p99 / 1 s, and when the
server closed the sockets (at once past VASTPANEL_CONNECTIONS_PER_CLIENT, else at the bound).
Target: ratio < 1, zero errors, every socket closed within the bound (+2 s).

    python3 bench/slow_bodies.py [--sockets 1000]
"""

from __future__ import annotations

import argparse
import sys

from _support import stack

from support.slow_bodies import slow_bodies

TARGET_P99_S = 1.0
BOUND_S = 10.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=1000, help="unsent bodies (1000)")
    args = parser.parse_args(argv)
    with stack() as (_sim, server, _folder):
        result = slow_bodies(server, sockets=args.sockets, bound_s=BOUND_S)
    ratio = result.p99() / TARGET_P99_S
    last = max(result.closed_after, default=float("nan"))
    print(
        f"/activity with {args.sockets:,} unsent bodies: {len(result.latencies)} posts, "
        f"p99 {result.p99() * 1000:.1f} ms, errors {result.errors}"
    )
    print(f"ratio p99 / 1 s: {ratio:.3f}")
    print(
        f"sockets: {result.closed_at_once} closed at once, the last closed {last:.1f} s after "
        f"its headers (bound {BOUND_S:g} s), {result.still_open} still open"
    )
    met = ratio < 1 and result.errors == 0 and result.still_open == 0 and last <= BOUND_S + 2
    print("target met" if met else "TARGET MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
