"""No client can starve the server: the gateway's activity posts stay fast under a hostile load.

The production server (gunicorn with the repo's config) against the simulator, on loopback:
100 idle half-open connections, 50 clients posting wrong keys to /signin from their own
addresses, and 20 power-ons waiting for health while the start is queued, all at once. Over
300 posts, /infra/vast/activity keeps p99 under 100 ms and /healthz answers every probe; then
the GPU is freed and every waiting power-on ends healthy. bench/starvation.py prints the same
figures. With gunicorn's former gthread worker (1 x 8 threads) it failed: 6 posts in 60 s, all
timed out (10 s each), and no /healthz probe answered.
"""

from __future__ import annotations

import pytest

from support.liveserver import PanelProcess, instant_simulator, simulator_env
from support.starvation import TARGET_P99_S, run_starvation

pytestmark = pytest.mark.e2e

SIM_KEY = "sim-starve-key-0123456789abcdef"
CONTROL_KEY = "starve-control-key-fedcba987654"
INSTANCE_ID = 5151
HALF_OPEN, GUESSERS, POWER_ONS, POSTS = 100, 50, 20, 300


def test_activity_stays_fast_while_hostile_clients_hold_connections(tmp_path):
    with instant_simulator(SIM_KEY, INSTANCE_ID) as sim:
        env = simulator_env(sim, tmp_path / "panel.db", CONTROL_KEY, VAST_WAIT_TIMEOUT_S="180")
        server = PanelProcess(env, log_path=tmp_path / "server.log")
        try:
            report = run_starvation(
                server,
                sim,
                half_open=HALF_OPEN,
                guessers=GUESSERS,
                power_ons=POWER_ONS,
                posts=POSTS,
            )
            print("\n".join(report.lines()))
            status = server.api("GET", "/status", timeout=10).json()["status"]
        finally:
            server.stop()
        log = server.log()

    figures = "\n".join(report.lines())
    # The hostile load was really there while the gateway posted.
    assert report.half_open_fewest >= HALF_OPEN * 0.9, figures
    assert report.power_ons_waiting == POWER_ONS, figures
    assert sum(report.sign_in_answers.values()) >= GUESSERS, figures
    # The gateway was never held up.
    assert not report.activity_errors, figures
    assert len(report.activity_s) == POSTS, figures
    assert report.activity_ms(99) < TARGET_P99_S * 1000, figures
    assert report.healthz_s and not report.healthz_errors, figures
    # Wrong keys are answered at once, then locked out (never a 5xx, never a timeout).
    assert set(report.sign_in_answers) <= {"401", "429"}, figures
    assert report.sign_in_answers["429"] > 0, figures
    # Freed, every waiting power-on ended healthy, with one start sent for all of them.
    assert report.power_on_answers == ["200 Instance running and healthy"] * POWER_ONS, figures
    assert status == "running"
    assert len([r for r in sim.requests(method="PUT")]) == 1
    assert log.count("event=auth_lockout") == GUESSERS, log[-3000:]
    assert "guess-" not in log  # no key in the log
