"""The auto-shutdown watchdog: looks at the instance on a timer and when the idle deadline falls due.

Each look calls the idle rule's `stop_if_idle()`, which reads the instance through the shared
cache (so sessions stay true to what vast.ai says) and stops it, with its audit entries, once it
has been idle for VAST_AUTO_SHUTDOWN_MINUTES. Looks happen every VAST_WATCHDOG_INTERVAL_S, once
at start-up, and once just after the idle deadline, so a stop goes out when it falls due rather
than up to an interval late. After the idle rule, each look applies the caps (caps.py): a spent
budget or a session past VAST_MAX_SESSION_HOURS is stopped, and the next look is also set for
when the session cap or the budget falls due. A second job reads vast.ai's charges (costs.py)
at start-up and every hour.

When a schedule of warm hours is in force, the leader also makes the start before each window
(domain/schedule_start.py) in a job of its own, set by each look for when the next start falls
due; the job follows that start to health without holding up a look.

It also looks once at the warning time (the deadline minus VAST_WARN_MINUTES), where the idle
rule audits the coming stop once per deadline, and, as the leader, delivers the notification
outbox every NOTIFY_EVERY_S in a job of its own, so a slow webhook never delays a look.

Only one process per deployment acts: the one holding the "watchdog" lease in SQLite. It renews
the lease on every look; the others keep looking only to take the lease over if the leader stops
renewing it, or at once if the leader's process is gone (a kill -9 on this host).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.jobstores.base import JobLookupError
from flask import Flask
from flask.helpers import get_debug_flag
from flask_apscheduler import APScheduler

from .. import counters
from ..clock import Clock
from ..config import Config
from ..domain import Panel
from ..domain.agent_link import AgentLink
from ..domain.budget import Budget
from ..domain.caps import Caps
from ..domain.costs import CostBook
from ..domain.idle import IdleRule
from ..domain.instance import InstanceReader
from ..domain.lease_holder import LeaseHolder
from ..domain.move import Mover
from ..domain.notify import Notifier
from ..domain.power import PowerOffResult
from ..domain.schedule_start import ScheduledStart
from ..errors import PanelError
from ..logs import redact
from ..storage import sessions
from ..storage.database import Store
from .scheduler import NOTIFY_EXECUTOR, SCHEDULE_EXECUTOR, new_scheduler, settings

log = logging.getLogger("vastpanel.watchdog")

EXTENSION = "vastpanel_watchdog"
LEASE = "watchdog"
LOOK_JOB = "vastpanel-watchdog-look"
DEADLINE_JOB = "vastpanel-watchdog-deadline"
WARNING_JOB = "vastpanel-watchdog-warning"
NOTIFY_JOB = "vastpanel-notify"
NOTIFY_EVERY_S = 2.0  # how often the leader looks for notifications due
MOVE_JOB = "vastpanel-move"
MOVE_EVERY_S = 2.0  # how often the leader takes the next step of a move under way
SCHEDULE_JOB = "vastpanel-schedule-start"
CHARGES_JOB = "vastpanel-charges-read"
CHARGES_EVERY_S = 3600.0  # vast.ai's own record is read once an hour (and at start-up)
# The deadline look fires this long after the deadline, never a rounding error before it.
DEADLINE_MARGIN_S = 0.05
# A look that has run this long is stuck (vast.ai calls and lock waits are all bounded below it).
STUCK_LOOK_S = 300.0
SLOW_LOOK_S = 5.0  # a look slower than this is logged


@dataclass(frozen=True)
class Look:
    """What one look did."""

    at: float
    leader: bool
    stopped: PowerOffResult | None = None
    next_deadline: float | None = None
    error: str | None = None
    next_warning: float | None = None
    next_scheduled_start: float | None = None  # when the schedule's next start falls due


class Watchdog:
    """Stops the idle instance and keeps sessions true, from whichever process leads."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        store: Store,
        leases: LeaseHolder,
        instance: InstanceReader,
        idle: IdleRule,
        caps: Caps,
        budget: Budget,
        agent: AgentLink,
        costs: CostBook,
        notifier: Notifier,
        mover: Mover,
        scheduled_start: ScheduledStart,
    ):
        self.config = config
        self.clock = clock
        self.store = store
        self.leases = leases
        self.instance = instance
        self.idle = idle
        self.caps = caps
        self.budget = budget
        self.agent = agent
        self.costs = costs
        self.notifier = notifier
        self.mover = mover
        self.scheduled_start = scheduled_start
        self.interval_s = config.watchdog_interval_s
        # A bit over two intervals: one missed renewal does not hand the lease over.
        self.lease_ttl_s = 2.5 * self.interval_s
        self.scheduler: APScheduler | None = None
        self.last_look_at: float | None = None
        self._lease_until: float | None = None
        self._look_started: float | None = None  # monotonic, while a look runs
        self._look_lock = threading.Lock()
        self._schedule_lock = threading.Lock()
        self._stopping = False

    # --- what /healthz reads -----------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Tell whether the scheduler runs with the look job scheduled and no look is stuck."""
        scheduler = self.scheduler
        if scheduler is None or self._stopping or not scheduler.running:
            return False
        started = self._look_started
        if started is not None and time.monotonic() - started > STUCK_LOOK_S:
            return False
        return scheduler.get_job(LOOK_JOB) is not None

    @property
    def is_leader(self) -> bool:
        """Tell whether this process holds the lease, so its looks act."""
        until = self._lease_until
        return until is not None and self.clock.now() < until

    # --- the look ----------------------------------------------------------------------------

    def look(self) -> Look:
        """Take or renew the lease; if this process leads, stop the instance when idle is due."""
        # The lease says that this process is alive and leads: it is renewed as the look
        # begins, not once a slow look before it (vast.ai retrying) lets go of the look lock.
        now = self.clock.now()
        self.last_look_at = now
        counters.WATCHDOG_LAST_LOOK.set(now)
        leader = self._hold_lease(now)
        counters.WATCHDOG_LOOKS.labels(role="leader" if leader else "follower").inc()
        if not leader:
            return Look(now, leader=False)
        with self._look_lock:
            now = self.clock.now()
            stopped, error = None, None
            try:
                # The idle rule reads the instance (booking its costs); then the caps decide.
                stopped = self.idle.stop_if_idle() or self.caps.enforce()
                if stopped is None:
                    self.mover.move_if_stuck()  # VAST_MOVE=auto: a stuck start moves
                    # Tell the instance's agent the panel is alive (when it runs and a secret
                    # is set), from the answer just read; bounded by a short timeout.
                    self.agent.send_heartbeat(
                        self.instance.cached_state(),
                        sessions.current_session(self.store.db),
                        self.idle.next_idle_deadline(),
                    )
            except PanelError as exc:
                # A failed stop is already audited (…_failed); the next look retries.
                error = exc.message
                log.warning("watchdog: %s", exc.message)
            deadlines = [
                self.idle.next_idle_deadline(),
                self.idle.next_stall_check(),  # busy gauges that may be stuck (llm_load.py)
                self.budget.next_cap_deadline(),
            ]
            next_deadline = min((d for d in deadlines if d is not None), default=None)
            next_start = self.scheduled_start.next_start_at()
            return Look(
                now, True, stopped, next_deadline, error, self.idle.next_warning_at(), next_start
            )

    def read_charges(self) -> bool:
        """Read vast.ai's charges if this process leads; tell whether it did."""
        with self._look_lock:
            leader = self._hold_lease(self.clock.now())
        if leader:  # outside the look lock: paging waits out vast.ai's rate limit
            self.costs.read_charges()
        return leader

    def _hold_lease(self, now: float) -> bool:
        """Take or renew the lease, taking it over from a dead process; remember the outcome."""
        held = self.leases.take(LEASE, self.lease_ttl_s)
        if held != self.is_leader:
            log.info("watchdog: %s", "this process leads" if held else "another process leads")
        self._lease_until = now + self.lease_ttl_s if held else None
        return held

    # --- the scheduler -----------------------------------------------------------------------

    def start(self, app: Flask) -> None:
        """Start the scheduler: a look now, then every interval, plus one at each idle deadline."""
        app.config.update(settings())
        scheduler = APScheduler(new_scheduler())
        scheduler.init_app(app)  # configures it from SCHEDULER_* (executors, defaults, zone)
        scheduler.add_job(
            LOOK_JOB,
            self._run_look,
            trigger="interval",
            seconds=self.interval_s,
            next_run_time=datetime.now(UTC),  # a deadline that passed while down acts now
            # A look that falls due while the last one still runs (vast.ai slow, retries) runs
            # right after it, rather than being skipped to the next interval; looks queue on
            # the look lock, and coalescing keeps it to one waiting.
            max_instances=2,
        )
        scheduler.add_job(
            CHARGES_JOB,
            self._run_charges,
            trigger="interval",
            seconds=CHARGES_EVERY_S,
            next_run_time=datetime.now(UTC),  # at start-up (it takes the lease if free)
        )
        scheduler.add_job(
            MOVE_JOB,
            self._run_move,
            trigger="interval",
            seconds=MOVE_EVERY_S,
            next_run_time=datetime.now(UTC),  # a move a restart interrupted goes on now
        )
        if self.config.notify_targets:
            scheduler.add_job(
                NOTIFY_JOB,
                self._run_delivery,
                trigger="interval",
                seconds=NOTIFY_EVERY_S,
                executor=NOTIFY_EXECUTOR,  # a slow webhook never delays a look
                next_run_time=datetime.now(UTC),  # what was queued before a restart goes now
            )
        self.scheduler = scheduler
        scheduler.start()
        atexit.register(self.shutdown)
        log.info(
            "watchdog: started (every %g s, auto-shutdown %s)",
            self.interval_s,
            f"after {self.config.auto_shutdown_minutes:g} idle minutes"
            if self.config.auto_shutdown
            else "off",
        )

    def shutdown(self) -> None:
        """Stop the scheduler, wait for a running look, and hand the lease back."""
        with self._schedule_lock:
            if self._stopping or self.scheduler is None:
                return
            # Set under the lock: a look finishing now schedules nothing after this.
            self._stopping = True
        try:
            if self.scheduler.running:
                self.scheduler.shutdown(wait=True)
            # A look already running renews the lease as it goes: let it end first.
            if self._look_lock.acquire(timeout=STUCK_LOOK_S):
                self._look_lock.release()
            self.leases.release(LEASE)
            self._lease_until = None
        except Exception as exc:  # at exit the database may be gone; nothing left to protect
            log.warning("watchdog: shutdown: %s", redact(f"{type(exc).__name__}: {exc}"))
        finally:
            self.store.close()

    def _run_delivery(self) -> None:
        """Deliver due notifications if this process leads; never raise."""
        if not self.is_leader:
            return
        try:
            self.notifier.deliver()
        except Exception as exc:
            text = "".join(traceback.format_exception(exc))
            log.error("notify: delivery failed:\n%s", redact(text))
        finally:
            self.store.close()  # this job's connection

    def _run_look(self, due_at: float | None = None) -> None:
        """Run one look from the scheduler; never raise, so no error stops the watchdog.

        due_at is the deadline or warning time a scheduled look is for: its lateness is measured.
        """
        started = self._look_started = time.monotonic()
        if due_at is not None:
            counters.WATCHDOG_LATENESS.observe(max(0.0, self.clock.now() - due_at))
        try:
            result = self.look()
            self._schedule_look(DEADLINE_JOB, result.next_deadline if result.leader else None)
            self._schedule_look(WARNING_JOB, result.next_warning if result.leader else None)
            self._schedule_start(result.next_scheduled_start if result.leader else None)
        except Exception as exc:
            text = "".join(traceback.format_exception(exc))
            log.error("watchdog: look failed:\n%s", redact(text))
        finally:
            self._look_started = None
            self.store.close()  # this job's connection; the next look opens its own
            took = time.monotonic() - started
            if took > SLOW_LOOK_S:
                log.warning("watchdog: a look took %.1f s", took)

    def _run_move(self) -> None:
        """Take the next step of a move under way if this process leads; never raise."""
        if not self.is_leader:
            return
        try:
            self.mover.advance()
        except Exception as exc:
            text = "".join(traceback.format_exception(exc))
            log.error("watchdog: a move step failed:\n%s", redact(text))
        finally:
            self.store.close()

    def _run_scheduled_start(self) -> None:
        """Make the schedule's start that falls due if this process leads; never raise."""
        if not self.is_leader:
            return
        try:
            self.scheduled_start.start_if_due(gone=lambda: self._stopping)
        except Exception as exc:
            text = "".join(traceback.format_exception(exc))
            log.error("watchdog: the scheduled start failed:\n%s", redact(text))
        finally:
            self.store.close()  # this job's connection

    def _run_charges(self) -> None:
        """Read vast.ai's charges from the scheduler; never raise."""
        try:
            self.read_charges()
        except Exception as exc:
            text = "".join(traceback.format_exception(exc))
            log.error("watchdog: reading charges failed:\n%s", redact(text))
        finally:
            self.store.close()

    def _schedule_look(self, job_id: str, deadline: float | None) -> None:
        """Arrange one look just after a deadline that lies ahead; drop it otherwise.

        A deadline already passed is left to the interval looks, so a stop that keeps failing
        is retried once per interval, never in a tight loop.
        """
        with self._schedule_lock:
            if self._stopping or self.scheduler is None:
                return
            delay = None if deadline is None else deadline - self.clock.now()
            if delay is None or delay <= 0:
                try:
                    self.scheduler.remove_job(job_id)
                except JobLookupError:
                    pass
                return
            # Scheduled by delay, so the panel's clock and the scheduler's need not agree.
            run_at = datetime.now(UTC) + timedelta(seconds=delay + DEADLINE_MARGIN_S)
            job = self.scheduler.get_job(job_id)
            if job is not None and abs((job.next_run_time - run_at).total_seconds()) < 0.1:
                return  # already there (each interval look finds the same deadline)
            self.scheduler.add_job(
                job_id,
                self._run_look,
                trigger="date",
                run_date=run_at,
                args=[deadline],
                replace_existing=True,
                # The look that reschedules is itself this job: let the new one run even if
                # it falls due before that look has returned (looks queue on the look lock).
                max_instances=2,
            )

    def _schedule_start(self, due_at: float | None) -> None:
        """Arrange the job that makes the schedule's next start: at due_at, or now if past."""
        with self._schedule_lock:
            if self._stopping or self.scheduler is None:
                return
            if due_at is None:
                try:
                    self.scheduler.remove_job(SCHEDULE_JOB)
                except JobLookupError:
                    pass
                return
            # A start made later than due is still worth making: the job then runs at once.
            delay = max(0.0, due_at - self.clock.now())
            run_at = datetime.now(UTC) + timedelta(seconds=delay)
            job = self.scheduler.get_job(SCHEDULE_JOB)
            if job is not None and abs((job.next_run_time - run_at).total_seconds()) < 1.0:
                return  # already there (each look finds the same time)
            self.scheduler.add_job(
                SCHEDULE_JOB,
                self._run_scheduled_start,
                trigger="date",
                run_date=run_at,
                replace_existing=True,
                executor=SCHEDULE_EXECUTOR,
            )


