"""Hostile clients against the production server (gunicorn with the repo's config and
vastpanel/serving.py's worker), all on 127.0.0.1 (issue 23 §2, §10, §12).

- Slow bodies: a request body must come within VASTPANEL_BODY_TIMEOUT_S (10 s) of waiting or
  the connection is closed, and one client address holds at most
  VASTPANEL_CONNECTIONS_PER_CLIENT connections; with 1,000 unsent bodies the gateway's
  /activity keeps answering (p99 < 1 s). bench/slow_bodies.py prints the same figures.
- A line feed in a path stays inside its access line.
- A chunked body over the limit is 413 through the real server.
"""

from __future__ import annotations

import re
import socket
import time

import pytest
import requests

from support.liveserver import PanelProcess
from support.slow_bodies import ATTACKER, slow_bodies

pytestmark = pytest.mark.e2e

CONTROL_KEY = "hostile-clients-key-0123456789"
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING|ERROR) \S+ .+$")
FORGED = "2024-05-01T12:00:00.000Z INFO vastpanel event=power_off_complete actor=api"


def start(tmp_path, **env: str) -> PanelProcess:
    return PanelProcess(
        {"CONTROL_API_KEY": CONTROL_KEY, "VAST_DB_PATH": str(tmp_path / "p.db"), **env},
        log_path=tmp_path / "server.log",
    )


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Wait for the server to close sock; return how long that took, or None."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except OSError:
        pass  # reset: closed too
    return time.monotonic() - started


@pytest.mark.xdist_group("heavy")
def test_a_thousand_unsent_bodies_neither_hold_the_server_nor_stay_open(tmp_path):
    server = start(tmp_path)
    try:
        result = slow_bodies(server, sockets=1000, bound_s=10)
        log = server.log()
    finally:
        server.stop()
    print(
        f"/activity p99 {result.p99() * 1000:.0f} ms over {len(result.latencies)} posts, "
        f"{result.errors} errors; {result.closed_at_once} sockets closed at once, the last "
        f"after {max(result.closed_after, default=float('inf')):.1f} s; {result.still_open} still open"
    )
    assert result.errors == 0 and result.p99() < 1.0, (result.p99(), result.errors)
    assert len(result.latencies) >= 50
    assert result.still_open == 0
    assert max(result.closed_after) < 10 + 2  # the bound, and a loaded machine's slack
    # 100 held until the bound, the 900 others closed as they came.
    assert result.closed_at_once >= 850, sorted(result.closed_after)[::100]
    assert sum(1 for t in result.closed_after if t > 9) >= 90
    assert f"{ATTACKER} holds 100 connections, the most one client may" in log
    assert "its request body did not come within 10 s" in log


def test_a_trickling_body_is_cut_at_the_bound_and_a_slow_one_within_it_is_served(tmp_path):
    server = start(tmp_path, VASTPANEL_BODY_TIMEOUT_S="2")
    try:
        trickle = socket.create_connection(("127.0.0.1", server.port))
        head = (
            "POST /infra/vast/activity HTTP/1.1\r\nHost: panel\r\n"
            f"X-API-Key: {CONTROL_KEY}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n{"
        )
        trickle.sendall(head.encode())
        started = time.monotonic()
        closed = False
        for _ in range(20):  # a byte every 0.3 s: no single wait is long, their sum is
            time.sleep(0.3)
            try:
                trickle.sendall(b" ")
            except OSError:
                closed = True
                break
        took = time.monotonic() - started
        assert closed or closed_within(trickle, 3) is not None
        assert 1.8 < took < 4.5, took
        trickle.close()
        # Two parts 1 s apart: within the bound, served.
        slow = socket.create_connection(("127.0.0.1", server.port))
        slow.sendall(head.replace("Content-Length: 100", "Content-Length: 2").encode())
        time.sleep(1.0)
        slow.sendall(b"}")
        slow.settimeout(10)
        assert slow.recv(64).startswith(b"HTTP/1.1 200 ")
        slow.close()
        log = server.log()
    finally:
        server.stop()
    assert "its request body did not come within 2 s" in log


def test_one_client_holds_at_most_its_share_of_connections_and_a_proxy_is_exempt(tmp_path):
    server = start(tmp_path, VASTPANEL_CONNECTIONS_PER_CLIENT="5")
    held: list[socket.socket] = []
    try:
        for source in (ATTACKER, "127.0.0.1"):  # a stranger, then the listed proxy's address
            for _ in range(5):
                sock = socket.socket()
                sock.bind((source, 0))
                sock.connect(("127.0.0.1", server.port))
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: panel\r\n")  # never finished
                held.append(sock)
        time.sleep(0.5)
        extra = socket.socket()
        extra.bind((ATTACKER, 0))
        extra.connect(("127.0.0.1", server.port))
        assert closed_within(extra, 2) is not None  # the stranger's sixth: closed at once
        extra.close()
        # The proxy's sixth is served, and so is another client meanwhile.
        proxy = requests.get(server.url + "/healthz", timeout=5)
        assert proxy.status_code == 200
        other = socket.socket()
        other.bind(("127.0.0.3", 0))
        other.connect(("127.0.0.1", server.port))
        other.sendall(b"GET /healthz HTTP/1.1\r\nHost: panel\r\nConnection: close\r\n\r\n")
        other.settimeout(5)
        assert other.recv(64).startswith(b"HTTP/1.1 200 ")
        other.close()
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_a_line_feed_in_a_path_stays_in_its_access_line(tmp_path):
    server = start(tmp_path)
    try:
        path = "/x%0a" + FORGED.replace(" ", "%20") + "%0d%0a%1b[2J"
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: panel\r\nConnection: close\r\n\r\n".encode()
            )
            sock.settimeout(10)
            assert sock.recv(64).startswith(b"HTTP/1.1 404 ")
        deadline = time.monotonic() + 10
        while "GET /x" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = server.log()
    finally:
        server.stop()
    lines = log.splitlines()
    assert all(LINE.match(line) for line in lines), log
    assert not [line for line in lines if line.startswith(FORGED)], log
    (access,) = [line for line in lines if "GET /x" in line]
    assert f"/x\\n{FORGED}\\r\\n\\x1b[2J" in access


def test_a_chunked_body_over_the_limit_is_413_through_the_server(tmp_path):
    server = start(tmp_path)
    try:

        def chunks(total: int):
            sent = 0
            yield b'{"x": "'
            while sent < total:
                yield b"x" * 8192
                sent += 8192
            yield b'"}'

        headers = {"X-API-Key": CONTROL_KEY, "Content-Type": "application/json"}
        big = requests.post(
            server.url + "/infra/vast/activity", data=chunks(100_000), headers=headers, timeout=10
        )
        assert big.status_code == 413, big.text
        small = requests.post(
            server.url + "/infra/vast/activity", data=chunks(8192), headers=headers, timeout=10
        )
        assert small.status_code == 200, small.text
    finally:
        server.stop()
