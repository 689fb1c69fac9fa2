"""Slow request bodies against the production server (issue 23 §2): many sockets each send a
POST's headers, `Content-Length: 60000`, and never the body, while the LLM gateway posts
/infra/vast/activity. Shared by tests/test_hostile_clients.py and bench/slow_bodies.py.

The sockets come from 127.0.0.2 (any 127.0.0.x reaches a server on 127.0.0.1), which is not a
listed proxy, so the server's bound on connections per client applies to them; the gateway
posts from 127.0.0.1. Every loop is bounded in count and in time.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

import requests

from support.liveserver import PanelProcess

ATTACKER = "127.0.0.2"
UNSENT_BODY = (
    b"POST /signin HTTP/1.1\r\nHost: panel\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 60000\r\n\r\n"
)
GATEWAY_TIMEOUT_S = 5.0  # the gateway gave up after 5 s
GATEWAY_PAUSE_S = 0.05
MAX_POSTS = 1000


@dataclass
class SlowBodies:
    """What happened to the sockets and to the gateway's posts meanwhile."""

    sockets: int
    closed_after: list[float] = field(default_factory=list)  # s from its headers to its close
    latencies: list[float] = field(default_factory=list)  # the gateway's posts; errors count 5 s
    errors: int = 0

    @property
    def still_open(self) -> int:
        return self.sockets - len(self.closed_after)

    @property
    def closed_at_once(self) -> int:
        """Sockets the server closed within a second (over the bound per client)."""
        return sum(1 for t in self.closed_after if t < 1.0)

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[max(0, -(-99 * len(ordered) // 100) - 1)] if ordered else float("nan")


def open_unsent_bodies(
    port: int, count: int, source: str = ATTACKER
) -> list[tuple[socket.socket, float]]:
    """Open count sockets from source, each sending UNSENT_BODY's headers; return each with
    when its headers went (a socket the server already closed is returned all the same)."""
    opened = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        try:
            sock.sendall(UNSENT_BODY)
        except OSError:
            pass  # closed by the server already: the watcher sees it at once
        opened.append((sock, time.monotonic()))
    return opened


def watch_closes(
    opened: list[tuple[socket.socket, float]], until: float, result: SlowBodies
) -> None:
    """Note, for each socket, how long after its headers the server closed it (EOF or reset)."""
    selector = selectors.DefaultSelector()
    for sock, sent_at in opened:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, sent_at)
    open_count = len(opened)
    while open_count and time.monotonic() < until:
        for key, _ in selector.select(timeout=0.1):
            sock = key.fileobj
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""  # reset by the server: closed
            if data:
                continue  # an answer; its end comes with the close
            result.closed_after.append(time.monotonic() - key.data)
            selector.unregister(sock)
            open_count -= 1
    selector.close()


def post_activity(url: str, key: str, duration_s: float, result: SlowBodies) -> None:
    """Post /infra/vast/activity every GATEWAY_PAUSE_S for duration_s, each on a new connection
    (as a gateway without keep-alive, the case that needs the server to accept)."""
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline and len(result.latencies) < MAX_POSTS:
        started = time.perf_counter()
        try:
            answer = requests.post(
                url + "/infra/vast/activity",
                json={},
                headers={"X-API-Key": key, "Connection": "close"},
                timeout=GATEWAY_TIMEOUT_S,
            )
            ok = answer.status_code == 200
        except requests.RequestException:
            ok = False
        took = time.perf_counter() - started
        if not ok:
            result.errors += 1
            took = max(took, GATEWAY_TIMEOUT_S)
        result.latencies.append(took)
        time.sleep(GATEWAY_PAUSE_S)


def slow_bodies(server: PanelProcess, sockets: int, bound_s: float) -> SlowBodies:
    """Open the sockets, then post activity for the bound and a little more; watch the closes
    until the bound and 5 s more have passed."""
    result = SlowBodies(sockets)
    opened = open_unsent_bodies(server.port, sockets)
    try:
        watcher = threading.Thread(
            target=watch_closes,
            args=(opened, opened[-1][1] + bound_s + 5, result),
            daemon=True,
        )
        watcher.start()
        post_activity(server.url, server.control_key, bound_s + 2, result)
        watcher.join(bound_s + 15)
    finally:
        for sock, _ in opened:
            sock.close()
    return result
