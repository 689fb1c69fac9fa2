"""A load with faults, shared by tests/test_reliability_load.py and bench/load_with_faults.py.

Many activity posters, a signed-in page that polls its widgets, and the simulated vast.ai
answering a share of its calls with 500, 429 or garbage, against a running production server.
Every loop is bounded by its deadline and stops by itself.
"""

from __future__ import annotations

import math
import multiprocessing
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field

import requests

from support import wait_for
from support.liveserver import signed_in_session

PAGE_PARTIALS = ("/partials/status", "/partials/costs", "/partials/audit")
# Each watchdog look renews its lease until look time + 2.5 intervals (vastpanel/watchdog.py),
# so the lease tells when the last look was, whenever it is read.
LEASE_TTL_INTERVALS = 2.5
FAULTS = (
    ("response", {"status": 500, "body": {"error": "internal"}}),
    ("rate_limit", {}),
    ("html", {"status": 200}),  # a proxy's HTML page where JSON should be: garbage
)


def queue_faults(sim, calls: int, every: int = 10, seed: int = 7) -> list[str]:
    """Queue one fault or pass-through per coming vast.ai call; return the plan, in order.

    Each run of `every` calls holds exactly one fault (500, 429 or garbage) at a random place.
    The simulator takes its faults first in first out, one per matching call; a "slow" fault
    with no delay answers normally, so it stands for a call that goes through ("ok").
    """
    rng = random.Random(seed)
    plan = []
    for _ in range(calls // every):
        block = ["ok"] * every
        block[rng.randrange(every)] = "fault"
        plan.extend(block)
    for i, entry in enumerate(plan):
        if entry == "ok":
            sim.add_fault("slow", count=1, delay=0.0)
        else:
            kind, options = rng.choice(FAULTS)
            sim.add_fault(kind, count=1, **options)
            plan[i] = kind
    return plan


def faults_served(sim, plan: list[str]) -> tuple[int, int]:
    """Return how many planned calls vast.ai has answered so far, and how many were faults."""
    served = len(plan) - len(sim.state()["faults"])
    return served, sum(kind != "ok" for kind in plan[:served])


@dataclass
class FaultLoadReport:
    """What the load saw; the counts that must stay zero are named *_5xx, *_errors, backwards."""

    seconds: float = 0.0
    activity_ok: int = 0
    activity_5xx: int = 0
    activity_errors: list[str] = field(default_factory=list)  # other failures, a few kept
    activity_error_count: int = 0
    answered_backwards: int = 0  # a poster saw last_activity earlier than its previous answer
    stored_backwards: int = 0  # the stored last_activity went down between two reads
    page_polls: int = 0
    page_5xx: int = 0
    healthz_checks: int = 0
    healthz_not_ok: list[str] = field(default_factory=list)
    watchdog_renewals: int = 0  # times the watchdog lease was seen renewed (at most one per look)
    longest_look_gap_s: float = 0.0  # the longest time seen since the watchdog's last look
    watchdog_lapsed: int = 0  # reads that found the watchdog lease expired
    books_reads: int = 0  # how often the database was read for the three above
    upstream_calls: int = 0  # filled in by the caller, from faults_served
    upstream_failed: int = 0

    def lines(self) -> list[str]:
        """Describe the run for people."""
        rate = self.activity_ok / self.seconds if self.seconds else 0.0
        return [
            f"activity: {self.activity_ok} answered 200 ({rate:.0f}/s over {self.seconds:.1f} s), "
            f"{self.activity_5xx} 5xx, {self.activity_error_count} other errors",
            f"last_activity backwards: {self.answered_backwards} in answers, "
            f"{self.stored_backwards} in the database",
            f"page polls: {self.page_polls}, 5xx: {self.page_5xx}",
            f"/healthz: {self.healthz_checks} checks, not 200+alive: {len(self.healthz_not_ok)}",
            f"watchdog lease seen renewed {self.watchdog_renewals} times, never more than "
            f"{self.longest_look_gap_s:.2f} s after a look, seen lapsed {self.watchdog_lapsed} "
            f"times ({self.books_reads} reads)",
            f"vast.ai calls: {self.upstream_calls}, answered with a fault: {self.upstream_failed}",
        ]


def run_fault_load(
    server,
    sim,
    db_path: str,
    *,
    posters: int,
    seconds: float,
    watchdog_interval_s: float,
    page_every_s: float = 0.5,
) -> FaultLoadReport:
    """Post activity from `posters` threads for `seconds` while the page polls; report it.

    The database is read throughout (watch_books) for last_activity and the watchdog's lease.
    """
    lease_ttl = LEASE_TTL_INTERVALS * watchdog_interval_s
    report = FaultLoadReport()
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + seconds
    headers = {"X-API-Key": server.control_key}
    sim.clear_requests()

    def poster() -> None:
        previous = ""
        with requests.Session() as session:
            while time.monotonic() < deadline:
                try:
                    answer = session.post(
                        server.url + "/infra/vast/activity", headers=headers, timeout=30
                    )
                except requests.RequestException as exc:
                    with lock:
                        report.activity_error_count += 1
                        report.activity_errors.append(type(exc).__name__)
                    continue
                with lock:
                    if answer.status_code == 200:
                        report.activity_ok += 1
                        last = answer.json()["last_activity"]  # ISO text sorts as time
                        report.answered_backwards += last < previous
                        previous = max(previous, last)
                    elif answer.status_code >= 500:
                        report.activity_5xx += 1
                    else:
                        report.activity_error_count += 1
                        report.activity_errors.append(f"{answer.status_code} {answer.text[:80]}")

    threads = [threading.Thread(target=poster) for _ in range(posters)]
    # The database, the page and /healthz are watched from processes of their own: among
    # hundreds of posting threads, a thread of this process gets the GIL too seldom (a sign-in
    # was seen to take the whole run).
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    watchers = [
        context.Process(target=watch_books, args=(db_path, lease_ttl, deadline, results)),
        context.Process(
            target=watch_page,
            args=(server.url, server.control_key, deadline, page_every_s, results),
        ),
    ]
    for watcher in watchers:
        watcher.daemon = True
        watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    report.seconds = time.monotonic() - start
    for _ in watchers:
        for name, value in results.get(timeout=60).items():
            setattr(report, name, value)
    for watcher in watchers:
        watcher.join(10)
    return report


def watch_page(url: str, key: str, deadline: float, page_every_s: float, results) -> None:
    """Poll the page's partials (signed in) and /healthz until the (monotonic) deadline.

    Runs in its own process; puts the FaultLoadReport fields it measured on the results queue.
    """
    found = {"page_polls": 0, "page_5xx": 0, "healthz_checks": 0, "healthz_not_ok": []}
    lock = threading.Lock()

    def page() -> None:
        with signed_in_session(url, key) as session:
            while time.monotonic() < deadline:
                for path in PAGE_PARTIALS:
                    code = session.get(url + path, timeout=30).status_code
                    with lock:
                        found["page_polls"] += 1
                        found["page_5xx"] += code >= 500
                time.sleep(page_every_s)

    def liveness() -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                health = session.get(url + "/healthz", timeout=30)
                with lock:
                    found["healthz_checks"] += 1
                    if health.status_code != 200 or health.json().get("watchdog") != "alive":
                        found["healthz_not_ok"].append(f"{health.status_code} {health.text[:120]}")
                time.sleep(0.25)

    threads = [threading.Thread(target=f) for f in (page, liveness)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        results.put(found)


def watch_books(db_path: str, lease_ttl: float, deadline: float, results) -> None:
    """Read last_activity and the watchdog's lease every 0.1 s until the (monotonic) deadline.

    Runs in its own process; puts the FaultLoadReport fields it measured on the results queue.
    """
    found = {
        "stored_backwards": 0,
        "watchdog_renewals": 0,
        "watchdog_lapsed": 0,
        "longest_look_gap_s": 0.0,
        "books_reads": 0,
    }
    stored, lease = None, None
    db = sqlite3.connect(db_path, timeout=10)
    try:
        while time.monotonic() < deadline:
            seen = time.time()  # before the reads: what they return is at least this new
            value = db.execute("SELECT value FROM state WHERE key = 'last_activity'").fetchone()
            row = db.execute("SELECT expires_at FROM leases WHERE name = 'watchdog'").fetchone()
            found["books_reads"] += 1
            if value is not None:
                found["stored_backwards"] += stored is not None and value[0] < stored
                stored = value[0]
            if row is not None:
                found["watchdog_renewals"] += lease is not None and row[0] > lease
                found["watchdog_lapsed"] += row[0] < seen
                since_look = seen - (row[0] - lease_ttl)
                found["longest_look_gap_s"] = max(found["longest_look_gap_s"], since_look)
                lease = row[0]
            time.sleep(0.1)
    finally:
        db.close()
        results.put(found)


# --- an outage of vast.ai while the instance is idle -------------------------------------------


def audit_events(db_path: str) -> list[str]:
    """Return the audit log's event names, oldest first, read from the SQLite file."""
    db = sqlite3.connect(db_path, timeout=10)
    try:
        return [r[0] for r in db.execute("SELECT event FROM audit ORDER BY id")]
    finally:
        db.close()


@dataclass
class OutageReport:
    """When the auto-stop went out, measured from vast.ai's return, and how often it was audited."""

    outage_s: float
    interval_s: float
    overdue_at_return_s: float  # how long past the idle deadline vast.ai came back
    stop_after_return_s: float | None  # None: no stop was sent
    stops_sent: int
    events: list[str]

    def lines(self) -> list[str]:
        """Describe the run for people."""
        after = self.stop_after_return_s
        shown = "never" if after is None else f"{after:.2f} s"
        ratio = "-" if after is None else f"{after / self.interval_s:.3f}"
        return [
            f"vast.ai unreachable for {self.outage_s:.1f} s; back {self.overdue_at_return_s:.1f} s "
            f"after the idle deadline, just after a watchdog look",
            f"stop sent {shown} after vast.ai came back (watchdog interval "
            f"{self.interval_s:g} s): ratio {ratio} (target <= 1)",
            f"stops sent: {self.stops_sent}; audited auto_shutdown "
            f"{self.events.count('auto_shutdown')}, auto_shutdown_complete "
            f"{self.events.count('auto_shutdown_complete')}, auto_shutdown_failed "
            f"{self.events.count('auto_shutdown_failed')}",
        ]


def run_outage(
    sim,
    db_path: str,
    *,
    outage_s: float,
    interval_s: float,
    idle_s: float,
    after_look_s: float = 0.5,
) -> OutageReport:
    """With the session open and the instance running, take vast.ai away for about outage_s.

    The idle deadline passes during the outage. vast.ai comes back after_look_s after an
    interval look (the worst case: that look just failed, the next is a whole interval away);
    the looks run every interval from the start-up look, which opened the session. The report
    says when the stop arrived and what was audited, after two more intervals for a second stop.
    """
    started = wait_for(lambda: _open_session_start(db_path), timeout=interval_s + 10)
    assert started, "the watchdog never opened the session"
    paused = time.time()
    sim.pause()
    try:
        looks = math.ceil((paused + outage_s - started) / interval_s)
        time.sleep(max(0.0, started + looks * interval_s + after_look_s - time.time()))
    finally:
        sim.resume()
    back = time.monotonic()  # the simulator's request log reads this clock
    overdue = time.time() - (started + idle_s)
    outage_s = time.time() - paused

    def stops():
        puts = sim.requests(method="PUT")
        return [p for p in puts if (p.get("json") or {}).get("state") == "stopped"]

    sent = wait_for(stops, timeout=3 * interval_s + 10)
    time.sleep(2 * interval_s)  # room for a second, wrong stop
    return OutageReport(
        outage_s=outage_s,
        interval_s=interval_s,
        overdue_at_return_s=overdue,
        stop_after_return_s=sent[0]["time"] - back if sent else None,
        stops_sent=len(stops()),
        events=audit_events(db_path),
    )


def _open_session_start(db_path: str) -> float | None:
    db = sqlite3.connect(db_path, timeout=10)
    try:
        row = db.execute("SELECT started_at FROM sessions WHERE ended_at IS NULL").fetchone()
    except sqlite3.OperationalError:  # not migrated yet
        row = None
    finally:
        db.close()
    return row[0] if row else None
