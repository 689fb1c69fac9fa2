"""Shared by the benchmarks: the production server and the simulator on loopback, and figures.

The server is the test suite's (support.liveserver: gunicorn with the repo's config,
in its own process group). Every load loop here is bounded by a request count and by a
deadline, whichever comes first.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

# The test suite's helpers (tests/support/) are the benchmarks' too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.liveserver import (  # noqa: E402
    PanelProcess,
    SimulatorProcess,
    instant_simulator,
    simulator_env,
)
from vastpanel.simulator import Simulator  # noqa: E402

SIM_KEY = "bench-sim-key-0123456789abcdef"
CONTROL_KEY = "bench-control-key-fedcba9876543210"
INSTANCE_ID = 4242


# --- the stack ----------------------------------------------------------------------------------


def panel_env(sim: Simulator, db_path: Path, **overrides: str) -> dict[str, str]:
    """Return the server's environment against the simulator, on the given database."""
    return simulator_env(sim, db_path, CONTROL_KEY, **{"VAST_WAIT_TIMEOUT_S": "30", **overrides})


@contextlib.contextmanager
def stack(
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    sim_options: dict | None = None,
    before_start: Callable[[Path], None] | None = None,
    sim_process: bool = False,
) -> Iterator[tuple[Simulator | SimulatorProcess, PanelProcess, Path]]:
    """Run the simulator and the production server in a temporary folder; yield both and it.

    before_start(db_path) runs before the server starts (to fill the database). sim_process:
    the simulator in its own process (then sim_options are not taken). When the benchmark
    fails, the end of the server's log is printed on stderr.
    """
    simulator = (
        SimulatorProcess(SIM_KEY, INSTANCE_ID)
        if sim_process
        else instant_simulator(SIM_KEY, INSTANCE_ID, **(sim_options or {}))
    )
    with tempfile.TemporaryDirectory(prefix="vastpanel-bench-") as tmp, simulator as sim:
        folder = Path(tmp)
        db_path = folder / "panel.db"
        if before_start is not None:
            before_start(db_path)
        # Access lines go to a file, as production sends them to its log.
        server = PanelProcess(
            panel_env(sim, db_path, **(env or {})), workers=workers, log_path=folder / "server.log"
        )
        try:
            yield sim, server, folder
        except BaseException:
            print(server.log()[-4000:], file=sys.stderr)
            raise
        finally:
            server.stop()


def api_headers() -> dict[str, str]:
    """Return the headers of a JSON API call with the control key."""
    return {"X-API-Key": CONTROL_KEY}


# --- load and latency ---------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Return the p-th percentile (nearest rank) of the values; nan when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class LoadResult:
    """What one load phase did: latencies of the answered requests, errors, and time taken."""

    name: str
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def count(self) -> int:
        return len(self.latencies) + self.errors

    @property
    def rate(self) -> float:
        """Successful requests per second."""
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def ms(self, p: float) -> float:
        """Return the p-th percentile latency in milliseconds."""
        return percentile(self.latencies, p) * 1000

    def line(self) -> str:
        """Return the one-line summary the benchmarks print."""
        return (
            f"{self.name}: {self.count} requests in {self.elapsed:.1f} s, "
            f"{self.rate:.0f} req/s, p50 {self.ms(50):.2f} ms, p95 {self.ms(95):.2f} ms, "
            f"p99 {self.ms(99):.2f} ms, errors {self.errors}"
        )


def run_load(
    name: str,
    send: Callable[[requests.Session], requests.Response],
    *,
    clients: int,
    duration_s: float,
    max_requests: int,
    pause_s: float = 0.0,
    ok: Callable[[requests.Response], bool] = lambda r: r.status_code == 200,
    session_factory: Callable[[], requests.Session] = requests.Session,
) -> LoadResult:
    """Run `clients` threads, each with its own keep-alive session, calling send in a loop.

    Each loop ends at the deadline or when the shared request budget is spent; pause_s makes
    each client a poller that waits that long between its requests, its first request at a
    random moment within the first pause (independent pollers do not arrive in step).
    """
    result = LoadResult(name)
    lock = threading.Lock()
    budget = [max_requests]
    start = time.monotonic()
    deadline = start + duration_s

    def client() -> None:
        session = session_factory()
        mine: list[float] = []
        errors, samples = 0, []
        try:
            if pause_s:
                time.sleep(random.uniform(0, pause_s))
            while time.monotonic() < deadline:
                with lock:
                    if budget[0] <= 0:
                        break
                    budget[0] -= 1
                sent = time.perf_counter()
                try:
                    response = send(session)
                    good = ok(response)
                    detail = f"{response.status_code} {response.text[:120]}"
                except requests.RequestException as exc:
                    good, detail = False, type(exc).__name__
                took = time.perf_counter() - sent
                if good:
                    mine.append(took)
                else:
                    errors += 1
                    if len(samples) < 3:
                        samples.append(detail)
                if pause_s:
                    time.sleep(max(0.0, min(pause_s, deadline - time.monotonic())))
        finally:
            session.close()
            with lock:
                result.latencies.extend(mine)
                result.errors += errors
                result.error_samples.extend(samples[: 5 - len(result.error_samples)])

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration_s + 60)
    result.elapsed = time.monotonic() - start
    return result


# --- processes ----------------------------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    """Return the direct children of a process (gunicorn's workers, for its master)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children.extend(int(c) for c in text)
    return sorted(children)


def rss_kib(pid: int) -> int:
    """Return a process's resident memory (VmRSS) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pids: list[int]) -> float:
    """Return the CPU time (user + system) the processes have used so far, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks
