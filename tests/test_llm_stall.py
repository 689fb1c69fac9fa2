"""A stall is not work: vLLM's busy gauges with no counter moving count as stuck, not as use.

vLLM leaves num_requests_running/_waiting above 0 when every request in flight is aborted
(vllm-project/vllm#22545, #29928). The panel applies the agent's rule
(deploy/instance/vastpanel_agent.py): busy gauges with none of the counters moving for
VAST_LLM_STALL_MINUTES are stuck, and the LLM is idle from the last time a counter moved.
"""

from __future__ import annotations

import re

import pytest

from conftest import base_config, config_from, load_fixture
from support import store
from support.page import HTMX, signed_in_client
from vastpanel import create_app
from vastpanel.config import Config, ConfigError
from vastpanel.domain.llm_load import Verdict, VllmSample, follow_progress
from vastpanel.watchdog.looks import watchdog_for

V1_BUSY = load_fixture("vllm_v1_busy.prom")  # 3 running, 1 waiting
GENERATION = 19987  # the fixture's vllm:generation_tokens_total
STALL_S = 10 * 60  # VAST_LLM_STALL_MINUTES' default
IDLE_S = 30 * 60
EVERY_S = 15.0


def busy(generated: int = GENERATION, running: int = 3, waiting: int = 1) -> str:
    """vLLM's text with its gauges and its generation counter set."""
    text = V1_BUSY.replace(f"}} {GENERATION}.0", f"}} {generated}.0")
    for name, value in (("running", running), ("waiting", waiting)):
        text = re.sub(
            rf"^(vllm:num_requests_{name}{{[^}}]*}}) .*$", rf"\1 {value}.0", text, flags=re.M
        )
    return text


def events(panel, name: str) -> list:
    return [e for e in reversed(panel.audit.entries(1000)) if e.event == name]


@pytest.fixture
def watchdog(panel):
    return watchdog_for(panel)


def status(client) -> dict:
    answer = client.get("/infra/vast/status")
    assert answer.status_code == 200
    return answer.json


# --- the rule, a plain function -------------------------------------------------------------


def reading(progress_at, active_at, stalled_since=None):
    return store.LlmReading(
        read_at=0.0,
        session_id=1,
        error=None,
        running=1.0,
        waiting=0.0,
        counters={},
        active_at=active_at,
        progress_at=progress_at,
        stalled_since=stalled_since,
    )


@pytest.mark.parametrize(
    ("previous", "gauges", "moved", "now", "expected"),
    [
        # The first read is progress: the gauges are believed.
        (None, 1, False, 100.0, (100.0, 100.0, None)),
        # Busy, no counter moved, shorter than the stall time: still believed.
        (reading(100.0, 500.0), 1, False, 100.0 + STALL_S - 1, (99.0 + STALL_S, 100.0, None)),
        # Busy, nothing moved for the stall time: stuck, idle since the last progress.
        (reading(100.0, 500.0), 1, False, 100.0 + STALL_S, (100.0, 100.0, 100.0 + STALL_S)),
        # A declared stall keeps the moment it was declared.
        (reading(100.0, 100.0, 800.0), 1, False, 2000.0, (100.0, 100.0, 800.0)),
        # A counter moved: progress and work, the stall is over.
        (reading(100.0, 100.0, 800.0), 1, True, 2000.0, (2000.0, 2000.0, None)),
        # The gauges fell to 0: no stall, and no new activity either.
        (reading(100.0, 100.0, 800.0), 0, False, 2000.0, (100.0, 100.0, None)),
    ],
)
def test_the_stall_rule(previous, gauges, moved, now, expected):
    sample = VllmSample(gauges, 0, {})
    verdict = Verdict(active=bool(gauges) or moved, restarted=False, moved=moved)
    progress = follow_progress(previous, sample, verdict, now, STALL_S)
    assert (progress.active_at, progress.progress_at, progress.stalled_since) == expected


def test_a_stall_time_of_0_always_believes_the_gauges():
    progress = follow_progress(
        reading(100.0, 500.0), VllmSample(1, 0, {}), Verdict(True, False), 10**6, 0.0
    )
    assert progress.stalled_since is None and progress.active_at == 10**6


def test_the_stall_setting_defaults_to_10_minutes_takes_decimals_and_0_for_off():
    assert Config.from_env({}).llm_stall_minutes == 10.0
    assert Config.from_env({"VAST_LLM_STALL_MINUTES": "0.5"}).llm_stall_minutes == 0.5
    assert Config.from_env({"VAST_LLM_STALL_MINUTES": "0"}).llm_stall_minutes == 0.0
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(ConfigError, match="VAST_LLM_STALL_MINUTES"):
            Config.from_env({"VAST_LLM_STALL_MINUTES": bad})


# --- the panel, vast.ai and the instance faked -----------------------------------------------


def test_a_generation_with_tokens_flowing_is_never_a_stall(panel, vast, clock, watchdog):
    vast.set_running()
    watchdog.look()
    generated = GENERATION
    for _ in range(int(2 * IDLE_S / 60)):  # an hour of one long answer, a read a minute
        generated += 40
        vast.metrics = (200, busy(generated, running=1, waiting=0))
        clock.advance(60)
        look = watchdog.look()
        assert look.stopped is None
    assert vast.puts == [] and events(panel, "llm_stalled") == []
    assert panel.status.report().llm_stalled is False


