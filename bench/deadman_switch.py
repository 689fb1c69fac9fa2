"""The dead-man switch: what a heartbeat adds to a watchdog look, and how late the agent stops.

Everything real on loopback: the simulator runs the agent file (deploy/instance/) while its
instance runs, with the instance's own key; the instance's port 8001 leads to the real nginx
with the shipped config (listen port, upstreams and key directory rewritten), over TLS with the
certificate install.sh made; the panel pins the fingerprint install.sh printed.

1. Heartbeat cost. The real Watchdog.look() in this process, --looks times with
   VAST_AGENT_SECRET unset, then set (each look then signs and sends a heartbeat through nginx
   to the agent and stores its answer). Target: p95 of the extra time under 50 ms.
2. Stop lateness. The production server (gunicorn, watchdog every 0.5 s) keeps the instance
   alive; it is killed with kill -9; the agent (grace --grace-s, idle as long, checking every
   --check-s) stops the instance. Lateness = the stop's arrival at the simulator minus the
   moment it fell due (the last heartbeat the agent accepted, from its state file, plus the
   grace). --cycles times, the instance started again between them (a new boot).
   Target: every stop within one check interval + 1 s of falling due, one PUT each, with the
   instance's key.

    python3 bench/deadman_switch.py [--looks 200] [--cycles 3] [--grace-s 3] [--check-s 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from _support import CONTROL_KEY, INSTANCE_ID, SIM_KEY, percentile

from support import wait_for
from support.instance_nginx import (
    NGINX_CONF,
    installed_tls,
    nginx_bin,
    render_for_loopback,
    running_nginx,
)
from support.liveserver import PanelProcess, free_port, running_simulator, simulator_env
from vastpanel import Config, create_app
from vastpanel.simulator import AgentSettings, Simulator
from vastpanel.watchdog.looks import watchdog_for

SECRET = "bench-agent-secret-0123456789abcdef"
LLM_KEY = "bench-vllm-key-0123456789abcdef"
TARGET_HEARTBEAT_P95_MS = 50.0


def pinned(fingerprint: str) -> dict[str, str]:
    """The panel's settings for an instance that serves TLS with this certificate."""
    return {"VAST_INSTANCE_PLAIN_HTTP": "", "VAST_INSTANCE_TLS_FINGERPRINT": fingerprint}


def time_looks(sim: Simulator, pin: str, db_path: Path, looks: int, secret: str) -> list[float]:
    """Run looks on a fresh database; return their durations in seconds."""
    config = simulator_env(
        sim,
        db_path,
        CONTROL_KEY,
        **pinned(pin),
        VAST_STATUS_TTL_S="0",
        VAST_AUTO_SHUTDOWN_MINUTES="600",
        VAST_IDLE_SOURCES="gateway",
        VAST_AGENT_SECRET=secret,
    )
    app = create_app(replace(Config.from_env(config), testing=True))  # as in tests: no watchdog
    panel = app.extensions["vastpanel"]
    watchdog = watchdog_for(panel)
    watchdog.look()  # opens the session
    durations = []
    for _ in range(looks):
        started = time.perf_counter()
        watchdog.look()
        durations.append(time.perf_counter() - started)
    if secret:
        report = panel.status.report().agent
        assert report.status == "ok", report
    panel.store.close()
    return durations


def stop_cycles(sim: Simulator, pin: str, folder: Path, cycles: int, grace_s: float) -> list[float]:
    """Kill the panel with the instance running; return each stop's lateness in seconds."""
    env = simulator_env(
        sim,
        folder / "panel.db",
        CONTROL_KEY,
        **pinned(pin),
        VAST_AGENT_SECRET=SECRET,
        VAST_WATCHDOG_INTERVAL_S="0.5",
        VAST_STATUS_TTL_S="0.5",
        VAST_AUTO_SHUTDOWN_MINUTES="600",
        VAST_IDLE_SOURCES="gateway",
    )
    state_path = sim.agent.state_path
    lateness = []
    for cycle in range(cycles):
        before = len(sim.requests("PUT"))
        panel = PanelProcess(env, log_path=folder / "panel.log")
        try:
            sim.external("start")
            answered = wait_for(lambda p=panel: p.api("GET", "/status").json()["agent"] == "ok", 20)
            assert answered, f"cycle {cycle}: the agent never answered"
            time.sleep(grace_s)  # alive past the grace time: no stop while the panel runs
            assert len(sim.requests("PUT")) == before, "the agent stopped a watched instance"
        finally:
            panel.kill()
        assert wait_for(lambda n=before: len(sim.requests("PUT")) > n, grace_s * 2 + 20)
        time.sleep(0.5)
        puts = sim.requests("PUT")[before:]
        assert len(puts) == 1 and puts[0]["auth"] == "instance", puts
        last_heartbeat = json.loads(state_path.read_text())["last_heartbeat"]
        lateness.append(puts[0]["time"] - (last_heartbeat + grace_s))
        wait_for(lambda: sim.agent.process is None, 10)
    return lateness


