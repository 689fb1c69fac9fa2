"""A hostile load that used to starve the server, shared by tests/test_starvation.py and
bench/starvation.py.

Against a running production server and the simulator, all at once: idle half-open connections
(a socket that sent `GET /healthz HTTP/1.1\\r\\n` and nothing more; one the server closes is
opened again), clients posting wrong keys to /signin, each from its own loopback address
(127.0.0.x), once a second at its own random phase (as in the issue, where each wrong key held
its thread for 1 s), and power-ons waiting for health while the start is queued (the
simulator's GPU is taken). Meanwhile the LLM gateway (127.0.0.1, the right key) posts /infra/vast/activity and
/healthz is probed. Then the GPU is freed and the waiting power-ons must all end healthy.
Every loop is bounded by a count and a deadline; every request has a timeout.
"""

from __future__ import annotations

import collections
import random
import select
import socket
import threading
import time
from dataclasses import dataclass, field

import requests
from requests.adapters import HTTPAdapter

from support import wait_for
from support.liveserver import TOKEN

HALF_OPEN_REQUEST = b"GET /healthz HTTP/1.1\r\n"
TARGET_P99_S = 0.100
GUESSER_FIRST_ADDRESS = 10  # guessers send from 127.0.0.10, 127.0.0.11, ...


class SourceAddressAdapter(HTTPAdapter):
    """Send from a chosen local address (any 127.0.0.x reaches a server on 127.0.0.1)."""

    def __init__(self, source: str):
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


