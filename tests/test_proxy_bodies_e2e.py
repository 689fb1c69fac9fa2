"""/v1/ request bodies against the production server (issue 23 §8, §12): many clients posting
large bodies during a long cold start leave the worker's memory flat (the bodies wait unread in
the sockets, to be streamed once the LLM is up), and a chunked body past 32 MiB is 413, never
cut short and forwarded."""

from __future__ import annotations

import http.client
import socket
import threading
import time

import pytest

from support.hostile_instance import vm_kib, worker_pids
from support.liveserver import PanelProcess, instant_simulator, running_simulator, simulator_env

pytestmark = pytest.mark.e2e

SIM_KEY = "bodies-sim-key-0123456789abcdef"
CONTROL_KEY = "bodies-control-key-0123456789abcdef"
LLM_KEY = "bodies-team-key-0123456789abcdef"
INSTANCE_ID = 6161
CLIENTS = 40
BODY_BYTES = 8 * 1024 * 1024
SEND_FOR_S = 8.0  # each client sends what the panel takes in this time, then waits
# An idle worker is about 50 MB; 40 bodies of 8 MiB read whole would be 320 MiB more.
PEAK_BOUND_KIB = 120 * 1024


def post_large_body(port: int, sockets: list[socket.socket], sent: list[int]) -> None:
    """Open a /v1/ request with an 8 MiB body and send what the panel reads within SEND_FOR_S."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sockets.append(sock)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: panel\r\n"
        f"Authorization: Bearer {LLM_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {BODY_BYTES}\r\n\r\n"
    )
    sock.sendall(head.encode())
    piece = b"x" * (256 * 1024)
    total, ends = 0, time.monotonic() + SEND_FOR_S
    sock.settimeout(0.5)
    while total < BODY_BYTES and time.monotonic() < ends:
        try:
            total += sock.send(piece[: BODY_BYTES - total])
        except TimeoutError:
            continue  # the panel is not reading: the socket's buffers are full
        except OSError:
            break
    sent.append(total)


def test_large_bodies_waiting_for_a_cold_start_leave_the_workers_memory_flat(tmp_path):
    with instant_simulator(SIM_KEY, INSTANCE_ID, load_delay=300, clock=time.time) as sim:
        env = simulator_env(
            sim,
            tmp_path / "panel.db",
            CONTROL_KEY,
            LLM_API_KEYS=LLM_KEY,
            VAST_PROXY_WAIT_S="20",
            VAST_STATUS_TTL_S="1",
        )
        panel = PanelProcess(env, log_path=tmp_path / "panel.log")
        sockets: list[socket.socket] = []
        sent: list[int] = []
        try:
            (worker,) = worker_pids(panel)
            idle_kib = vm_kib(worker, "VmRSS")
            clients = [
                threading.Thread(target=post_large_body, args=(panel.port, sockets, sent))
                for _ in range(CLIENTS)
            ]
            for client in clients:
                client.start()
            for client in clients:
                client.join(SEND_FOR_S + 30)
            waiting = panel.api("GET", "/status").json()
            peak_kib = vm_kib(worker, "VmHWM")
        finally:
            for sock in sockets:
                sock.close()
            panel.stop()
    assert len(sent) == CLIENTS
    assert peak_kib < PEAK_BOUND_KIB, (idle_kib, peak_kib, sum(sent))
    assert peak_kib - idle_kib < 64 * 1024, (idle_kib, peak_kib, sum(sent))
    assert waiting["status"] in ("scheduling", "loading")  # the requests started the instance


def test_a_chunked_body_over_32_mib_is_413_and_no_completion_is_made(tmp_path):
    with running_simulator(SIM_KEY, INSTANCE_ID) as sim:
        env = simulator_env(sim, tmp_path / "panel.db", CONTROL_KEY, LLM_API_KEYS=LLM_KEY)
        panel = PanelProcess(env, log_path=tmp_path / "panel.log")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", panel.port, timeout=60)
            piece = b" " * (1024 * 1024)
            body = (piece for _ in range(33))  # 33 MiB of JSON whitespace, in 1 MiB chunks
            headers = {"Authorization": f"Bearer {LLM_KEY}", "Content-Type": "application/json"}
            connection.request(
                "POST", "/v1/chat/completions", body=body, headers=headers, encode_chunked=True
            )
            answer = connection.getresponse()
            status, text = answer.status, answer.read()
            connection.close()
        finally:
            panel.stop()
        completions = [r for r in sim.llm_requests("POST") if r["status"] == 200]
    assert status == 413, text
    assert b"request_entity_too_large" in text
    assert completions == []