@contextlib.contextmanager
def instance(folder: Path, grace_s: float, check_s: float) -> Iterator[tuple[Simulator, str]]:
    """The simulator running the agent, behind the real nginx on its port 8001 (TLS), and the
    fingerprint of nginx's certificate."""
    folder.mkdir()
    nginx_port = free_port()
    agent = AgentSettings(
        secret=SECRET,
        state_dir=folder / "agent",
        grace_minutes=grace_s / 60,
        idle_minutes=grace_s / 60,
        check_seconds=check_s,
        log_path=folder / "agent.log",
    )
    with running_simulator(SIM_KEY, INSTANCE_ID, host_ports={8001: nginx_port}, agent=agent) as sim:
        keys, fingerprint = installed_tls(folder, f"VLLM_API_KEY={LLM_KEY}\n")
        text = NGINX_CONF.read_text(encoding="utf-8")
        conf = render_for_loopback(text, nginx_port, sim.llm_port, keys, sim.agent.port)
        with running_nginx(nginx_bin(), conf, folder, nginx_port):
            yield sim, fingerprint


def main(argv: list[str] | None = None) -> int:
    """Run both parts; exit 0 when both targets are met."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--looks", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--grace-s", type=float, default=3.0)
    parser.add_argument("--check-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vastpanel-bench-") as tmp:
        folder = Path(tmp)
        with instance(folder / "looks", 3600.0, 30.0) as (sim, pin):  # an agent that never acts
            assert wait_for(lambda: sim.agent.process is not None, 10)
            time.sleep(0.5)  # the agent's interpreter starts
            without = time_looks(sim, pin, folder / "looks-off.db", args.looks, "")
            with_hb = time_looks(sim, pin, folder / "looks-on.db", args.looks, SECRET)
        with instance(folder / "stops", args.grace_s, args.check_s) as (sim, pin):
            sim.external("stop")
            lateness = stop_cycles(sim, pin, folder, args.cycles, args.grace_s)

    p50_off, p95_off = percentile(without, 50) * 1000, percentile(without, 95) * 1000
    p50_on, p95_on = percentile(with_hb, 50) * 1000, percentile(with_hb, 95) * 1000
    extra = p95_on - p95_off
    print(f"watchdog look, {args.looks} each: without heartbeat p50 {p50_off:.1f} ms p95 "
          f"{p95_off:.1f} ms; with heartbeat p50 {p50_on:.1f} ms p95 {p95_on:.1f} ms")  # fmt: skip
    print(f"heartbeat adds {extra:.1f} ms at p95 (target < {TARGET_HEARTBEAT_P95_MS:g} ms): "
          f"ratio {extra / TARGET_HEARTBEAT_P95_MS:.2f}")  # fmt: skip
    bound = args.check_s + 1.0
    worst = max(lateness)
    print(f"agent stop after kill -9, {args.cycles} cycles, grace {args.grace_s:g} s, check every "
          f"{args.check_s:g} s: lateness " + ", ".join(f"{x * 1000:.0f} ms" for x in lateness))  # fmt: skip
    print(f"worst lateness {worst * 1000:.0f} ms (target < {bound * 1000:.0f} ms): "
          f"ratio {worst / bound:.2f}; early stops: {sum(x < 0 for x in lateness)}")  # fmt: skip
    ok = extra < TARGET_HEARTBEAT_P95_MS and 0 <= min(lateness) and worst < bound
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
