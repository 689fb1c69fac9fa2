"""The watchdog's look, as a plain function with a movable clock: no scheduler, no sleeping."""

from __future__ import annotations

import os
import socket

import pytest
import responses

from conftest import INSTANCE_URL, base_config, config_from, finished_pid, load_fixture
from support import store
from vastpanel import create_app
from vastpanel.domain.power import HEALTH_WAIT_LEASE
from vastpanel.storage.leases import holder_is_dead
from vastpanel.watchdog.looks import LEASE, watchdog_for

IDLE_S = 30 * 60  # VAST_AUTO_SHUTDOWN_MINUTES' default
TTL_S = 5.0  # VAST_STATUS_TTL_S' default: how long one vast.ai answer is reused


@pytest.fixture
def watchdog(panel):
    return watchdog_for(panel)


def events(panel) -> list[str]:
    """Return the audit events, oldest first."""
    return [e.event for e in reversed(panel.audit.entries(1000))]


def entry(panel, event: str) -> store.AuditEntry:
    """Return the one audit entry with this event name."""
    found = [e for e in panel.audit.entries(1000) if e.event == event]
    assert len(found) == 1, events(panel)
    return found[0]


def start_running(vast, clock, watchdog) -> float:
    """Make the instance run, let the watchdog first see it, and return when it did."""
    vast.set_running()
    look = watchdog.look()
    assert look.leader and look.stopped is None
    return look.at


def test_idle_instance_is_stopped_when_the_idle_time_is_reached(panel, vast, clock, watchdog):
    seen = start_running(vast, clock, watchdog)
    session = store.current_session(panel.store.db)
    assert session.started_at == seen
    assert watchdog.look().next_deadline == seen + IDLE_S

    clock.advance(IDLE_S - 1)
    assert watchdog.look().stopped is None
    assert vast.puts == []

    clock.advance(1)
    look = watchdog.look()
    assert vast.puts == ["stopped"]
    assert look.stopped.session_minutes == pytest.approx(30)
    assert look.next_deadline is None
    assert store.current_session(panel.store.db) is None
    shutdown = entry(panel, "auto_shutdown")
    assert shutdown.actor == "system"
    assert shutdown.meta["inactive_minutes"] == pytest.approx(30)
    complete = entry(panel, "auto_shutdown_complete")
    assert complete.actor == "system"
    assert complete.meta["session_minutes"] == pytest.approx(30)
    assert complete.meta["session_cost_usd"] == pytest.approx(0.5 * 0.45)
    assert events(panel) == [
        "session_opened",
        "idle_warning",  # the look a second before the deadline is within VAST_WARN_MINUTES
        "auto_shutdown",
        "auto_shutdown_complete",
    ]

    clock.advance(3600)
    watchdog.look()
    assert vast.puts == ["stopped"]  # nothing more to stop


def test_activity_keeps_the_instance_running_and_moves_the_deadline(panel, vast, clock, watchdog):
    start_running(vast, clock, watchdog)
    clock.advance(20 * 60)
    activity = panel.idle.record_activity()
    clock.advance(20 * 60)  # 40 min since first seen, 20 since the last activity
    look = watchdog.look()
    assert look.stopped is None and vast.puts == []
    assert look.next_deadline == activity + IDLE_S

    clock.advance(10 * 60)
    look = watchdog.look()
    assert vast.puts == ["stopped"]
    assert entry(panel, "auto_shutdown").meta["inactive_minutes"] == pytest.approx(30)
    assert look.stopped.session_minutes == pytest.approx(50)


def test_instance_started_outside_counts_idle_from_when_first_seen(panel, vast, clock, watchdog):
    panel.idle.record_activity()  # an old activity must not make the new session due at once
    watchdog.look()
    assert store.current_session(panel.store.db) is None

    clock.advance(3 * 3600)
    vast.set_running()  # started in vast.ai's console
    seen = watchdog.look().at
    session = store.current_session(panel.store.db)
    assert session.started_at == seen
    assert entry(panel, "session_opened").meta["seen_status"] == "running"
    assert vast.puts == []

    clock.advance(IDLE_S - 1)
    watchdog.look()
    assert vast.puts == []
    clock.advance(1)
    watchdog.look()
    assert vast.puts == ["stopped"]


