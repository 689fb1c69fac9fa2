"""A hostile instance: how late the idle stop comes, and the worker's peak memory.

The production server (gunicorn, one gevent worker, the watchdog looking every second, reading
the LLM's metrics and sending the agent a heartbeat at each look) watches a running instance
whose port 8001 answers every request with a 200 and then one byte every --every-s seconds
(trickle), the same in its headers (trickle_headers), or a 512 MB body (flood; --flood-mb).
Nothing is active, so the idle stop falls due --idle-s after the session opened. For each mode:
how long after that the stop reached the simulated vast.ai, and the gunicorn worker's peak
resident memory (VmHWM in /proc/PID/status; the highest of any worker, should one be killed).
The scenario is tests/support/hostile_instance.py's, which tests/test_hostile_instance_e2e.py
runs too.

Targets: every stop within 8 s of falling due (a stop waits at most for two of the panel's
3-second reads), and the worker under 150 MB (an idle worker is about 50 MB).

    python3 bench/hostile_instance.py [--idle-s 12] [--every-s 2] [--flood-mb 512]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import _support  # noqa: F401 (puts tests/ on the path)

from support.hostile_instance import MODES, idle_stop_against

TARGET_LATENESS_S = 8.0
TARGET_PEAK_MB = 150.0


def main(argv: list[str] | None = None) -> int:
    """Run each mode once; exit 0 when every stop and every peak meets its target."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--idle-s", type=float, default=12.0)
    parser.add_argument("--every-s", type=float, default=2.0)
    parser.add_argument("--flood-mb", type=int, default=512)
    parser.add_argument("--wait-s", type=float, default=90.0, help="past the deadline, at most")
    args = parser.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory(prefix="vastpanel-bench-") as tmp:
        for mode in MODES:
            outcome = idle_stop_against(
                mode,
                Path(tmp) / mode,
                idle_s=args.idle_s,
                wait_s=args.wait_s,
                every_s=args.every_s,
                flood_bytes=args.flood_mb * 1024 * 1024,
            )
            peak_mb = outcome.worker_peak_kib / 1024
            if outcome.lateness_s is None:
                late = f"no stop within {args.wait_s:g} s of the deadline"
                ratio = float("inf")
            else:
                late = f"stop {outcome.lateness_s:.2f} s after the deadline"
                ratio = outcome.lateness_s / TARGET_LATENESS_S
            print(
                f"{mode}: {late} (target < {TARGET_LATENESS_S:g} s): ratio {ratio:.2f}; "
                f"worker peak {peak_mb:.0f} MB (target < {TARGET_PEAK_MB:g} MB): ratio "
                f"{peak_mb / TARGET_PEAK_MB:.2f}; {outcome.requests_seen} requests to the instance"
            )
            ok = ok and ratio < 1 and peak_mb < TARGET_PEAK_MB
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
