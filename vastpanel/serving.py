"""gunicorn's gevent worker with a bound on what one client can hold (gunicorn.conf.py uses it).

Two bounds, both kept with greenlets and gevent timeouts in the worker's one thread:

- **Connections per client.** A client address (an IPv6 /64) holds at most
  `connections_per_client` connections of a worker at once; more are closed as they are
  accepted, so one client cannot fill the worker's `worker_connections` and keep the gateway
  and the admin out. The proxies of FORWARDED_ALLOW_IPS are exempt: every client behind one
  shares its address, so counting it would let one of them shut the others out; a proxy bounds
  its own clients (docs/operations.md's nginx: `limit_conn`, and it reads a body whole before
  passing the request on).
- **The request body.** Once a request's headers are in, reading its body may wait for the
  client `body_timeout_s` in all; then the connection is closed without an answer. Only time
  spent waiting for the client's bytes counts: a request the app holds before reading its body
  (a /v1/ request waiting for a cold start) is not cut short by it.

The header timeout is gunicorn's own (`keepalive`: async workers read the request line and
headers under it).
"""

from __future__ import annotations

import socket
import time
from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker

from .addresses import TrustedProxies, client_group

DEFAULT_BODY_TIMEOUT_S = 10.0
DEFAULT_CONNECTIONS_PER_CLIENT = 100


class BodyTooSlow(BaseException):
    """The client did not send its request body in time.

    A BaseException, like gevent's Timeout: it must pass through the app's `except Exception`
    (and Werkzeug's handling of a broken stream) up to the worker, which closes the connection.
    """


class BodyWait:
    """What is left of the time a request's body reads may spend waiting for the client."""

    def __init__(self, seconds: float):
        self.left = seconds

    def timed(self, read):
        """Wrap a socket read so that its waiting is counted, and cut when none is left."""

        def read_in_time(*args: Any) -> bytes:
            if self.left <= 0:
                raise BodyTooSlow()
            started = time.monotonic()
            try:
                with gevent.Timeout(self.left, BodyTooSlow):
                    return read(*args)
            finally:
                self.left -= time.monotonic() - started

        return read_in_time


class PanelWorker(GeventWorker):
    """The gevent worker, with the connections per client and the body wait bounded."""

    body_timeout_s = DEFAULT_BODY_TIMEOUT_S
    connections_per_client = DEFAULT_CONNECTIONS_PER_CLIENT

    def init_process(self) -> None:
        """Set up the counts (in the worker, after the fork), then run as gunicorn's worker."""
        self.open_by_client: dict[str, int] = {}
        self.refusing: set[str] = set()  # clients told of in the log since they reached the bound
        self.proxies = TrustedProxies(self.cfg.forwarded_allow_ips)
        super().init_process()

    def handle(self, listener, client, addr) -> None:
        """Serve a connection, or close it at once when its client holds too many already."""
        peer = addr[0] if isinstance(addr, tuple) else None
        if peer is None or peer in self.proxies:
            super().handle(listener, client, addr)
            return
        group = client_group(peer)
        held = self.open_by_client.get(group, 0)
        if held >= self.connections_per_client:
            client.close()
            if group not in self.refusing:  # one line per episode, not one per connection
                self.refusing.add(group)
                self.log.warning(
                    "%s holds %d connections, the most one client may: more are closed at once",
                    group,
                    held,
                )
            return
        self.open_by_client[group] = held + 1
        try:
            super().handle(listener, client, addr)
        finally:
            left = self.open_by_client[group] - 1
            if left:
                self.open_by_client[group] = left
            else:
                del self.open_by_client[group]
                self.refusing.discard(group)

    def handle_request(self, listener_name, req, sock, addr):
        """Serve one request; close the connection when its body does not come in time."""
        unreader = req.unreader  # the connection's reader: the body's bytes come through it
        unreader.chunk = BodyWait(self.body_timeout_s).timed(unreader.chunk)
        try:
            return super().handle_request(listener_name, req, sock, addr)
        except BodyTooSlow:
            peer = addr[0] if isinstance(addr, tuple) else addr
            self.log.warning(
                "Closed the connection from %s: its request body did not come within %g s",
                peer,
                self.body_timeout_s,
            )
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            raise StopIteration() from None  # gunicorn's signal to close the connection
        finally:
            del unreader.chunk  # the class's own again, for the next request's headers
