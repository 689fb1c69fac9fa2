"""How create_app starts the watchdog under flask-apscheduler, and how its jobs are scheduled.

These run the real scheduler, with vast.ai faked by `responses` and the panel on a fake clock;
where a test must let the scheduler's thread run, it polls with a deadline of a few seconds.
How the watchdog runs under gunicorn's gevent worker is tests/test_serving_model.py's.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime

import pytest
import requests

from conftest import VAST_KEY, base_config, config_from, load_fixture
from support import store, wait_for
from vastpanel import ConfigError, create_app
from vastpanel.watchdog.looks import (
    DEADLINE_JOB,
    EXTENSION,
    LEASE,
    LOOK_JOB,
    NOTIFY_JOB,
    WARNING_JOB,
    Watchdog,
)

IDLE_S = 30 * 60
WAIT_S, POLL_S = 10.0, 0.02  # how long and how often a test waits


@pytest.fixture
def make_app(tmp_path, clock, vast):
    """Build apps whose watchdogs are shut down (and databases closed) after the test."""
    apps = []

    def make(*, watchdog: bool | None = None, http=None, **env: str):
        config = config_from(base_config(tmp_path, **env))
        if watchdog is not None:  # the Config field itself, as code building a Config sets it
            config = replace(config, watchdog=watchdog)
        app = create_app(config, clock=clock, http=http)
        apps.append(app)
        return app

    yield make
    for app in apps:
        watchdog = app.extensions.get(EXTENSION)
        if watchdog is not None:
            watchdog.shutdown()
        app.extensions["vastpanel"].store.close()


def switch(flag: bool | str) -> dict:
    """Turn the watchdog on or off by the Config field (a bool) or VASTPANEL_WATCHDOG (text)."""
    return {"watchdog": flag} if isinstance(flag, bool) else {"VASTPANEL_WATCHDOG": flag}


def deadline_in(watchdog: Watchdog) -> float | None:
    """Return in how many real seconds the deadline look is due, or None if none is scheduled."""
    job = watchdog.scheduler.get_job(DEADLINE_JOB)
    if job is None:
        return None
    return job.next_run_time.timestamp() - datetime.now(UTC).timestamp()


def test_not_started_for_a_test_config_unless_asked(app):
    assert EXTENSION not in app.extensions
    assert getattr(app, "apscheduler", None) is None


@pytest.mark.parametrize("flag", [False, "false", "0", "off"])
def test_not_started_when_switched_off(make_app, flag):
    assert EXTENSION not in make_app(**switch(flag)).extensions


def test_bad_flag_stops_start_up_naming_it(make_app):
    with pytest.raises(ConfigError, match="VASTPANEL_WATCHDOG"):
        make_app(VASTPANEL_WATCHDOG="sometimes")


@pytest.mark.parametrize("flag", [True, "true", "1", "on"])
def test_started_on_request_looks_at_once_and_shuts_down_cleanly(make_app, vast, clock, flag):
    vast.set_running()
    app = make_app(**switch(flag))
    watchdog = app.extensions[EXTENSION]
    panel = app.extensions["vastpanel"]
    assert watchdog.alive
    assert app.apscheduler is watchdog.scheduler  # flask-apscheduler's own binding

    # The look at start-up sees the instance running and schedules the deadline look.
    assert wait_for(lambda: watchdog.scheduler.get_job(DEADLINE_JOB) is not None, WAIT_S, POLL_S)
    assert watchdog.is_leader
    assert watchdog.last_look_at == clock.now()
    assert store.current_session(panel.store.db).started_at == clock.now()
    assert deadline_in(watchdog) == pytest.approx(IDLE_S, abs=5)
    look_job = watchdog.scheduler.get_job(LOOK_JOB)
    assert look_job.trigger.interval.total_seconds() == 60

    watchdog.shutdown()
    assert not watchdog.alive and not watchdog.is_leader
    assert not watchdog.scheduler.running
    assert store.read_lease(panel.store.db, LEASE) is None  # handed back for another worker
    watchdog.shutdown()  # twice is harmless (atexit calls it again)


def test_activity_moves_the_deadline_look_only_when_it_fires(make_app, vast, clock):
    vast.set_running()
    app = make_app(watchdog=True)
    watchdog, panel = app.extensions[EXTENSION], app.extensions["vastpanel"]
    assert wait_for(lambda: watchdog.scheduler.get_job(DEADLINE_JOB) is not None, WAIT_S, POLL_S)
    first = watchdog.scheduler.get_job(DEADLINE_JOB).next_run_time

    clock.advance(10 * 60)
    panel.idle.record_activity()  # a request: nothing is rescheduled
    assert watchdog.scheduler.get_job(DEADLINE_JOB).next_run_time == first

    clock.advance(20 * 60)  # the old deadline: the look finds activity and looks again later
    watchdog._run_look()
    assert vast.puts == []
    assert deadline_in(watchdog) == pytest.approx(10 * 60, abs=5)

    clock.advance(10 * 60)
    watchdog._run_look()
    assert vast.puts == ["stopped"]
    assert watchdog.scheduler.get_job(DEADLINE_JOB) is None  # nothing left to wait for
    assert watchdog.alive


def test_a_look_at_the_warning_time_warns_then_waits_for_the_deadline(make_app, vast, clock):
    vast.set_running()
    app = make_app(watchdog=True)
    watchdog, panel = app.extensions[EXTENSION], app.extensions["vastpanel"]
    assert wait_for(lambda: watchdog.scheduler.get_job(WARNING_JOB) is not None, WAIT_S, POLL_S)
    job = watchdog.scheduler.get_job(WARNING_JOB)
    in_s = job.next_run_time.timestamp() - datetime.now(UTC).timestamp()
    assert in_s == pytest.approx(IDLE_S - 5 * 60, abs=5)  # VAST_WARN_MINUTES' default

    clock.advance(IDLE_S - 5 * 60)
    job.func(*job.args)  # the warning look, as the scheduler runs it
    assert [e.event for e in panel.audit.entries(1)] == ["idle_warning"]
    assert watchdog.scheduler.get_job(WARNING_JOB) is None  # warned: no more warning looks
    assert deadline_in(watchdog) == pytest.approx(5 * 60, abs=5)
    assert vast.puts == []


def test_notifications_are_delivered_by_the_leader_in_a_thread_of_their_own(make_app, vast):
    app = make_app(watchdog=True, VAST_NOTIFY_URLS="https://hooks.example.test/x")
    watchdog = app.extensions[EXTENSION]
    job = watchdog.scheduler.get_job(NOTIFY_JOB)
    assert job is not None and job.executor == "notify"
    assert make_app(watchdog=True).extensions[EXTENSION].scheduler.get_job(NOTIFY_JOB) is None


def test_failed_stop_schedules_no_deadline_look_so_no_tight_loop(make_app, vast, clock):
    vast.set_running()
    watchdog = make_app(watchdog=True).extensions[EXTENSION]
    assert wait_for(lambda: watchdog.scheduler.get_job(DEADLINE_JOB) is not None, WAIT_S, POLL_S)

    clock.advance(IDLE_S)
    vast.put_answer = (400, load_fixture("missing_billing.json"))
    watchdog._run_look()
    assert vast.puts == ["stopped"]
    assert watchdog.scheduler.get_job(DEADLINE_JOB) is None
    assert watchdog.alive  # the interval look retries


def test_an_exception_in_a_look_is_logged_without_secrets_and_the_looks_go_on(make_app, caplog):
    class Exploding(requests.Session):
        calls = 0

        def request(self, *args, **kwargs):
            Exploding.calls += 1
            raise RuntimeError(f"unexpected failure with key {VAST_KEY}")

    caplog.set_level(logging.INFO)
    app = make_app(watchdog=True, VAST_WATCHDOG_INTERVAL_S="0.1", http=Exploding())
    watchdog = app.extensions[EXTENSION]
    assert wait_for(lambda: Exploding.calls >= 3, WAIT_S, POLL_S)
    assert watchdog.alive
    watchdog.shutdown()
    failures = [r for r in caplog.records if "look failed" in r.getMessage()]
    assert failures and "RuntimeError" in failures[0].getMessage()
    assert all(VAST_KEY not in r.getMessage() for r in caplog.records)
    assert VAST_KEY not in caplog.text


def clean_env(monkeypatch, tmp_path, **env):
    """Give create_app() an environment with no vast.ai key (so nothing is called)."""
    for name in ("VAST_API_KEY", "VAST_INSTANCE_ID", "VASTPANEL_WATCHDOG", "WERKZEUG_RUN_MAIN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("FLASK_DEBUG", raising=False)
    monkeypatch.setenv("VAST_DB_PATH", str(tmp_path / "env.db"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    ("env", "started"),
    [
        ({}, True),  # the real app: on by default
        ({"VASTPANEL_WATCHDOG": "false"}, False),
        ({"FLASK_DEBUG": "1"}, False),  # the reloader's watching process
        ({"FLASK_DEBUG": "1", "WERKZEUG_RUN_MAIN": "true"}, True),  # the reloader's child
    ],
)
def test_real_app_starts_it_by_default_but_not_in_the_reloader_parent(
    monkeypatch, tmp_path, env, started
):
    clean_env(monkeypatch, tmp_path, **env)
    app = create_app()
    watchdog = app.extensions.get(EXTENSION)
    try:
        assert (watchdog is not None) is started
        if started:
            assert watchdog.alive
            assert wait_for(lambda: watchdog.is_leader, WAIT_S, POLL_S)
    finally:
        if watchdog is not None:
            watchdog.shutdown()
        app.extensions["vastpanel"].store.close()


def test_the_scheduler_keeps_its_settings_through_flask_apscheduler(make_app):
    """flask-apscheduler's init_app reconfigures the scheduler; ours must survive it."""
    watchdog = make_app(watchdog=True).extensions[EXTENSION]
    scheduler = watchdog.scheduler.scheduler
    assert scheduler._job_defaults == {
        "misfire_grace_time": None,  # a late look runs; 1 s (the reset value) would skip it
        "coalesce": True,
        "max_instances": 1,
    }
    assert scheduler.timezone == UTC
    assert watchdog.scheduler.get_job(LOOK_JOB).max_instances == 2
