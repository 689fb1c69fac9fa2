"""A hostile instance on 127.0.0.1: answers every request, but slowly, endlessly or hugely.

Modes (for every path: health, metrics, heartbeat, /v1/):
- "trickle": a 200 announcing `length` bytes, then one byte every `every_s`;
- "trickle_headers": the status line, then the headers one byte every `every_s`;
- "flood": a 200 announcing `flood_bytes`, sent as fast as the client reads.
Every connection is served for at most `limit_s`, and all end when the server stops.

`idle_stop_against` is the scenario tests/test_hostile_instance_e2e.py and
bench/hostile_instance.py share: the production server stopping an idle instance whose port
answers like this.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from support import wait_for
from support.liveserver import PanelProcess, running_simulator, simulator_env

MODES = ("trickle", "trickle_headers", "flood")
FLOOD_PIECE = b"\0" * (1024 * 1024)


class HostileInstance:
    """The server; `port` to map the instance's container port to, `seen` the request lines."""

    def __init__(
        self,
        mode: str,
        *,
        every_s: float = 2.0,
        flood_bytes: int = 512 * 1024 * 1024,
        length: int = 1_000_000,
        limit_s: float = 60.0,
    ):
        assert mode in MODES, mode
        self.mode = mode
        self.every_s = every_s
        self.flood_bytes = flood_bytes
        self.length = length
        self.limit_s = limit_s
        self.seen: list[str] = []
        self.stopping = threading.Event()
        hostile = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                hostile._serve(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(5)
        head = b""
        try:
            while b"\r\n\r\n" not in head and len(head) < 65536:
                piece = sock.recv(4096)
                if not piece:
                    return
                head += piece
            self.seen.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
            ends = time.monotonic() + self.limit_s
            if self.mode == "flood":
                self._flood(sock, ends)
            elif self.mode == "trickle":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.length)
                self._trickle(sock, b"x" * self.length, ends)
            else:
                sock.sendall(b"HTTP/1.1 200 OK\r\n")
                self._trickle(sock, b"X-Slow: " + b"y" * 60000 + b"\r\n\r\n", ends)
        except OSError:
            pass  # the panel hung up: what it should do

    def _trickle(self, sock: socket.socket, data: bytes, ends: float) -> None:
        for byte in data:
            if self.stopping.wait(self.every_s) or time.monotonic() > ends:
                return
            sock.sendall(bytes([byte]))

    def _flood(self, sock: socket.socket, ends: float) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {self.flood_bytes}\r\n\r\n"
        sock.sendall(head.encode())
        sent = 0
        while sent < self.flood_bytes and not self.stopping.is_set() and time.monotonic() < ends:
            piece = FLOOD_PIECE[: self.flood_bytes - sent]
            sock.sendall(piece)
            sent += len(piece)

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> HostileInstance:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


# --- the scenario: an idle stop while the instance's port answers like this ----------------------

SIM_KEY = "hostile-sim-key-0123456789abcdef"
CONTROL_KEY = "hostile-control-key-0123456789abcdef"
AGENT_SECRET = "hostile-agent-secret-0123456789"
INSTANCE_ID = 5151


@dataclass(frozen=True)
class IdleStopOutcome:
    """How an idle stop went with a hostile instance: how late, and the worker's peak memory."""

    mode: str
    lateness_s: float | None  # after the idle deadline; None: no stop within the wait
    worker_peak_kib: int  # the highest VmHWM of a gunicorn worker
    requests_seen: int  # what the hostile instance was asked (health, metrics, heartbeats)


def idle_stop_against(
    mode: str,
    folder: Path,
    *,
    idle_s: float = 12.0,
    wait_s: float = 60.0,
    every_s: float = 2.0,
    flood_bytes: int = 512 * 1024 * 1024,
) -> IdleStopOutcome:
    """Run the production server against a running instance whose port 8001 is hostile.

    The panel reads the LLM's metrics there every look (every second) and sends the agent a
    heartbeat there; nothing else is active, so the idle stop falls due idle_s after the
    session opened. Waits at most wait_s past it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    hostile = HostileInstance(
        mode, every_s=every_s, flood_bytes=flood_bytes, limit_s=idle_s + wait_s + 30
    )
    with hostile, running_simulator(SIM_KEY, INSTANCE_ID, host_ports={8001: hostile.port}) as sim:
        env = simulator_env(
            sim,
            folder / "panel.db",
            CONTROL_KEY,
            VAST_AUTO_SHUTDOWN_MINUTES=str(idle_s / 60),
            VAST_WARN_MINUTES="0",
            VAST_WATCHDOG_INTERVAL_S="1",
            VAST_STATUS_TTL_S="0.5",
            VAST_METRICS_EVERY_S="1",
            VAST_AGENT_SECRET=AGENT_SECRET,
        )
        panel = PanelProcess(env, log_path=folder / "panel.log")
        peaks: dict[int, int] = {}  # per worker: one may be killed (gunicorn's timeout)

        def stopped() -> bool:
            for worker in worker_pids(panel):
                with contextlib.suppress(OSError, RuntimeError):  # a worker that just ended
                    peaks[worker] = vm_kib(worker, "VmHWM")
            return bool(sim.requests("PUT"))

        try:
            wait_for(stopped, idle_s + wait_s, 0.2)
        finally:
            panel.stop()
        with sqlite3.connect(folder / "panel.db") as db:
            (started_at,) = db.execute("SELECT started_at FROM sessions ORDER BY id").fetchone()
        db.close()
        puts = sim.requests("PUT")
        lateness = puts[0]["time"] - (started_at + idle_s) if puts else None
        return IdleStopOutcome(mode, lateness, max(peaks.values()), len(hostile.seen))


def worker_pids(panel: PanelProcess) -> list[int]:
    """Return the gunicorn workers of a panel process (its master's children)."""
    children: list[int] = []
    with contextlib.suppress(OSError):  # the master is gone
        for task in Path(f"/proc/{panel.process.pid}/task").iterdir():
            children.extend(int(c) for c in (task / "children").read_text().split())
    return sorted(children)


def vm_kib(pid: int, field: str) -> int:
    """Return a memory figure of a process from /proc (VmRSS, VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")
