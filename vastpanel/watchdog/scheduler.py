"""The watchdog's scheduler, of the serving model's kind: greenlets under gevent, else threads.

Under gunicorn's gevent worker the process is monkey-patched and every request is a greenlet;
the watchdog's loop and its looks are greenlets too (APScheduler's GeventScheduler and
GeventExecutor), so every lock, socket and sleep in the process is gevent's and nothing is
shared with an OS thread. Without gevent (the dev server, the CLI, tests) APScheduler's
BackgroundScheduler runs the looks on a few threads, as the dev server runs requests.
The choice is made through flask-apscheduler's settings (SCHEDULER_EXECUTORS and the rest).
docs/decisions/serving-model.md says why.
"""

from __future__ import annotations

import sys
from datetime import UTC
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler

# A look is cheap and idempotent: run a late one rather than skip it.
JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
# Threads without gevent: a look, the deadline look and the charges read each have one, so
# none waits for another; notifications have their own, so a slow webhook never delays a look.
THREADS = 3
NOTIFY_EXECUTOR = "notify"
# A scheduled start follows its instance to health for minutes: on a thread (or greenlet) of
# its own, so it never holds up a look.
SCHEDULE_EXECUTOR = "schedule"


def gevent_patched() -> bool:
    """Tell whether gevent has monkey-patched this process (as gunicorn's gevent worker does)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


def new_scheduler() -> BaseScheduler:
    """Return the scheduler that suits this process, not yet configured (see settings)."""
    if gevent_patched():
        from apscheduler.schedulers.gevent import GeventScheduler

        return GeventScheduler()
    return BackgroundScheduler()


def settings() -> dict[str, Any]:
    """Return the SCHEDULER_* settings flask-apscheduler configures the scheduler from."""
    if gevent_patched():
        executors = {
            "default": {"type": "gevent"},
            NOTIFY_EXECUTOR: {"type": "gevent"},
            SCHEDULE_EXECUTOR: {"type": "gevent"},
        }
    else:
        executors = {
            "default": {"type": "threadpool", "max_workers": THREADS},
            NOTIFY_EXECUTOR: {"type": "threadpool", "max_workers": 1},
            SCHEDULE_EXECUTOR: {"type": "threadpool", "max_workers": 1},
        }
    return {
        "SCHEDULER_TIMEZONE": UTC,
        "SCHEDULER_EXECUTORS": executors,
        "SCHEDULER_JOB_DEFAULTS": JOB_DEFAULTS,
    }