def test_instance_stopped_outside_closes_its_session_when_seen_stopped(
    panel, vast, clock, watchdog
):
    start_running(vast, clock, watchdog)
    clock.advance(10 * 60)
    vast.set_stopped()  # stopped in vast.ai's console
    clock.advance(TTL_S)
    seen = watchdog.look().at
    assert store.current_session(panel.store.db) is None
    (session,) = store.list_sessions(panel.store.db, 0)
    assert session.ended_at == seen
    closed = entry(panel, "session_closed")
    assert closed.meta["session_minutes"] == pytest.approx(10 + TTL_S / 60)
    assert vast.puts == []  # nothing was sent


@pytest.mark.parametrize("down", ["exited", "unknown"])
def test_a_down_instance_is_stopped_by_the_idle_rule_from_when_it_was_first_seen_down(
    panel, vast, clock, watchdog, down
):
    vast.set_running()
    vast.set(actual_status=down, status_msg="container exited (code 137)")
    seen = watchdog.look().at
    assert store.current_session(panel.store.db) is None  # no GPU time is billed while down
    noted = entry(panel, "instance_down")
    assert noted.meta["seen_status"] == down and "137" in noted.meta["status_msg"]
    assert watchdog.look().next_deadline == seen + IDLE_S

    clock.advance(IDLE_S - 1)
    watchdog.look()
    assert vast.puts == []
    clock.advance(1)
    look = watchdog.look()
    assert vast.puts == ["stopped"]
    assert look.stopped.session_minutes == 0  # nothing billed to count
    assert "auto_shutdown_complete" in events(panel)
    assert look.next_deadline is None


def test_time_down_is_not_counted_as_gpu_time(panel, vast, clock, watchdog):
    start_running(vast, clock, watchdog)
    clock.advance(10 * 60)
    vast.set(actual_status="exited", status_msg="container exited (code 137)")
    watchdog.look()
    (session,) = store.list_sessions(panel.store.db, 0)
    assert session.seconds(clock.now()) == pytest.approx(10 * 60)  # closed when seen exited
    closed = entry(panel, "session_closed")
    assert closed.meta["seen_status"] == "exited"
    clock.advance(20 * 60 - 1)
    watchdog.look()
    assert store.cost_totals(panel.store.db, clock.now()).runtime_seconds == pytest.approx(600)


def test_offline_is_shown_and_audited_but_not_stopped(panel, vast, clock, watchdog):
    vast.set_running()
    vast.set(actual_status="offline", status_msg=None)
    watchdog.look()
    assert store.current_session(panel.store.db) is None
    assert entry(panel, "instance_down").meta["idle_stop"] is False
    clock.advance(IDLE_S + 60)
    watchdog.look()
    assert vast.puts == []  # a disconnected host cannot take a stop; nothing is billed


@pytest.mark.parametrize("status", ["rebooting", "restarting"])
def test_a_rebooting_instance_is_starting_not_idle(panel, vast, clock, watchdog, status):
    start_running(vast, clock, watchdog)
    vast.set(actual_status=status)
    clock.advance(IDLE_S + 60)
    watchdog.look()
    assert vast.puts == []
    assert panel.power.power_on("api", wait_for_health=False).message.startswith(
        "A start is already"
    )
    assert vast.puts == []


def test_failed_stop_is_audited_and_retried_at_the_next_look(panel, vast, clock, watchdog):
    start_running(vast, clock, watchdog)
    clock.advance(IDLE_S)
    vast.put_answer = (400, load_fixture("missing_billing.json"))
    look = watchdog.look()  # does not raise
    assert "missing_billing" in look.error
    failed = entry(panel, "auto_shutdown_failed")
    assert failed.actor == "system" and "missing_billing" in failed.meta["error"]
    assert store.current_session(panel.store.db) is not None
    # The deadline has passed: no deadline look, only the next interval look retries.
    assert look.next_deadline <= clock.now()

    vast.put_answer = None
    clock.advance(60)
    look = watchdog.look()
    assert look.stopped is not None and look.error is None
    assert vast.puts == ["stopped", "stopped"]
    assert store.current_session(panel.store.db) is None
    assert events(panel)[-2:] == ["auto_shutdown", "auto_shutdown_complete"]


