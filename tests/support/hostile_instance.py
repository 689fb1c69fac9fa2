"""A hostile instance on 127.0.0.1: answers every request, but slowly, endlessly or hugely.

Modes (for every path: health, metrics, heartbeat, /v1/):
- "trickle": a 200 announcing `length` bytes, then one byte every `every_s`;
- "trickle_headers": the status line, then the headers one byte every `every_s`;
- "flood": a 200 announcing `flood_bytes`, sent as fast as the client reads.
Every connection is served for at most `limit_s`, and all end when the server stops.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time

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