@dataclass
class StarvationReport:
    """What the gateway saw while the hostile load was on, and what the load did."""

    activity_s: list[float] = field(default_factory=list)  # answered 200
    activity_errors: list[str] = field(default_factory=list)
    healthz_s: list[float] = field(default_factory=list)  # answered 200
    healthz_errors: list[str] = field(default_factory=list)
    half_open_fewest: int = 0  # the fewest half-open sockets open at once while measuring
    half_open_reopened: int = 0  # closed by the server (after its header timeout), reopened
    sign_in_answers: collections.Counter = field(default_factory=collections.Counter)
    power_ons_waiting: int = 0  # still unanswered when the measurement ended
    power_on_answers: list[str] = field(default_factory=list)  # after the GPU was freed
    measured_s: float = 0.0

    @staticmethod
    def _ms(values: list[float], p: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[max(0, -(-len(ordered) * p // 100) - 1)] * 1000

    def activity_ms(self, p: float) -> float:
        """Return the p-th percentile of the answered activity posts, in ms."""
        return self._ms(self.activity_s, p)

    def healthz_ms(self, p: float) -> float:
        """Return the p-th percentile of the answered /healthz probes, in ms."""
        return self._ms(self.healthz_s, p)

    def lines(self) -> list[str]:
        """Return the figures, one line each."""
        posts = len(self.activity_s) + len(self.activity_errors)
        probes = len(self.healthz_s) + len(self.healthz_errors)
        return [
            f"/activity under the hostile load: {posts} posts in {self.measured_s:.1f} s, "
            f"p50 {self.activity_ms(50):.1f} ms, p99 {self.activity_ms(99):.1f} ms, "
            f"max {self.activity_ms(100):.1f} ms, errors {len(self.activity_errors)} "
            f"{self.activity_errors[:3]}",
            f"/healthz: {len(self.healthz_s)} of {probes} probes answered 200, "
            f"p50 {self.healthz_ms(50):.1f} ms, max {self.healthz_ms(100):.1f} ms "
            f"{self.healthz_errors[:3]}",
            f"half-open connections: {self.half_open_fewest} held at once while measuring (the "
            f"fewest after each refill); {self.half_open_reopened} closed by the server (after "
            "its 5 s header timeout) and reopened",
            f"wrong-key sign-ins answered: {dict(sorted(self.sign_in_answers.items()))}",
            f"power-ons waiting for health at the end: {self.power_ons_waiting}; "
            f"after the GPU was freed: {dict(collections.Counter(self.power_on_answers))}",
            f"ratio p99/{TARGET_P99_S * 1000:.0f} ms: {self.activity_ms(99) / 1000 / TARGET_P99_S:.3f}"
            " (target < 1)",
        ]


def timed(send, latencies: list[float], errors: list[str]) -> None:
    """Send one request; note its latency when it answered 200, else what went wrong."""
    sent = time.perf_counter()
    try:
        answer = send()
    except requests.RequestException as exc:
        errors.append(type(exc).__name__)
        return
    if answer.status_code == 200:
        latencies.append(time.perf_counter() - sent)
    else:
        errors.append(str(answer.status_code))


class HalfOpenSockets:
    """Hold `count` sockets that sent an unfinished request; reopen those the server closes."""

    def __init__(self, host: str, port: int, count: int):
        self.address = (host, port)
        self.count = count
        self.sockets: list[socket.socket] = []
        self.reopened = 0
        self.fewest: int | None = None
        self._lock = threading.Lock()

    def _open(self) -> socket.socket | None:
        try:
            sock = socket.create_connection(self.address, timeout=5)
            sock.sendall(HALF_OPEN_REQUEST)
            return sock
        except OSError:
            return None

    def fill(self) -> None:
        """Open sockets until `count` are held (each attempt bounded by its timeout)."""
        with self._lock:
            for _ in range(self.count - len(self.sockets)):
                sock = self._open()
                if sock is not None:
                    self.sockets.append(sock)

    def tend(self, measuring: bool) -> None:
        """Drop the sockets the server closed, note how many were still held, and refill."""
        with self._lock:
            readable, _, _ = (
                select.select(self.sockets, [], [], 0) if self.sockets else ([], [], [])
            )
            for sock in readable:
                try:
                    data = sock.recv(4096, socket.MSG_DONTWAIT)
                except OSError:
                    data = b""
                if not data:  # closed by the server; an answer would also end its wait
                    sock.close()
                    self.sockets.remove(sock)
                    self.reopened += 1
        self.fill()
        if measuring:
            with self._lock:
                held = len(self.sockets)
                self.fewest = held if self.fewest is None else min(self.fewest, held)

    def close(self) -> None:
        with self._lock:
            for sock in self.sockets:
                sock.close()
            self.sockets.clear()


def run_starvation(
    server,
    sim,
    *,
    half_open: int = 100,
    guessers: int = 50,
    power_ons: int = 20,
    posts: int = 300,
    pause_s: float = 0.02,
    guess_every_s: float = 1.0,
    max_measure_s: float = 60.0,
    settle_s: float = 3.0,
) -> StarvationReport:
    """Put the hostile load on the server, measure the gateway's calls, then free the GPU."""
    report = StarvationReport()
    base = server.url
    host, port = "127.0.0.1", server.port
    headers = {"X-API-Key": server.control_key}
    stop = threading.Event()
    lock = threading.Lock()

    # The GPU is taken: a start stays queued (scheduling) until the fault is cleared.
    sim.add_fault("resources_unavailable")

    held = HalfOpenSockets(host, port, half_open)
    held.fill()

    def guesser(index: int) -> None:
        session = requests.Session()
        session.mount("http://", SourceAddressAdapter(f"127.0.0.{GUESSER_FIRST_ADDRESS + index}"))
        try:
            token = TOKEN.search(session.get(base + "/signin", timeout=30).text).group(1)
            # Independent clients do not arrive in step: each starts at a random moment.
            stop.wait(random.uniform(0, guess_every_s))
            for attempt in range(1000):
                if stop.is_set():
                    break
                try:
                    answer = session.post(
                        base + "/signin",
                        data={"csrf_token": token, "key": f"guess-{index}-{attempt}"},
                        allow_redirects=False,
                        timeout=30,
                    )
                    outcome = str(answer.status_code)
                except requests.RequestException as exc:
                    outcome = type(exc).__name__
                with lock:
                    report.sign_in_answers[outcome] += 1
                stop.wait(guess_every_s)
        except (requests.RequestException, AttributeError) as exc:
            with lock:
                report.sign_in_answers[f"no sign-in page: {type(exc).__name__}"] += 1
        finally:
            session.close()

    answered: list[str] = []

    def power_on() -> None:
        try:
            answer = requests.post(
                base + "/infra/vast/power/on",
                json={"wait_for_health": True},
                headers=headers,
                timeout=max_measure_s + settle_s + 120,
            )
            outcome = f"{answer.status_code} {answer.json().get('message', '')[:60]}"
        except (requests.RequestException, ValueError) as exc:
            outcome = type(exc).__name__
        with lock:
            answered.append(outcome)

    threads = [threading.Thread(target=guesser, args=(i,), daemon=True) for i in range(guessers)]
    waiters = [threading.Thread(target=power_on, daemon=True) for _ in range(power_ons)]
    for thread in threads + waiters:
        thread.start()

    def tender() -> None:
        while not stop.is_set():
            held.tend(measuring=measuring.is_set())
            stop.wait(0.1)

    measuring = threading.Event()
    tending = threading.Thread(target=tender, daemon=True)
    tending.start()
    time.sleep(settle_s)  # every hostile client has started; the power-ons are waiting

    def probe_healthz() -> None:
        with requests.Session() as session:
            while measuring.is_set():
                timed(lambda: session.get(base + "/healthz", timeout=5), report.healthz_s,
                      report.healthz_errors)  # fmt: skip
                time.sleep(0.5)

    measuring.set()
    prober = threading.Thread(target=probe_healthz, daemon=True)
    prober.start()
    started = time.monotonic()
    url = base + "/infra/vast/activity"
    with requests.Session() as gateway:
        for _ in range(posts):
            if time.monotonic() - started > max_measure_s:
                break
            timed(
                lambda: gateway.post(url, json={}, headers=headers, timeout=10),
                report.activity_s,
                report.activity_errors,
            )
            time.sleep(pause_s)
    report.measured_s = time.monotonic() - started
    measuring.clear()
    prober.join(10)
    with lock:
        report.power_ons_waiting = power_ons - len(answered)
    stop.set()
    tending.join(10)
    report.half_open_fewest = held.fewest or 0
    report.half_open_reopened = held.reopened
    held.close()
    for thread in threads:
        thread.join(35)

    # The GPU is free again: the queued start proceeds and every waiting power-on ends healthy.
    sim.clear_faults()
    wait_for(lambda: len(answered) == power_ons, timeout=90, every=0.2)
    with lock:
        report.power_on_answers = list(answered)
    return report