def test_stop_is_not_blocked_by_vast_ais_get_rate_limit(panel, vast, clock, watchdog):
    # vast.ai refuses a GET within about 2 s of the previous one, often without Retry-After.
    last_get: list[float] = []

    def rate_limited_get(request):
        if last_get and clock.now() - last_get[-1] < 2.0:
            return 429, {}, '{"detail": "API requests too frequent endpoint threshold=2.0"}'
        last_get.append(clock.now())
        return vast._get(request)

    vast.mock.replace(
        responses.CallbackResponse(responses.GET, INSTANCE_URL, callback=rate_limited_get)
    )
    start_running(vast, clock, watchdog)
    clock.advance(IDLE_S)  # the shared answer is stale: this look must read vast.ai
    look = watchdog.look()
    assert look.error is None
    assert vast.puts == ["stopped"]
    assert "auto_shutdown_failed" not in events(panel)


def test_restart_keeps_the_idle_timer_and_acts_on_a_passed_deadline(
    tmp_path, panel, vast, clock, watchdog
):
    start_running(vast, clock, watchdog)
    clock.advance(5 * 60)
    activity = panel.idle.record_activity()
    panel.store.close()  # the process dies here: no lease given back, nothing else written

    clock.advance(40 * 60)  # down for 40 minutes; the deadline passed 15 minutes ago
    restarted = create_app(config_from(base_config(tmp_path)), clock=clock)
    try:
        look = watchdog_for(restarted.extensions["vastpanel"]).look()
        assert look.leader
        assert vast.puts == ["stopped"]
        inactive = entry(panel, "auto_shutdown").meta["inactive_minutes"]
        assert inactive == pytest.approx((clock.now() - activity) / 60) == pytest.approx(40)
    finally:
        restarted.extensions["vastpanel"].store.close()


def test_queued_start_is_not_stopped_until_it_runs(panel, vast, clock, watchdog):
    vast.put_answer = (200, load_fixture("start_resources_unavailable.json"))
    result = panel.power.power_on("api", wait_for_health=False)
    assert result.state.status == "scheduling"
    vast.put_answer = None
    vast.set(intended_status="running")  # vast.ai keeps the start queued

    for _ in range(3):
        clock.advance(IDLE_S)
        watchdog.look()
        assert panel.instance.state().status == "scheduling"
    assert "stopped" not in vast.puts
    assert store.current_session(panel.store.db) is None

    vast.set_running()  # the GPU came free
    clock.advance(TTL_S)
    seen = watchdog.look().at
    assert store.current_session(panel.store.db).started_at == seen
    clock.advance(IDLE_S)
    watchdog.look()
    assert vast.puts == ["running", "stopped"]


def test_loading_instance_is_not_stopped_until_it_runs(panel, vast, clock, watchdog):
    vast.set(actual_status="loading", intended_status="running")
    for _ in range(3):
        clock.advance(IDLE_S)
        watchdog.look()
    assert vast.puts == []

    vast.set_running()
    clock.advance(TTL_S)
    watchdog.look()
    clock.advance(IDLE_S)
    watchdog.look()
    assert vast.puts == ["stopped"]


def look_past_the_deadline_during_a_health_wait(panel, vast, clock, watchdog, holder: str):
    """Run the instance, let it idle past its deadline while `holder` waits for health; look."""
    start_running(vast, clock, watchdog)
    clock.advance(IDLE_S + 60)
    store.acquire_lease(panel.store.db, HEALTH_WAIT_LEASE + holder, holder, clock.now(), 660)
    watchdog.look()


def test_running_instance_is_not_stopped_while_a_power_on_waits_for_health(
    panel, vast, clock, watchdog
):
    # A power-on in another live process (this test's parent) waits for health.
    alive = f"{socket.gethostname()}:{os.getppid()}:a1b2c3d4"
    look_past_the_deadline_during_a_health_wait(panel, vast, clock, watchdog, alive)
    assert vast.puts == []

    clock.advance(660)  # the wait ended (its owner did not even release it)
    watchdog.look()
    assert vast.puts == ["stopped"]


