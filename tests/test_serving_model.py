"""One serving model: under gevent (as in gunicorn's worker) the watchdog is greenlets.

The scripts run in a fresh interpreter that gevent patches first, as gunicorn's gevent worker
is, and must end well inside their timeout: a look beside requests never hangs, a look and a
request share one HTTP session, and no OS thread of ours runs in the worker.
"""

from __future__ import annotations

import subprocess
import sys
import time

from conftest import VAST_KEY
from support.liveserver import running_simulator
from vastpanel.simulator import LlmConfig


def run_patched(script: str, timeout: float = 60) -> str:
    """Run a script in a fresh interpreter (gevent patches it first); return its output."""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


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

def look():  # the watchdog's look, its lock, logging and metrics
    watchdog._run_look()
    looks.append(1)
    log.info("look")

for i in range(3):
    scheduler.add_job(look, "interval", seconds=0.01, id=f"look{{i}}")
give_up = time.monotonic() + {seconds}
served = []

def done():  # enough of both, or the time is up (a hang: the counts stay short)
    return (len(looks) > 50 and len(served) > 50) or time.monotonic() >= give_up

def client():  # /healthz asks the scheduler for its job; /metrics reads what looks count
    http = app.test_client()
    while not done():
        for path in ("/healthz", "/metrics"):
            http.get(path)
        log.info("request")
        served.append(1)
        gevent.sleep(0)  # a served request reads and writes its socket: the hub runs

gevent.joinall([gevent.spawn(client) for _ in range(10)])
for i in range(3):
    scheduler.remove_job(f"look{{i}}")
watchdog.shutdown()
print("looks", len(looks), "requests", len(served))
"""


def test_under_gevent_looks_beside_requests_never_hang(tmp_path):
    """Looks every 10 ms in 3 jobs, 10 greenlets calling the app, until each has run 50 times
    (a hang keeps them short of it until the 60 s are up): all greenlets."""
    started = time.monotonic()
    out = run_patched(LOOKS_BESIDE_REQUESTS.format(tmp=str(tmp_path), seconds=60), timeout=120)
    looks, requests = int(out.split()[1]), int(out.split()[3])
    assert looks > 50 and requests > 50, out
    assert time.monotonic() - started < 100


GREENLETS_ONLY = """
from gevent import monkey; monkey.patch_all()
import os, sys, threading, time
import gevent, requests
import vastpanel
from apscheduler.executors.gevent import GeventExecutor
from apscheduler.schedulers.gevent import GeventScheduler
from vastpanel import create_app
os.environ.update(
    VAST_DB_PATH=os.path.join({tmp!r}, "g.db"), CONTROL_API_KEY="k" * 20,
    VAST_URL={vast_url!r}, VAST_API_KEY={key!r}, VAST_INSTANCE_ID="1",
)
app = create_app()
watchdog = app.extensions["vastpanel_watchdog"]
scheduler = watchdog.scheduler.scheduler
assert isinstance(scheduler, GeventScheduler), type(scheduler)
assert all(isinstance(e, GeventExecutor) for e in scheduler._executors.values())
seen = []
look = watchdog.look
watchdog.look = lambda: (seen.append((threading.get_native_id(), gevent.getcurrent())), look())[1]
scheduler.add_job(watchdog._run_look, id="now")
http = app.test_client()
give_up = time.monotonic() + 20
while not seen and time.monotonic() < give_up:
    http.get("/healthz")  # requests go on while the look runs
    time.sleep(0.05)
assert seen, "no look ran"
native, greenlet = seen[0]
assert native == threading.get_native_id(), "the look ran on another OS thread"
assert greenlet is not gevent.getcurrent()
assert http.get("/infra/vast/status", headers={{"X-API-Key": "k" * 20}}).status_code == 200
assert watchdog.alive and watchdog.is_leader
# Every OS thread but this one must be gevent's own (its resolver's thread pool).
ours = os.path.dirname(vastpanel.__file__) + os.sep
this_thread = monkey.get_original("threading", "get_ident")()
for ident, frame in sys._current_frames().items():
    if ident == this_thread:
        continue
    files = []
    while frame is not None:
        files.append(frame.f_code.co_filename)
        frame = frame.f_back
    assert any("gevent" in f for f in files) and not any(f.startswith(ours) for f in files), files
watchdog.shutdown()
print("greenlets only, os threads:", len(sys._current_frames()))
"""


def test_under_gevent_the_watchdog_is_greenlets_and_no_os_thread_of_ours_runs(tmp_path):
    """As in gunicorn's gevent worker: patched first, then the app, which reads the simulator."""
    with running_simulator(VAST_KEY, 1) as sim:
        out = run_patched(GREENLETS_ONLY.format(tmp=str(tmp_path), vast_url=sim.url, key=VAST_KEY))
    assert "greenlets only" in out, out


ONE_SESSION = """
from gevent import monkey; monkey.patch_all()
import gevent, requests
url = {url!r}
chat = {{"messages": [{{"role": "user", "content": "hi"}}], "max_tokens": 2}}
http = requests.Session()  # one Session for the whole worker, as create_app makes it

def call():  # the answer takes 0.2 s (token_delay_s): the caller waits on its socket
    http.post(url, json=chat, timeout=5).close()
    return "ok"

look = gevent.spawn(call)  # a look leaves a kept-alive connection in the pool
look.join()
request = gevent.spawn(call)  # then a request reuses it
request.join()
both = [gevent.spawn(call) for _ in range(2)]  # and two at once
gevent.joinall(both)
print("look:", look.get(), "request:", request.get(), "together:", [g.get() for g in both])
"""


def test_under_gevent_a_look_and_a_request_share_one_session():
    """A kept-alive connection passes from a look's greenlet to a request's: one hub."""
    slow = LlmConfig(token_delay_s=0.1)
    with running_simulator(VAST_KEY, 1, llm=slow) as sim:  # its LLM keeps connections alive
        out = run_patched(ONE_SESSION.format(url=sim.llm_url + "/v1/chat/completions"))
    assert "look: ok request: ok together: ['ok', 'ok']" in out, out
