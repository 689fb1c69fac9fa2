"""The locks and wake-up the watchdog's threads share with requests, with and without gevent.

Under gevent's patching, threading's locks lose wakeups between native threads (three native
threads and the hub taking one patched Lock, RLock or Semaphore 100,000 times each hung in 15 of
15 runs); the scripts below run patched in a subprocess, as gunicorn's gevent worker is, and
must end well inside their timeout.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from vastpanel.scheduling import OsEvent, SharedLock, shared_lock


def run_patched(script: str, timeout: float = 60) -> str:
    """Run a script in a fresh interpreter (gevent patches it first); return its output."""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_shared_lock_is_a_plain_lock_without_gevent():
    assert not isinstance(shared_lock(), SharedLock)


def test_shared_lock_gives_way_to_its_holder_and_honours_timeouts():
    lock = SharedLock()
    taken, let_go = threading.Event(), threading.Event()

    def hold():
        with lock:
            taken.set()
            let_go.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(5)
    assert lock.locked()
    assert not lock.acquire(blocking=False)
    started = time.monotonic()
    assert not lock.acquire(timeout=0.1)
    assert 0.1 <= time.monotonic() - started < 1.0
    let_go.set()
    assert lock.acquire(timeout=5)  # as soon as the holder lets go
    lock.release()
    holder.join(5)
    assert not lock.locked()


def test_os_event_wakes_a_waiter_and_times_out():
    event = OsEvent()
    assert event.wait(0.05) is False
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(event.wait(5)))
    waiter.start()
    time.sleep(0.05)
    event.set()
    waiter.join(5)
    assert woke == [True] and event.is_set()
    event.clear()
    assert not event.is_set() and event.wait(0) is False


SHARED_LOCK_UNDER_GEVENT = """
from gevent import monkey; monkey.patch_all()
import time, gevent
from gevent.threadpool import ThreadPool
from vastpanel.scheduling import SharedLock
lock, inside, overlaps = SharedLock(), [0], []

def take(times):
    for i in range(times):
        with lock:
            inside[0] += 1
            if inside[0] != 1:
                overlaps.append(inside[0])
            if i % 10 == 0:
                time.sleep(0)  # a greenlet switch while holding it, as I/O under the lock does
            inside[0] -= 1

natives = [ThreadPool(1).spawn(take, 20000) for _ in range(3)]
gevent.joinall([gevent.spawn(take, 20000) for _ in range(5)])
for native in natives:
    native.get()
print("overlaps", len(overlaps))
"""


def test_under_gevent_a_shared_lock_excludes_across_threads_and_greenlets():
    """3 native threads and 5 greenlets, 20,000 turns each, switching while they hold it."""
    assert "overlaps 0" in run_patched(SHARED_LOCK_UNDER_GEVENT)


LOOKS_BESIDE_REQUESTS = """
from gevent import monkey; monkey.patch_all()
import logging, os, time
import gevent
from vastpanel import create_app
os.environ.update(VAST_DB_PATH=os.path.join({tmp!r}, "g.db"), CONTROL_API_KEY="k" * 20)
app = create_app()
log = logging.getLogger("vastpanel.stress")
watchdog = app.extensions["vastpanel_watchdog"]
scheduler = watchdog.scheduler.scheduler
looks = []

def look():  # the watchdog's look, its lock, logging and metrics, on a native runner
    watchdog._run_look()
    looks.append(1)
    log.info("look")

for i in range(3):
    scheduler.add_job(look, "interval", seconds=0.01, id=f"look{{i}}")
end = time.monotonic() + {seconds}
served = []

def client():  # /healthz asks the scheduler for its job; /metrics reads what looks count
    http = app.test_client()
    while time.monotonic() < end:
        for path in ("/healthz", "/metrics"):
            http.get(path)
        log.info("request")
        served.append(1)

gevent.joinall([gevent.spawn(client) for _ in range(10)])
for i in range(3):
    scheduler.remove_job(f"look{{i}}")
watchdog.shutdown()
print("looks", len(looks), "requests", len(served))
"""


def test_under_gevent_looks_beside_requests_never_hang(tmp_path):
    """Looks every 10 ms on 3 native threads, 10 greenlets calling the app, for 4 s.

    While they shared gevent's locks, 7 of 20 runs of this script (two at a time) hung; with OS
    locks and SharedLocks, 0 of 20.
    """
    started = time.monotonic()
    out = run_patched(LOOKS_BESIDE_REQUESTS.format(tmp=str(tmp_path), seconds=4))
    looks, requests = int(out.split()[1]), int(out.split()[3])
    assert looks > 50 and requests > 50, out
    assert time.monotonic() - started < 30
