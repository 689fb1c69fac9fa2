"""Schedules of warm hours in the domain: the start before each window (once, learned lead time,
failures told), the hold on the idle rule inside and after a window, caps, the stored schedule
and its cost. vast.ai is faked with `responses`; time is a FakeClock."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import responses

from conftest import INSTANCE_URL, base_config, config_from, load_fixture
from support import store, wait_for
from support.clock import FakeClock
from vastpanel import create_app
from vastpanel.domain.idle import PROXY_IN_FLIGHT_LEASE, scheduled_idle_deadline
from vastpanel.domain.notify import message_for
from vastpanel.domain.schedule import (
    DEFAULT_LEAD_S,
    LEAD_MARGIN_S,
    ScheduleHold,
    lead_time,
)
from vastpanel.domain.wake import IN_FLIGHT_LEASE
from vastpanel.errors import InvalidRequest
from vastpanel.watchdog.looks import EXTENSION, SCHEDULE_JOB, watchdog_for

OFFICE = "Mon-Fri 08:00-18:00"  # UTC unless said
IDLE_S = 30 * 60


def utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()


MONDAY_0730 = utc(2026, 3, 2, 7, 30)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(MONDAY_0730)


@pytest.fixture
def make_panel(tmp_path, clock, vast):
    """Build panels on one database (a second one is the same deployment restarted)."""
    apps = []

    def make(**env: str):
        config = config_from(base_config(tmp_path, **{"VAST_SCHEDULE": OFFICE, **env}))
        app = create_app(config, clock=clock)
        apps.append(app)
        return app.extensions["vastpanel"]

    yield make
    for app in apps:
        watchdog = app.extensions.get(EXTENSION)
        if watchdog is not None:
            watchdog.shutdown()
        app.extensions["vastpanel"].store.close()


def events(panel) -> list[tuple[str, str]]:
    """Return (event, actor) of every audit entry, oldest first."""
    return [(e.event, e.actor) for e in reversed(panel.audit.entries(1000))]


def entries(panel, name: str) -> list[store.AuditEntry]:
    return [e for e in panel.audit.entries(1000) if e.event == name]


def run_until(clock: FakeClock, when: float) -> None:
    clock.advance(when - clock.now())


# --- the pure rules -----------------------------------------------------------------------------


def test_the_lead_time_is_the_90th_percentile_plus_a_margin_after_five_starts():
    assert lead_time([]).seconds == lead_time([100.0] * 4).seconds
    assert lead_time([100.0] * 4).seconds == DEFAULT_LEAD_S == 15 * 60
    assert not lead_time([100.0] * 4).learned
    learned = lead_time([300.0, 100.0, 200.0, 400.0, 500.0])
    assert learned.learned and learned.p90_s == pytest.approx(460.0)  # between 400 and 500
    assert learned.seconds == pytest.approx(460.0 + LEAD_MARGIN_S)
    # One slow start among many moves it only so far.
    assert lead_time([200.0] * 19 + [3000.0]).p90_s == pytest.approx(200.0)


def test_a_window_suspends_the_idle_deadline_then_the_idle_time_counts_from_its_end():
    signals = {"auto_shutdown": True, "idle_minutes": 30, "held_since": 1000.0}
    open_until = ScheduleHold(50_000.0, True, None, False, "18:00")
    # Outside any window: as ever.
    assert scheduled_idle_deadline(None, **signals, last_activity=2000.0) == 2000.0 + IDLE_S
    # Inside: nothing before the close plus the idle time, however long ago the activity.
    assert scheduled_idle_deadline(open_until, **signals, last_activity=2000.0) == 50_000 + IDLE_S
    # Activity after the close still counts as ever.
    closed = ScheduleHold(50_000.0, False, None, False, "18:00")
    assert scheduled_idle_deadline(closed, **signals, last_activity=51_000.0) == 51_000 + IDLE_S
    # A hard end: at the close; a Keep running still holds past it.
    hard = ScheduleHold(50_000.0, False, None, True, "18:00")
    assert scheduled_idle_deadline(hard, **signals, last_activity=49_990.0) == 50_000.0
    kept = scheduled_idle_deadline(hard, **signals, last_activity=0.0, keepalive_until=60_000.0)
    assert kept == 60_000.0
    # VAST_SCHEDULE_IDLE_MINUTES applies inside the window.
    strict = ScheduleHold(50_000.0, True, 60.0, False, "18:00")
    assert scheduled_idle_deadline(strict, **signals, last_activity=2000.0) == 2000.0 + 3600
    late = scheduled_idle_deadline(strict, **signals, last_activity=49_000.0)
    assert late == 50_000 + IDLE_S  # its idle time would end after the close
    off = {**signals, "auto_shutdown": False}
    assert scheduled_idle_deadline(open_until, **off, last_activity=None) is None


def test_the_idle_rule_knows_the_proxys_in_flight_lease():
    assert PROXY_IN_FLIGHT_LEASE == IN_FLIGHT_LEASE


# --- the start before each window -----------------------------------------------------------


def test_the_start_goes_out_the_lead_time_before_the_window_and_is_followed_to_health(
    make_panel, vast, clock
):
    panel = make_panel()
    vast.boot_after = 120
    start = panel.scheduled_start
    assert start.next_start_at() == utc(2026, 3, 2, 7, 45)  # 15 minutes: no start timed yet
    clock.advance(10 * 60)
    assert start.start_if_due() is None and vast.puts == []
    run_until(clock, utc(2026, 3, 2, 7, 45))
    assert start.start_if_due() == "healthy"
    assert clock.now() < utc(2026, 3, 2, 8, 0)  # healthy before the window opens
    assert vast.puts == ["running"]
    seen = events(panel)
    assert seen.index(("schedule_start", "schedule")) < seen.index(
        ("power_on_requested", "schedule")
    )
    assert ("instance_healthy", "system") in seen
    (started,) = entries(panel, "schedule_start")
    assert started.meta["window_opens_at"] == "2026-03-02T08:00:00Z"
    assert started.meta["window_closes_at"] == "2026-03-02T18:00:00Z"
    assert started.meta["lead_minutes"] == 15
    (took,) = store.recent_start_seconds(panel.store.db, 20)
    assert 120 <= took <= 130
    # Once per window: the next start is tomorrow's.
    assert start.start_if_due() is None
    assert start.next_start_at() == utc(2026, 3, 3, 7, 45)
    run_until(clock, utc(2026, 3, 2, 17, 0))
    assert start.start_if_due() is None
    assert start.next_start_at() == utc(2026, 3, 3, 7, 45)
    assert vast.puts == ["running"]


def test_a_restart_before_or_during_the_window_resumes_it_without_a_second_start(
    make_panel, vast, clock
):
    first = make_panel(VAST_AUTO_SHUTDOWN_MINUTES="5")
    vast.boot_after = 60
    run_until(clock, utc(2026, 3, 2, 7, 45))
    assert first.scheduled_start.start_if_due() == "healthy"
    # The deployment restarts before the window opens; the instance is idle all along.
    restarted = make_panel(VAST_AUTO_SHUTDOWN_MINUTES="5")
    watchdog = watchdog_for(restarted)
    for minute in (7 * 60 + 55, 8 * 60 + 30, 12 * 60, 17 * 60 + 59):
        run_until(clock, utc(2026, 3, 2, 0, 0) + minute * 60)
        look = watchdog.look()
        assert look.stopped is None, minute
        assert look.next_scheduled_start in (None, utc(2026, 3, 3, 7, 45))
        assert restarted.scheduled_start.start_if_due() is None
    assert vast.puts == ["running"]
    report = restarted.status.report()
    assert report.scheduled_until == utc(2026, 3, 2, 18, 0)
    assert report.schedule_hold.closes_text == "18:00"
    # The window closes: the idle time counts from the close.
    run_until(clock, utc(2026, 3, 2, 18, 4))
    assert watchdog.look().stopped is None
    assert restarted.status.report().scheduled_until is None
    run_until(clock, utc(2026, 3, 2, 18, 5, 1))
    assert watchdog.look().stopped is not None
    assert vast.puts == ["running", "stopped"]
    assert entries(restarted, "auto_shutdown")[0].meta["inactive_minutes"] > 5


def test_the_watchdogs_look_says_when_the_next_start_falls_due(make_panel, clock):
    panel = make_panel()
    assert watchdog_for(panel).look().next_scheduled_start == utc(2026, 3, 2, 7, 45)
    unconfigured = make_panel(VAST_API_KEY="")
    assert watchdog_for(unconfigured).look().next_scheduled_start is None


def test_the_running_watchdog_makes_the_start_in_a_job_of_its_own(tmp_path, vast, clock):
    run_until(clock, utc(2026, 3, 2, 7, 46))  # the start fell due while the panel was down
    vast.boot_after = 0
    env = base_config(tmp_path, VAST_SCHEDULE=OFFICE, VASTPANEL_WATCHDOG="true")
    app = create_app(config_from(env), clock=clock)
    panel, watchdog = app.extensions["vastpanel"], app.extensions[EXTENSION]
    try:
        assert wait_for(lambda: entries(panel, "instance_healthy"), 10, 0.02), "no healthy start"
        assert vast.puts == ["running"]
        assert [e.actor for e in entries(panel, "schedule_start")] == ["schedule"]
        # The next look sets the job for tomorrow's start, as far ahead as the panel's clock says.
        watchdog._run_look()
        job = watchdog.scheduler.get_job(SCHEDULE_JOB)
        wanted = utc(2026, 3, 3, 7, 45) - clock.now()
        assert job is not None
        assert job.next_run_time.timestamp() - time.time() == pytest.approx(wanted, abs=5)
        assert watchdog.alive
    finally:
        watchdog.shutdown()
        panel.store.close()


def test_an_instance_already_running_gets_no_start_and_no_second_one(make_panel, vast, clock):
    panel = make_panel()
    vast.set_running()
    panel.instance.state()  # seen running: a session opens
    run_until(clock, utc(2026, 3, 2, 7, 50))
    assert panel.scheduled_start.start_if_due() == "running"
    assert vast.puts == [] and not entries(panel, "schedule_start")
    assert panel.scheduled_start.start_if_due() is None
    # The early hold covers it until the window opens.
    assert panel.status.report().scheduled_until == utc(2026, 3, 2, 18, 0)


def test_a_skipped_date_gets_no_start(make_panel, vast, clock):
    panel = make_panel(VAST_SCHEDULE_SKIP="2026-03-02")
    assert panel.scheduled_start.next_start_at() == utc(2026, 3, 3, 7, 45)
    run_until(clock, utc(2026, 3, 2, 9, 0))
    assert panel.scheduled_start.start_if_due() is None and vast.puts == []


def test_a_window_already_open_at_start_up_is_warmed_at_once(make_panel, vast, clock):
    run_until(clock, utc(2026, 3, 2, 10, 0))
    panel = make_panel()
    vast.boot_after = 60
    assert panel.scheduled_start.next_start_at() == utc(2026, 3, 2, 7, 45)  # past: due now
    assert panel.scheduled_start.start_if_due() == "healthy"
    assert vast.puts == ["running"]


def test_a_learned_lead_time_moves_the_start(make_panel, clock):
    panel = make_panel()
    db = panel.store.db
    for took in (400.0, 500.0, 600.0, 700.0, 800.0):
        store.note_start_sent(db, 1000.0, queued=False)
        store.note_healthy(db, 1000.0 + took)
    store.note_start_sent(db, 5000.0, queued=True)  # a start that waited for a taken GPU
    store.note_healthy(db, 5000.0 + 7000)
    lead = panel.schedule.lead()
    assert lead.learned and lead.timed_starts == 5 and lead.p90_s == pytest.approx(760.0)
    assert panel.scheduled_start.next_start_at() == utc(2026, 3, 2, 8, 0) - 760 - LEAD_MARGIN_S


def test_a_stop_forgets_a_start_that_never_got_healthy(make_panel, vast, clock):
    panel = make_panel(VAST_SCHEDULE="")
    panel.power.power_on("api", wait_for_health=False)
    clock.advance(30)
    panel.power.power_off("api")
    clock.advance(3600)
    vast.set_running()
    panel.instance.state()  # started from vast.ai's console an hour later
    assert panel.power.session_healthy(panel.instance.state(), panel.status.current_session())
    assert store.recent_start_seconds(panel.store.db, 20) == []


# --- failures are told ----------------------------------------------------------------------


NOTIFY = {"VAST_NOTIFY_URLS": "https://hooks.test/schedule"}


def test_a_refused_scheduled_start_is_told_once(make_panel, vast, clock):
    panel = make_panel(**NOTIFY)
    vast.put_answer = (400, load_fixture("missing_billing.json"))
    run_until(clock, utc(2026, 3, 2, 7, 45))
    assert panel.scheduled_start.start_if_due() == "failed"
    (failed,) = entries(panel, "schedule_start_failed")
    assert failed.actor == "schedule" and failed.meta["stage"] == "start"
    assert "missing_billing" in failed.meta["error"] or "credit" in failed.meta["error"]
    told = [row.entry.event for row in panel.notifier.latest(10)]
    assert told == ["schedule_start_failed"]  # not power_on_failed as well
    assert message_for(failed).startswith(
        "vastpanel: Scheduled start of instance 4242 for the window opening "
        "2026-03-02T08:00:00Z FAILED: "
    )
    # The window counts as started: no retry, no second notification.
    clock.advance(60)
    assert panel.scheduled_start.start_if_due() is None
    assert len(panel.notifier.latest(10)) == 1


def test_a_scheduled_start_that_never_gets_healthy_is_told(make_panel, vast, clock):
    panel = make_panel(VAST_WAIT_TIMEOUT_S="120", **NOTIFY)
    vast.boot_after = 10
    vast.health_status = 503
    run_until(clock, utc(2026, 3, 2, 7, 45))
    assert panel.scheduled_start.start_if_due() == "failed"
    (failed,) = entries(panel, "schedule_start_failed")
    assert failed.meta["stage"] == "health"
    assert "not healthy within 120 s (its health URL does not answer 200)" in failed.meta["error"]
    assert clock.now() == pytest.approx(utc(2026, 3, 2, 7, 47), abs=5)
    assert [row.entry.event for row in panel.notifier.latest(10)] == ["schedule_start_failed"]


def test_vast_ai_unreadable_at_the_start_time_is_tried_again_at_the_next_look(
    make_panel, vast, clock
):
    panel = make_panel()
    run_until(clock, utc(2026, 3, 2, 7, 45))
    vast.mock.replace(responses.Response(responses.GET, INSTANCE_URL, status=502, body="<html>"))
    assert panel.scheduled_start.start_if_due() is None
    assert panel.scheduled_start.next_start_at() == utc(2026, 3, 2, 7, 45)
    assert not entries(panel, "schedule_start")


# --- caps ---------------------------------------------------------------------------------------


def test_a_spent_budget_refuses_the_scheduled_start_and_says_so(make_panel, vast, clock):
    panel = make_panel(VAST_BUDGET_USD="1", VAST_BUDGET_PERIOD="day", **NOTIFY)
    watchdog = watchdog_for(panel)
    vast.set_running()
    vast.set(dph_base=5.95)  # $6/h: the budget is spent after 10 minutes
    watchdog.look()
    run_until(clock, utc(2026, 3, 2, 7, 41))
    assert watchdog.look().stopped is not None  # the budget stop, as ever
    assert "budget is spent" in panel.schedule.overview().blocked_by
    run_until(clock, utc(2026, 3, 2, 7, 45))
    assert panel.scheduled_start.start_if_due() == "failed"
    (failed,) = entries(panel, "schedule_start_failed")
    assert "budget is spent" in failed.meta["error"]
    assert vast.puts == ["stopped"]
    assert "schedule_start_failed" in [row.entry.event for row in panel.notifier.latest(10)]


def test_the_budget_and_the_session_limit_still_stop_inside_a_window(make_panel, vast, clock):
    panel = make_panel(VAST_MAX_SESSION_HOURS="2")
    watchdog = watchdog_for(panel)
    run_until(clock, utc(2026, 3, 2, 9, 0))
    vast.set_running()
    watchdog.look()
    assert "VAST_MAX_SESSION_HOURS (2 h)" in panel.schedule.overview().session_cap_note
    run_until(clock, utc(2026, 3, 2, 11, 0, 1))
    assert watchdog.look().stopped is not None
    assert entries(panel, "max_session_stop")


# --- inside and after a window --------------------------------------------------------------


def running_at(panel, vast, clock, when: float) -> None:
    run_until(clock, when)
    vast.set_running()
    panel.instance.state()


def test_inside_a_window_an_idle_instance_runs_on_and_the_countdown_says_until_when(
    make_panel, vast, clock
):
    panel = make_panel()
    watchdog = watchdog_for(panel)
    running_at(panel, vast, clock, utc(2026, 3, 2, 9, 0))
    run_until(clock, utc(2026, 3, 2, 17, 0))
    assert watchdog.look().stopped is None
    report = panel.status.report()
    assert report.scheduled_until == utc(2026, 3, 2, 18, 0)
    assert report.auto_shutdown_in_minutes == pytest.approx(90)  # the close plus the idle time
    assert report.stop_warning is None
    run_until(clock, utc(2026, 3, 2, 18, 29))
    assert watchdog.look().stopped is None
    run_until(clock, utc(2026, 3, 2, 18, 30, 1))
    assert watchdog.look().stopped is not None


def test_schedule_idle_minutes_apply_inside_windows(make_panel, vast, clock):
    panel = make_panel(VAST_SCHEDULE_IDLE_MINUTES="60")
    watchdog = watchdog_for(panel)
    running_at(panel, vast, clock, utc(2026, 3, 2, 9, 0))
    assert panel.status.report().scheduled_until is None  # the countdown runs
    run_until(clock, utc(2026, 3, 2, 9, 59))
    assert watchdog.look().stopped is None
    run_until(clock, utc(2026, 3, 2, 10, 0, 1))
    assert watchdog.look().stopped is not None


def test_outside_windows_everything_works_as_before(make_panel, vast, clock):
    panel = make_panel()
    watchdog = watchdog_for(panel)
    running_at(panel, vast, clock, utc(2026, 3, 2, 19, 0))
    assert panel.status.report().scheduled_until is None
    run_until(clock, utc(2026, 3, 2, 19, 30, 1))
    assert watchdog.look().stopped is not None


def test_a_busy_llm_is_never_cut_at_the_end_of_a_window(make_panel, vast, clock):
    panel = make_panel(VAST_SCHEDULE_HARD_END="true")
    watchdog = watchdog_for(panel)
    running_at(panel, vast, clock, utc(2026, 3, 2, 9, 0))
    vast.metrics = (200, load_fixture("vllm_v1_busy.prom"))
    run_until(clock, utc(2026, 3, 2, 18, 0, 1))
    assert watchdog.look().stopped is None  # requests running at the close
    vast.metrics = (200, load_fixture("vllm_v1_idle.prom"))
    clock.advance(60)
    # Idle now, though active a minute ago: a hard end stops at once.
    assert watchdog.look().stopped is not None
    assert vast.puts == ["stopped"]


def test_a_hard_end_waits_for_requests_in_flight_through_v1(make_panel, vast, clock):
    panel = make_panel(VAST_SCHEDULE_HARD_END="true", VAST_IDLE_SOURCES="gateway")
    watchdog = watchdog_for(panel)
    running_at(panel, vast, clock, utc(2026, 3, 2, 9, 0))
    run_until(clock, utc(2026, 3, 2, 17, 59))
    ticket = panel.wake.proxy_request()
    run_until(clock, utc(2026, 3, 2, 18, 0, 1))
    assert watchdog.look().stopped is None
    ticket.close()
    assert watchdog.look().stopped is not None


def test_without_a_hard_end_the_idle_time_counts_from_the_close(make_panel, vast, clock):
    panel = make_panel()
    watchdog = watchdog_for(panel)
    running_at(panel, vast, clock, utc(2026, 3, 2, 9, 0))
    run_until(clock, utc(2026, 3, 2, 18, 0, 1))
    assert watchdog.look().stopped is None
    assert panel.idle.next_idle_deadline() == utc(2026, 3, 2, 18, 30)


# --- the stored schedule ------------------------------------------------------------------------


def test_a_stored_schedule_wins_until_cleared_and_both_are_audited(make_panel, clock):
    panel = make_panel(VAST_SCHEDULE_TZ="Europe/Berlin")
    book = panel.schedule
    assert book.in_force().source == "environment"
    force = book.replace("api", "sat 10:00-14:00", "America/New_York", ["2026-03-07"])
    assert force.source == "stored" and force.set_by == "api"
    assert (
        force.schedule.text == "Sat 10:00-14:00" and force.schedule.zone.key == "America/New_York"
    )
    # Saturday the 7th is skipped: the next window is the 14th, 10:00 in New York (EDT).
    assert book.next_start().window.opens_at == utc(2026, 3, 14, 14, 0)
    (changed,) = entries(panel, "schedule_changed")
    assert changed.meta == {
        "schedule": "Sat 10:00-14:00",
        "timezone": "America/New_York",
        "skip": "2026-03-07",
    }
    assert make_panel().schedule.in_force().source == "stored"  # it outlives a restart
    assert book.clear("admin").source == "environment"
    assert entries(panel, "schedule_cleared")[0].actor == "admin"
    book.clear("admin")  # nothing stored: nothing to audit
    assert len(entries(panel, "schedule_cleared")) == 1
    assert book.replace("api", "", "UTC", []).has_windows is False  # none, in place of the env's
    assert book.next_start() is None


@pytest.mark.parametrize(
    ("text", "zone", "skip", "says"),
    [
        ("Mon-Fru 08:00-18:00", "UTC", [], "schedule: at column 5, 'Fru' is not a day"),
        ("Mon 08:00-18:00", "Europe/Berln", [], "timezone: 'Europe/Berln' is not an IANA"),
        ("Mon 08:00-18:00", "UTC", ["2026-02-30"], "skip: '2026-02-30' is not a date"),
        ("Mon 08:00-18:00", "UTC", "2026-12-24", "skip must be a list"),
        (5, "UTC", [], "schedule must be a text"),
        ("x" * 1001, "UTC", [], "schedule must be a text of at most 1000"),
    ],
)
def test_an_unusable_schedule_changes_nothing(make_panel, text, zone, skip, says):
    panel = make_panel()
    with pytest.raises(InvalidRequest, match=says.replace("(", r"\(")):
        panel.schedule.replace("api", text, zone, skip)
    assert panel.schedule.in_force().source == "environment"
    assert not entries(panel, "schedule_changed")


def test_the_month_is_priced_from_windows_starts_idle_tails_and_storage(make_panel, vast, clock):
    panel = make_panel()
    assert panel.schedule.month_cost() is None  # no price before vast.ai was read
    panel.instance.state()  # stopped: dph_base 0.40, storage 0.05 $/h
    cost = panel.schedule.month_cost()
    assert cost.window_hours == 22 * 10  # the weekdays of the next 30 days
    assert cost.lead_hours == pytest.approx(22 * 0.25)
    assert cost.tail_hours == pytest.approx(22 * 0.5)  # each window's idle time after
    assert (cost.gpu_dph, cost.storage_dph) == (0.4, 0.05)
    assert cost.total_usd == pytest.approx((220 + 5.5 + 11) * 0.4 + 720 * 0.05)
    hard = make_panel(VAST_SCHEDULE_HARD_END="true").schedule.month_cost()
    assert hard.tail_hours == 0
    overview = panel.schedule.overview()
    assert overview.last_days_usd == pytest.approx(0.0)
    assert overview.month_cost == cost


def test_an_unreadable_stored_schedule_holds_nothing_and_the_idle_rule_goes_on(
    make_panel, vast, clock, caplog
):
    panel = make_panel()
    store.set_note(panel.store.db, "schedule", '{"schedule": "Mon 08:00-18:00"}')  # no zone
    running_at(panel, vast, clock, utc(2026, 3, 2, 9, 0))
    assert panel.schedule.in_force().has_windows is False
    assert "the stored schedule cannot be read" in caplog.text
    run_until(clock, utc(2026, 3, 2, 9, 30, 1))
    assert watchdog_for(panel).look().stopped is not None