def test_busy_gauges_with_no_progress_are_stuck_and_the_stop_counts_from_the_last_move(
    client, panel, vast, clock, watchdog
):
    vast.set_running()
    vast.metrics = (200, busy(GENERATION))
    watchdog.look()
    clock.advance(60)
    vast.metrics = (200, busy(GENERATION + 50))  # the last counter move: then an abort
    look = watchdog.look()
    moved_at = clock.now()
    # The watchdog looks again when the gauges would count as stuck.
    assert look.next_deadline == moved_at + STALL_S
    clock.advance(STALL_S - 1)
    watchdog.look()
    assert status(client)["llm_stalled"] is False and events(panel, "llm_stalled") == []
    clock.advance(1)
    look = watchdog.look()
    assert look.stopped is None  # idle 10 of 30 minutes so far
    body = status(client)
    assert body["llm_stalled"] is True
    assert (body["llm_requests_running"], body["llm_requests_waiting"]) == (3, 1)
    assert body["auto_shutdown_in_minutes"] == pytest.approx((IDLE_S - STALL_S) / 60)
    assert body["last_activity_source"] == "llm"
    (stalled,) = events(panel, "llm_stalled")
    assert stalled.meta["running"] == 3 and stalled.meta["waiting"] == 1
    assert stalled.meta["no_progress_minutes"] == pytest.approx(STALL_S / 60)
    assert stalled.meta["stall_minutes"] == 10
    assert look.next_deadline == moved_at + IDLE_S

    for _ in range(3):  # later reads of the same stall audit nothing more
        clock.advance(EVERY_S)
        watchdog.look()
    assert len(events(panel, "llm_stalled")) == 1 and vast.puts == []
    clock.advance(moved_at + IDLE_S - clock.now())
    watchdog.look()
    assert vast.puts == ["stopped"]
    (shutdown,) = events(panel, "auto_shutdown")
    assert shutdown.meta["llm_stalled"] is True and shutdown.meta["last_signal"] == "llm"
    assert shutdown.meta["inactive_minutes"] == pytest.approx(IDLE_S / 60)


def test_a_stall_longer_than_the_idle_time_stops_when_it_is_declared(tmp_path, clock, vast):
    app = create_app(
        config_from(base_config(tmp_path, VAST_AUTO_SHUTDOWN_MINUTES="5")), clock=clock
    )
    panel = app.extensions["vastpanel"]
    watchdog = watchdog_for(panel)
    vast.set_running()
    vast.metrics = (200, busy())
    watchdog.look()
    moved_at = clock.now()
    clock.advance(STALL_S - 0.5)
    assert watchdog.look().stopped is None  # believed until the stall time is up
    clock.advance(0.5)
    assert watchdog.look().stopped is not None and vast.puts == ["stopped"]
    assert clock.now() == moved_at + max(STALL_S, 5 * 60)
    panel.store.close()


def test_a_counter_moving_clears_the_stall_once(client, panel, vast, clock, watchdog):
    vast.set_running()
    vast.metrics = (200, busy(running=1, waiting=0))
    watchdog.look()
    clock.advance(STALL_S)
    watchdog.look()
    assert status(client)["llm_stalled"] is True
    clock.advance(EVERY_S)
    vast.metrics = (200, busy(GENERATION + 1, running=1, waiting=0))  # a new request's token
    watchdog.look()
    body = status(client)
    assert body["llm_stalled"] is False and body["auto_shutdown_in_minutes"] == IDLE_S / 60
    (cleared,) = events(panel, "llm_stall_cleared")
    assert cleared.meta["reason"] == "a counter moved"
    assert cleared.meta["stalled_minutes"] == pytest.approx(EVERY_S / 60)
    # A second stall is audited again; the gauges falling to 0 clears it too.
    clock.advance(STALL_S)
    watchdog.look()
    vast.metrics = (200, busy(GENERATION + 1, running=0, waiting=0))
    clock.advance(EVERY_S)
    watchdog.look()
    assert len(events(panel, "llm_stalled")) == 2
    assert events(panel, "llm_stall_cleared")[-1].meta["reason"] == "the gauges fell to 0"


def test_the_page_says_the_gauge_is_probably_stuck(app, vast, clock):
    admin = signed_in_client(app)
    vast.set_running()
    vast.metrics = (200, busy(running=1, waiting=0))
    admin.get("/partials/status", headers=HTMX)
    clock.advance(12 * 60)
    html = admin.get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert 'data-llm-metrics="stalled"' in html
    assert (
        "1 request reported running, no progress for 12 min: vLLM&#39;s gauge is probably stuck"
        in html
    )
    assert "paused" not in html and "LLM busy now" not in html


def test_without_vllm_metrics_the_page_and_status_say_no_metrics_not_idle(client, app, vast):
    vast.set_running()
    # vLLM started with --disable-log-stats still serves /metrics, without a vllm: metric.
    vast.metrics = (200, "# TYPE process_open_fds gauge\nprocess_open_fds 12.0\n")
    body = status(client)
    assert body["llm_metrics"] == "no_metrics" and body["llm_stalled"] is False
    assert body["llm_requests_running"] is None
    html = signed_in_client(app).get("/partials/status", headers=HTMX).get_data(as_text=True)
    assert 'data-llm-metrics="no_metrics"' in html and "no metrics" in html
    assert "--disable-log-stats" in html and ">idle<" not in html


def test_a_reading_stored_before_the_stall_rule_starts_its_progress_at_the_next_read(
    panel, vast, clock, watchdog
):
    vast.set_running()
    vast.metrics = (200, busy())
    watchdog.look()
    old = store.read_llm_reading(panel.store.db)
    with panel.store.db.atomic():
        panel.store.db.execute("UPDATE llm_metrics SET progress_at = NULL")
    clock.advance(STALL_S + EVERY_S)
    watchdog.look()
    now = store.read_llm_reading(panel.store.db)
    assert now.progress_at == clock.now() and not now.stalled and now.session_id == old.session_id