def test_a_health_wait_of_a_killed_process_does_not_protect_an_idle_instance(
    panel, vast, clock, watchdog
):
    dead = f"{socket.gethostname()}:{finished_pid()}:a1b2c3d4"
    look_past_the_deadline_during_a_health_wait(panel, vast, clock, watchdog, dead)
    assert vast.puts == ["stopped"]


def test_auto_shutdown_off_stops_nothing_but_keeps_sessions(tmp_path, vast, clock):
    app = create_app(config_from(base_config(tmp_path, VAST_AUTO_SHUTDOWN="false")), clock=clock)
    panel = app.extensions["vastpanel"]
    watchdog = watchdog_for(panel)
    try:
        vast.set_running()
        seen = watchdog.look().at
        assert store.current_session(panel.store.db).started_at == seen
        clock.advance(5 * 3600)
        look = watchdog.look()
        assert look.next_deadline is None and vast.puts == []

        vast.set_stopped()
        clock.advance(TTL_S)
        watchdog.look()
        (session,) = store.list_sessions(panel.store.db, 0)
        assert session.ended_at == clock.now()
        assert vast.puts == []
    finally:
        panel.store.close()


# --- one watchdog acts per deployment ------------------------------------------------------


def test_only_the_lease_holder_acts_and_another_takes_over_when_it_stops(
    tmp_path, panel, vast, clock, watchdog
):
    other_app = create_app(config_from(base_config(tmp_path)), clock=clock)
    other = watchdog_for(other_app.extensions["vastpanel"])
    try:
        start_running(vast, clock, watchdog)
        assert watchdog.is_leader
        gets = vast.gets
        clock.advance(TTL_S)
        assert not other.look().leader
        assert not other.is_leader
        assert vast.gets == gets  # a follower does not even read vast.ai

        for _ in range(3):  # the leader renews on each look; the follower never gets in
            clock.advance(watchdog.interval_s)
            assert watchdog.look().leader
            assert not other.look().leader

        clock.advance(watchdog.lease_ttl_s)  # the leader stopped looking (hung, or gone)
        assert not watchdog.is_leader
        clock.advance(IDLE_S)
        look = other.look()
        assert look.leader and look.stopped is not None
        assert vast.puts == ["stopped"]
        assert not watchdog.look().leader
    finally:
        other_app.extensions["vastpanel"].store.close()


def test_lease_of_a_killed_process_is_taken_over_at_once(panel, vast, clock, watchdog):
    host = socket.gethostname()
    dead = f"{host}:{finished_pid()}:a1b2c3d4"
    store.acquire_lease(panel.store.db, LEASE, dead, clock.now(), 3600)
    vast.set_running()
    assert watchdog.look().leader
    assert store.read_lease(panel.store.db, LEASE).holder == panel.leases.holder


@pytest.mark.parametrize(
    ("holder", "dead"),
    [
        (f"{socket.gethostname()}:{os.getppid()}:a1b2c3d4", False),  # alive on this host
        (f"elsewhere.example:{2**22 + 1}:a1b2c3d4", False),  # another host: cannot tell
        (f"{socket.gethostname()}:{os.getpid()}:a1b2c3d4", True),  # our pid, reused
        ("not a holder", False),
    ],
    # Ids without the pids, so parallel test workers (pytest-xdist) collect the same tests.
    ids=["alive-here", "another-host", "our-pid-reused", "not-a-holder"],
)
def test_holder_is_dead(holder, dead):
    assert holder_is_dead(holder) is dead


def test_live_lease_holder_is_not_taken_over(panel, vast, clock, watchdog):
    alive = f"{socket.gethostname()}:{os.getppid()}:a1b2c3d4"
    store.acquire_lease(panel.store.db, LEASE, alive, clock.now(), watchdog.lease_ttl_s)
    vast.set_running()
    clock.advance(watchdog.lease_ttl_s - 1)
    assert not watchdog.look().leader
    assert vast.gets == 0 and vast.puts == []
    clock.advance(1)  # it did not renew in time
    assert watchdog.look().leader
