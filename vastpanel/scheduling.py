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
with requests are built to work across threads (below). A socket belongs to the hub of the
thread that opened it, so a kept-alive HTTP connection must not pass from a look to a request:
each OS thread has its own requests.Session (ThreadSessions).

Locks shared across threads. Under patching, threading.Lock, RLock, Event and Semaphore are
gevent's, whose wakeups get lost between native threads: three native threads and the hub
taking one patched Lock, RLock or Semaphore 100,000 times each hung in 15 of 15 runs, and looks
beside requests hung now and then (py-spy: a job runner stuck in Condition.__enter__, every hub
idle). So nothing here waits on them across threads:
- what is held only for a moment and never across I/O (APScheduler's own locks and wake-up, the
  job queue, the logging module's locks) uses the OS's: a greenlet that meets one held blocks
  its hub for that moment, as a busy CPU would;
- what is held across I/O (the panel's read-once and power locks, the watchdog's) is a
  SharedLock: greenlets of one thread queue on a gevent lock of their thread, and the one at its
  head polls the OS lock, sleeping in between, so a greenlet never blocks its hub on a look.
"""

from __future__ import annotations

import _queue
import _thread
import logging
import sys
import threading
import time
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
# How a SharedLock's waiter polls a lock another thread holds: from 0.5 ms, doubling, to 20 ms.
POLL_FIRST_S, POLL_MAX_S = 0.0005, 0.02
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


def os_lock() -> Any:
    """Return a lock of the OS, which patching leaves alone (for moments, never across I/O)."""
    monkey = sys.modules.get("gevent.monkey")
    allocate = monkey.get_original("_thread", "allocate_lock") if monkey else _thread.allocate_lock
    return allocate()


def os_rlock() -> Any:
    """Return a reentrant lock of the OS (C's _thread.RLock, which gevent does not patch)."""
    return _thread.RLock()


class OsEvent:
    """threading.Event's wait, set, clear and is_set over OS locks, for APScheduler's loop."""

    def __init__(self) -> None:
        self._lock = os_lock()
        self._flag = False
        self._waiters: list[Any] = []  # one held OS lock per waiter; set() releases them

    def is_set(self) -> bool:
        """Tell whether the flag is set."""
        return self._flag

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        with self._lock:
            self._flag = True
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.release()

    def clear(self) -> None:
        """Clear the flag."""
        with self._lock:
            self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the flag is set or timeout seconds pass; return the flag."""
        with self._lock:
            if self._flag:
                return True
            waiter = os_lock()
            waiter.acquire()
            self._waiters.append(waiter)
        if not waiter.acquire(True, -1 if timeout is None else min(timeout, _thread.TIMEOUT_MAX)):
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return self._flag


class SharedLock:
    """A lock held across I/O that greenlets of any thread and native threads take in turn.

    Under gevent, a patched Lock loses wakeups across threads, and an OS lock taken by a
    greenlet would block its whole hub until another thread's I/O ends. So the greenlets of one
    thread queue on a gevent lock of that thread (no wakeup crosses a thread), and the one at
    the head takes the OS lock, polling with a growing sleep while another thread holds it: a
    wait of at most POLL_MAX_S more than needed, only when a look and a request meet.
    """

    def __init__(self) -> None:
        self._os = os_lock()
        self._queues: dict[int, Any] = {}  # the OS thread's id -> the gevent lock of its queue

    def _queue(self) -> Any:
        ident = threading.get_native_id()
        queue = self._queues.get(ident)
        if queue is None:  # made by the thread that uses it; setdefault keeps one if two race
            queue = self._queues.setdefault(ident, threading.Lock())
        return queue

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock, as threading.Lock.acquire does."""
        give_up = None if timeout < 0 else time.monotonic() + timeout
        queue = self._queue()
        if not queue.acquire(blocking, timeout):
            return False
        delay = POLL_FIRST_S
        while not self._os.acquire(False):
            left = None if give_up is None else give_up - time.monotonic()
            if not blocking or (left is not None and left <= 0):
                queue.release()
                return False
            time.sleep(delay if left is None else min(delay, left))  # a greenlet's sleep
            delay = min(delay * 2, POLL_MAX_S)
        return True

    def release(self) -> None:
        """Let the lock go."""
        self._os.release()
        self._queue().release()

    def locked(self) -> bool:
        """Tell whether some thread or greenlet holds the lock."""
        return self._os.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def shared_lock() -> Any:
    """Return a lock that greenlets and the watchdog's threads share: a plain one unpatched."""
    return SharedLock() if gevent_patched() else threading.Lock()


def os_locks_for_logging() -> None:
    """Give the logging module and its handlers OS locks, if gevent gave them its own.

    A look on a native thread and requests log through the same handlers; their locks are held
    only while a line is written. Idempotent; handlers made later get one too (createLock).
    """
    if not gevent_patched() or getattr(logging, "_vastpanel_os_locks", False):
        return

    def create_lock(handler: logging.Handler) -> None:
        handler.lock = os_rlock()
        logging._register_at_fork_reinit_lock(handler)  # type: ignore[attr-defined]  # as 3.11's

    logging._lock = os_rlock()  # type: ignore[attr-defined]  # gevent swapped in its own
    logging.Handler.createLock = create_lock  # type: ignore[method-assign]
    handlers = [logging.getLogger().handlers]
    handlers += [
        logger.handlers
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    for group in handlers:
        for handler in group:
            handler.lock = os_rlock()
    logging._vastpanel_os_locks = True  # type: ignore[attr-defined]


def native_thread(work: Callable[[], Any]) -> Any:
    """Run work on a new native thread (gevent's ThreadPool, which patching does not touch).

    Return what waits for its end: `.get()` (cooperative in a greenlet).
    """
    from gevent.threadpool import ThreadPool

    return ThreadPool(1).spawn(work)


class NativeThreadScheduler(BackgroundScheduler):
    """A BackgroundScheduler whose loop runs on a native thread where gevent patched threading.

    Patched threading.Thread would make it a greenlet. Its locks and wake-up event are the OS's:
    the loop, the job runners and requests (/healthz asks for the job) all take them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        os_locks_for_logging()  # it logs from its threads, as looks do
        super().__init__(*args, **kwargs)

    def _create_lock(self) -> Any:
        return os_rlock()

    def start(self, *args: Any, **kwargs: Any) -> None:
        """Start as BackgroundScheduler does, with the loop on a native thread."""
        if self._event is None or self._event.is_set():
            self._event = OsEvent()
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
        self._lock = os_rlock()  # BaseExecutor's, taken by the loop and by the runners
        self._size = max_workers
        self._jobs = _queue.SimpleQueue()  # C's, which patching leaves alone: OS waits
        self._runners: list[Any] = []

    def start(self, scheduler: BaseScheduler, alias: str) -> None:
        """Start the threads that run the jobs."""
        super().start(scheduler, alias)
        self._runners = [native_thread(self._run) for _ in range(self._size)]

    def shutdown(self, wait: bool = True) -> None:
        """End the threads once the jobs already queued have run (waiting for them if asked)."""
        for _ in self._runners:
            self._jobs.put(None)
        if wait:
            for runner in self._runners:
                runner.get()

    def _do_submit_job(self, job, run_times) -> None:
        self._jobs.put((job, run_times))

    def _run(self) -> None:
        while True:
            try:  # an OS wait on this native thread, in rounds so it never waits forever
                item = self._jobs.get(timeout=IDLE_WAIT_S)
            except _queue.Empty:
                continue
            if item is None:
                return
            job, run_times = item
            try:
                events = run_job(job, job._jobstore_alias, run_times, self._logger.name)
            except BaseException:
                self._run_job_error(job.id, *sys.exc_info()[1:])
            else:
                self._run_job_success(job.id, events)
