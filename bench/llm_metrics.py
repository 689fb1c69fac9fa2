"""The LLM's metrics as an idle signal: what a watchdog look costs with them, and what the
instance sees.

1. Look duration. The real Watchdog.look() in this process (real SQLite file, the simulator
   over loopback HTTP, VAST_STATUS_TTL_S=0: the vast.ai answer is reused only within vast.ai's
   2 s GET interval), --looks times with the
   gateway as the only source, then with a metrics read in every look
   (VAST_METRICS_EVERY_S=0.001), then the stop path's fresh read right before a stop that a
   running request cancels. Measured in process because gunicorn gives no per-look timing.
   Target: p95 of a look with the metrics read under 100 ms.
2. Instance-side GETs. The production server with two gunicorn workers and the watchdog on,
   50 pollers of /infra/vast/status every 0.5 s for --seconds (60), the default
   VAST_METRICS_EVERY_S (15): the simulator counts the GETs of /metrics it got.
   Target: at most 60 / VAST_METRICS_EVERY_S + 1 per minute.

    python3 bench/llm_metrics.py [--looks 200] [--seconds 60] [--every 15]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import requests
from _support import (
    CONTROL_KEY,
    INSTANCE_ID,
    SIM_KEY,
    api_headers,
    percentile,
    run_load,
    stack,
)

from support.liveserver import instant_simulator, simulator_env
from vastpanel import Config, create_app
from vastpanel.simulator import LlmConfig, Simulator
from vastpanel.watchdog.looks import watchdog_for

TARGET_LOOK_P95_MS = 100.0


def time_looks(sim: Simulator, folder: Path, looks: int, **env: str) -> list[float]:
    """Run looks on a fresh database; return their durations in seconds."""
    config = simulator_env(
        sim,
        folder / f"looks-{len(list(folder.iterdir()))}.db",
        CONTROL_KEY,
        VAST_STATUS_TTL_S="0",
        VAST_AUTO_SHUTDOWN_MINUTES="600",
        **env,
    )
    app = create_app(replace(Config.from_env(config), testing=True))  # as in tests: no watchdog
    watchdog = watchdog_for(app.extensions["vastpanel"])
    watchdog.look()  # opens the session and the first baseline
    durations = []
    for _ in range(looks):
        time.sleep(0.002)  # past VAST_METRICS_EVERY_S=0.001
        started = time.perf_counter()
        look = watchdog.look()
        durations.append(time.perf_counter() - started)
        assert look.leader and look.error is None, look
    app.extensions["vastpanel"].store.close()
    return durations


def time_cancelled_stops(sim: Simulator, folder: Path, count: int) -> list[float]:
    """Time looks past the idle deadline whose fresh read finds a request running.

    Each round: a new database, a status read (the session and an idle baseline), then a
    short generation; the timed look reuses the idle reading (VAST_METRICS_EVERY_S is long),
    finds the deadline passed, and reads afresh under the power lock before the stop.
    """
    url = f"{sim.llm_url}/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 20}
    durations = []
    for round_ in range(count):
        config = simulator_env(
            sim,
            folder / f"stops-{round_}.db",
            CONTROL_KEY,
            VAST_STATUS_TTL_S="0",
            VAST_AUTO_SHUTDOWN_MINUTES="0.0001",  # past the deadline at once
            VAST_METRICS_EVERY_S="3600",  # only the fresh read before the stop reads
        )
        app = create_app(replace(Config.from_env(config), testing=True))
        panel = app.extensions["vastpanel"]
        watchdog = watchdog_for(panel)
        panel.status.report()
        generation = threading.Thread(target=requests.post, args=(url,), kwargs={"json": body})
        generation.start()  # 20 tokens at 0.05 s: about a second
        time.sleep(0.2)
        started = time.perf_counter()
        look = watchdog.look()
        durations.append(time.perf_counter() - started)
        assert look.stopped is None, "stopped with a request running"
        generation.join(30)
        panel.store.close()
    assert not sim.requests("PUT"), "a stop was sent"
    return durations


def summary(name: str, durations: list[float]) -> str:
    ms = [d * 1000 for d in durations]
    return (
        f"{name}: {len(ms)} looks, p50 {percentile(ms, 50):.2f} ms, "
        f"p95 {percentile(ms, 95):.2f} ms, max {max(ms):.2f} ms"
    )


def look_durations(looks: int) -> bool:
    """Part 1: print look durations without and with the metrics read; tell if on target."""
    with (
        tempfile.TemporaryDirectory(prefix="vastpanel-bench-") as tmp,
        instant_simulator(
            SIM_KEY, INSTANCE_ID, initial_state="running", llm=LlmConfig(token_delay_s=0.05)
        ) as sim,
    ):
        folder = Path(tmp)
        gateway = time_looks(sim, folder, looks, VAST_IDLE_SOURCES="gateway")
        with_metrics = time_looks(sim, folder, looks, VAST_METRICS_EVERY_S="0.001")
        reads = len(sim.llm_requests("GET", "/metrics"))
        cancelled = time_cancelled_stops(sim, folder, max(10, looks // 10))
        events = len(sim.llm_requests("GET", "/metrics")) - reads
    print(summary("look, gateway only", gateway))
    print(summary("look with a metrics read (a /metrics GET each)", with_metrics))
    print(f"  /metrics GETs at the simulator during those looks: {reads}")
    print(summary("look past the deadline, fresh read finds a request running", cancelled))
    print(f"  /metrics GETs in those rounds: {events} (a baseline and a fresh read each)")
    p95 = percentile(with_metrics, 95) * 1000
    added = p95 - percentile(gateway, 95) * 1000
    print(
        f"  the metrics read adds {added:.2f} ms at p95; look p95 {p95:.2f} ms / "
        f"{TARGET_LOOK_P95_MS:g} ms target = {p95 / TARGET_LOOK_P95_MS:.2f}"
    )
    return p95 < TARGET_LOOK_P95_MS


def instance_gets(seconds: float, every: float) -> bool:
    """Part 2: count the instance-side GETs with two workers under polling."""
    env = {"VAST_METRICS_EVERY_S": f"{every:g}", "VAST_WATCHDOG_INTERVAL_S": "10"}
    options = {"initial_state": "running"}
    with stack(workers=2, env=env, sim_options=options) as (sim, server, _):
        server.api("GET", "/status")
        sim.clear_requests()
        url = server.url + "/infra/vast/status"
        headers = api_headers()
        result = run_load(
            "status pollers, 2 workers",
            lambda session: session.get(url, headers=headers, timeout=10),
            clients=50,
            duration_s=seconds,
            max_requests=1_000_000,
            pause_s=0.5,
        )
        metrics = sim.llm_requests("GET", "/metrics")
        other = [r for r in sim.llm_requests() if r["path"] != "/metrics"]
    per_minute = len(metrics) * 60 / result.elapsed
    allowed = 60 / every + 1
    print(result.line())
    print(
        f"  instance-side GETs: /metrics {len(metrics)} in {result.elapsed:.1f} s = "
        f"{per_minute:.2f}/min (allowed <= 60 / {every:g} + 1 = {allowed:.2f}); "
        f"ratio {per_minute / allowed:.2f}; other instance requests {len(other)}"
    )
    return per_minute <= allowed and result.errors == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--looks", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=15.0, help="VAST_METRICS_EVERY_S")
    args = parser.parse_args(argv)
    passed = [look_durations(args.looks), instance_gets(args.seconds, args.every)]
    return 0 if all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
