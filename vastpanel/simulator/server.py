"""A loopback WSGI server in a background thread that can go away and come back on its port."""

from __future__ import annotations

import threading

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

HOST = "127.0.0.1"


class QuietHandler(WSGIRequestHandler):
    """A request handler that does not print one line per request."""

    def log_request(self, code="-", size="-"):
        """Skip the access log; the simulator keeps its own request log."""


class ServerThread:
    """Serve one WSGI app on 127.0.0.1 from a daemon thread; stop and restart on demand."""

    def __init__(self, app, port: int = 0, quiet: bool = True, name: str = "sim-server"):
        self.app = app
        self.port = port
        self.quiet = quiet
        self.name = name
        self._server: BaseWSGIServer | None = None
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
            handler = QuietHandler if self.quiet else None
            server = make_server(HOST, self.port, self.app, threaded=True, request_handler=handler)
            self.port = server.server_port
            self._server = server
            # A short poll interval keeps stop() and pause() quick (shutdown waits one poll).
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.name
            )
            self._thread.daemon = True
            self._thread.start()
            return self.port

    def stop(self) -> None:
        """Stop accepting, close the listening socket and wait for the loop to end."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
