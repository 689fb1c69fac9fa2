"""The watchdog's scheduler: APScheduler on threads, native ones even under gevent.

Under gunicorn's gevent worker the process is monkey-patched, so APScheduler's threads would be
greenlets on the worker's hub, as its GeventScheduler is by design. Such a watchdog gets the
CPU only between whole rounds of ready requests: measured under 200 clients posting /activity
as fast as they can (tests/test_reliability_load.py), a look came back to its greenlet up to
2.3 s after it had finished, so looks fell behind their interval and the watchdog's lease
lapsed, where threads (gthread) had kept every look within 2.2 s of the last. A GPU that must
be stopped is the last thing to leave to the load, so under gevent the scheduler loop and the
looks run on native threads, which the OS and the GIL share out as before. A look's sockets and
sleeps still work there (gevent gives that thread a hub of its own), and the locks it shares
with requests work across threads. A socket belongs to the hub of the thread that opened it, so
a kept-alive HTTP connection must not pass from a look to a request: each OS thread has its own
requests.Session (ThreadSessions).
"""

from __future__ import annotations

import collections
import sys
import threading
from collections.abc import Callable
from datetime import UTC
from typing import Any

import requests
from apscheduler.executors.base import BaseExecutor, run_job
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

# A look is cheap and idempotent: run a late one rather than skip it.
IDLE_WAIT_S = 1.0
MAX_WORKERS = 3
JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}


def gevent_patched() -> bool:
    """Tell whether gevent has monkey-patched this process (as gunicorn's gevent worker does)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


def new_scheduler() -> BaseScheduler:
    """Return the scheduler that suits this process, not yet configured (see scheduler_options)."""
    return NativeThreadScheduler() if gevent_patched() else BackgroundScheduler()


def scheduler_options() -> dict[str, Any]:
    """Return the watchdog scheduler's settings: UTC, its executor, and its job defaults."""
    # Three: a look, the deadline look and the hourly read of vast.ai's charges each have a
    # thread, so none waits for another.
    return {
        "timezone": UTC,
        "executors": {"default": new_executor(MAX_WORKERS)},
        "job_defaults": JOB_DEFAULTS,
    }


def new_executor(max_workers: int) -> BaseExecutor:
    """Return an executor of max_workers threads: native ones under gevent."""
    if gevent_patched():
        return NativePoolExecutor(max_workers)
    return ThreadPoolExecutor(max_workers)


class ThreadSessions:
    """A requests.Session for each OS thread, used as one Session is (get, post, request).

    Under gevent, a connection kept alive in a Session's pool is a socket of the hub of the
    thread that opened it; reused from another thread (a look's connection, then a request's)
    it fails with "Cannot switch to a different thread". Greenlets of one thread share a
    Session, so requests still reuse connections. Without gevent it costs only the lookup.
    """

    def __init__(self) -> None:
        self._sessions: dict[int, requests.Session] = {}

    def session(self) -> requests.Session:
        """Return this OS thread's Session (made on first use)."""
        ident = threading.get_native_id()  # the OS thread's, even where gevent patched threading
        session = self._sessions.get(ident)
        if session is None:  # setdefault is atomic: one Session stays if two threads race
            session = self._sessions.setdefault(ident, requests.Session())
        return session

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session(), name)


def native_thread(work: Callable[[], Any]) -> Any:
    """Run work on a new native thread (gevent's ThreadPool, which patching does not touch).

    Return what waits for its end: `.get()` (cooperative in a greenlet).
    """
    from gevent.threadpool import ThreadPool

    return ThreadPool(1).spawn(work)


class NativeThreadScheduler(BackgroundScheduler):
    """A BackgroundScheduler whose loop runs on a native thread where gevent patched threading.

    Patched threading.Thread would make it a greenlet. Its event and locks stay gevent's, which
    work across native threads: requests (/healthz asks for the job) and looks use them too.
    """

    def start(self, *args: Any, **kwargs: Any) -> None:
        """Start as BackgroundScheduler does, with the loop on a native thread."""
        if self._event is None or self._event.is_set():
            self._event = threading.Event()
        BaseScheduler.start(self, *args, **kwargs)
        self._loop = native_thread(self._main_loop)

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        """Stop the scheduler and wait for its loop to end."""
        BlockingScheduler.shutdown(self, *args, **kwargs)
        self._loop.get()


class NativePoolExecutor(BaseExecutor):
    """Runs jobs on a few native threads, like APScheduler's ThreadPoolExecutor did unpatched."""

    def __init__(self, max_workers: int) -> None:
        super().__init__()
        self._size = max_workers
        self._jobs: collections.deque = collections.deque()  # append and popleft are atomic
        self._queued = threading.Semaphore(0)  # gevent's under patching: works across threads
        self._runners: list[Any] = []

    def start(self, scheduler: BaseScheduler, alias: str) -> None:
        """Start the threads that run the jobs."""
        super().start(scheduler, alias)
        self._runners = [native_thread(self._run) for _ in range(self._size)]

    def shutdown(self, wait: bool = True) -> None:
        """End the threads once the jobs already queued have run (waiting for them if asked)."""
        for _ in self._runners:
            self._jobs.append(None)
            self._queued.release()
        if wait:
            for runner in self._runners:
                runner.get()

    def _do_submit_job(self, job, run_times) -> None:
        self._jobs.append((job, run_times))
        self._queued.release()

    def _run(self) -> None:
        while True:
            # With a timeout: this thread's hub has nothing else to wait for, and gevent would
            # take a wait without one for a deadlock (LoopExit), not seeing the other threads.
            if not self._queued.acquire(timeout=IDLE_WAIT_S):
                continue
            item = self._jobs.popleft()
            if item is None:
                return
            job, run_times = item
            try:
                events = run_job(job, job._jobstore_alias, run_times, self._logger.name)
            except BaseException:
                self._run_job_error(job.id, *sys.exc_info()[1:])
            else:
                self._run_job_success(job.id, events)
