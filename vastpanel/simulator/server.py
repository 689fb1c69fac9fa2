"""A loopback WSGI server in a background thread that can go away and come back on its port."""

from __future__ import annotations

import threading
from typing import Any

from cheroot import wsgi
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

HOST = "127.0.0.1"


class QuietHandler(WSGIRequestHandler):
    """A request handler that does not print one line per request."""

    def log_request(self, code="-", size="-"):
        """Skip the access log; the simulator keeps its own request log."""


class ServerThread:
    """Serve one WSGI app on 127.0.0.1 from a daemon thread; stop and restart on demand.

    Werkzeug's development server: it closes each connection after its answer.
    """

    def __init__(self, app, port: int = 0, quiet: bool = True, name: str = "sim-server"):
        self.app = app
        self.port = port
        self.quiet = quiet
        self.name = name
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def serving(self) -> bool:
        """Return True while the listener accepts connections."""
        return self._server is not None

    def start(self) -> int:
        """Bind (port 0 picks a free one, kept for later restarts) and serve; return the port."""
        with self._lock:
            if self._server is not None:
                return self.port
            server, self.port, serve = self._bind()
            self._server = server
            self._thread = threading.Thread(target=serve, name=self.name, daemon=True)
            self._thread.start()
            return self.port

    def stop(self) -> None:
        """Stop accepting, close the listening socket and wait for the loop to end."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        self._shut(server)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _bind(self):
        """Make the bound server; return it, its port and what the thread runs."""
        handler = QuietHandler if self.quiet else None
        server = make_server(HOST, self.port, self.app, threaded=True, request_handler=handler)
        # A short poll interval keeps stop() and pause() quick (shutdown waits one poll).
        return server, server.server_port, lambda: server.serve_forever(poll_interval=0.05)

    def _shut(self, server: BaseWSGIServer) -> None:
        """End the serving loop and close the listening socket."""
        server.shutdown()
        server.server_close()


class KeepAliveServerThread(ServerThread):
    """Serve with HTTP/1.1 keep-alive (cheroot's threaded server), as vLLM and nginx do.

    Werkzeug's development server closes every connection after its answer; a real LLM
    server keeps it open, so a client (the panel's proxy among them) sends many requests on
    one connection. An idle kept-alive connection holds no thread; `threads` bounds the
    requests served at once (streams, and requests waiting on the simulated model).
    """

    def __init__(self, app, port: int = 0, name: str = "sim-llm", threads: int = 128):
        super().__init__(app, port, quiet=True, name=name)
        self.threads = threads

    def _bind(self):
        """Make the bound cheroot server; return it, its port and its serving loop."""
        server = _QuietCheroot((HOST, self.port), self.app, numthreads=self.threads)
        server.request_queue_size = 128  # the listen backlog: many streams open at once
        server.shutdown_timeout = 2  # a generation ends at once when the simulator stops
        server.prepare()
        return server, server.bind_addr[1], server.serve

    def _shut(self, server: wsgi.Server) -> None:
        """Stop accepting, end the connections and the worker threads."""
        server.stop()


class _QuietCheroot(wsgi.Server):
    """cheroot's WSGI server without its lines on stderr (a broken-off stream is simulated)."""

    def error_log(self, msg="", level=20, traceback=False):
        """Skip: the simulator keeps its own request log, and tests read theirs."""
