"""Activity throughput: POST /infra/vast/activity against GET /healthz on the same server.

The LLM gateway posts /activity on every request it serves, so it must cost about what the
stack's cheapest useful request costs. /healthz (one SQLite write and one read, no key) is that
baseline. In one run, on one production server (gunicorn with the repo's config) against the
simulator, N concurrent keep-alive clients call /healthz, then /activity, for the same time
each; the figures are requests/s and p50/p99 latency of both, and the ratio activity/healthz.
Target: ratio >= 0.8 with zero errors.

The load generator competes with the server for the machine's cores. `--client python`
(default; Python threads, one requests.Session each) is GIL-bound and heavier per request than
the server; `--client wrk` (Debian's wrk, one thread) leaves the server more of the CPU.

    python3 bench/activity_throughput.py [--clients 8] [--seconds 20] [--client python|wrk]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from _support import CONTROL_KEY, LoadResult, child_pids, cpu_seconds, run_load, stack

TARGET_RATIO = 0.8
MAX_REQUESTS = 2_000_000  # a bound on every phase besides its duration
WRK_POST = """wrk.method = "POST"
wrk.headers["X-API-Key"] = "{key}"
wrk.headers["Content-Type"] = "application/json"
wrk.body = "{{}}"
"""


@dataclass
class Figures:
    """Requests/s, latencies and errors of one phase, whatever generated the load."""

    name: str
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    server_cpu_s: float = 0.0  # CPU the gunicorn worker(s) used during the phase

    @property
    def server_cpu_ms(self) -> float:
        """Server CPU per request, in ms: what the endpoint costs whatever drives the load."""
        return self.server_cpu_s * 1000 / self.requests if self.requests else float("nan")

    def line(self) -> str:
        return (
            f"{self.name:9} {self.requests:7d} requests, {self.rate:7.0f} req/s, "
            f"p50 {self.p50_ms:6.2f} ms, p99 {self.p99_ms:6.2f} ms, errors {self.errors}, "
            f"server CPU {self.server_cpu_ms:.3f} ms/request"
        )


def python_phase(name: str, url: str, post: bool, clients: int, seconds: float) -> Figures:
    """Load one endpoint with Python threads and return its figures."""
    headers = {"X-API-Key": CONTROL_KEY} if post else {}

    def send(session):
        if post:
            return session.post(url, json={}, headers=headers, timeout=10)
        return session.get(url, timeout=10)

    result: LoadResult = run_load(
        name, send, clients=clients, duration_s=seconds, max_requests=MAX_REQUESTS
    )
    for sample in result.error_samples:
        print(f"  {name} error: {sample}")
    return Figures(name, result.rate, result.ms(50), result.ms(99), result.errors, result.count)


def wrk_phase(name: str, url: str, post: bool, clients: int, seconds: float) -> Figures:
    """Load one endpoint with wrk (one thread, `clients` connections) and return its figures."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_POST.format(key=CONTROL_KEY) if post else "")
    command = ["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--latency", "-s", script.name]
    out = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=seconds + 60, check=True
    ).stdout
    Path(script.name).unlink()

    def number(pattern: str, default: float = 0.0) -> float:
        match = re.search(pattern, out)
        return float(match.group(1)) if match else default

    def latency_ms(pct: str) -> float:
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if match is None:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
        return float(match.group(1)) * scale

    socket_errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    errors = int(number(r"Non-2xx or 3xx responses: (\d+)")) + socket_errors
    return Figures(
        name,
        number(r"Requests/sec:\s+([\d.]+)"),
        latency_ms("50"),
        latency_ms("99"),
        errors,
        int(number(r"(\d+) requests in")),
    )


def main(argv: list[str] | None = None) -> int:
    """Measure both endpoints on one server and print the figures and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (8)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per endpoint (20)")
    parser.add_argument("--client", choices=("python", "wrk"), default="python")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (1)")
    args = parser.parse_args(argv)
    if args.client == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk, or use --client python")
    phase = wrk_phase if args.client == "wrk" else python_phase
    print(
        f"load generator: {args.client}, {args.clients} concurrent keep-alive clients, "
        f"{args.seconds:g} s per endpoint; gunicorn workers={args.workers} (gevent)"
    )
    with stack(workers=args.workers) as (_sim, server, _folder):
        healthz_url = server.url + "/healthz"
        activity_url = server.url + "/infra/vast/activity"
        # Warm-up: connections, imports and the first SQLite pages, not counted.
        phase("warm-up", healthz_url, False, args.clients, 2)
        phase("warm-up", activity_url, True, args.clients, 2)
        workers = child_pids(server.process.pid)

        def measured(name: str, url: str, post: bool) -> Figures:
            cpu_before = cpu_seconds(workers)
            figures = phase(name, url, post, args.clients, args.seconds)
            figures.server_cpu_s = cpu_seconds(workers) - cpu_before
            print(figures.line(), flush=True)
            return figures

        healthz = measured("/healthz", healthz_url, False)
        activity = measured("/activity", activity_url, True)
        last = server.api("GET", "/status").json()["last_activity"]
    ratio = activity.rate / healthz.rate if healthz.rate else 0.0
    print(f"last_activity after the run: {last}")
    print(f"ratio activity/healthz: {ratio:.3f} (target >= {TARGET_RATIO})")
    print(
        f"server CPU per request, healthz/activity: {healthz.server_cpu_ms / activity.server_cpu_ms:.3f}"
        " (above 1: /activity costs the server less than /healthz)"
    )
    errors = healthz.errors + activity.errors
    print(f"errors: {errors}")
    return 0 if ratio >= TARGET_RATIO and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