def watchdog_wanted(config: Config) -> bool:
    """Tell whether to start: VASTPANEL_WATCHDOG, else on for the real app and off in tests."""
    return config.watchdog if config.watchdog is not None else not config.testing


def in_reloader_parent(app: Flask) -> bool:
    """Tell whether this is the debug reloader's watching process (its child serves the app)."""
    return (app.debug or get_debug_flag()) and os.environ.get("WERKZEUG_RUN_MAIN") != "true"


def init_app(app: Flask, panel: Panel) -> None:
    """Start the watchdog for this app when wanted, and expose it as an extension."""
    config = panel.config
    if not watchdog_wanted(config):
        return
    if in_reloader_parent(app):
        log.info("watchdog: not started in the debug reloader's watching process")
        return
    if config.auto_shutdown and config.watchdog_interval_s > config.auto_shutdown_minutes * 60:
        log.warning(
            "VAST_WATCHDOG_INTERVAL_S (%g) is longer than VAST_AUTO_SHUTDOWN_MINUTES: a session "
            "opened outside this process may be stopped up to an interval late.",
            config.watchdog_interval_s,
        )
    watchdog = watchdog_for(panel)
    watchdog.start(app)
    app.extensions[EXTENSION] = watchdog


def watchdog_for(panel: Panel) -> Watchdog:
    """Build a watchdog over the parts of this panel (not started)."""
    return Watchdog(
        panel.config,
        panel.clock,
        panel.store,
        panel.leases,
        panel.instance,
        panel.idle,
        panel.caps,
        panel.budget,
        panel.agent,
        panel.costs,
        panel.notifier,
        panel.mover,
        panel.scheduled_start,
    )
