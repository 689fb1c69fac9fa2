"""Every connection to the instance: an address the panel does not control.

Whoever answers there (the host, a compromised container, anyone on the path) may answer slowly,
endlessly or hugely. So every read from the instance has a total deadline and a size cap
(`Limits`): an answer that trickles is cut at the deadline, one that floods at the cap, and no
answer holds a watchdog look, or the stop it is about to send, for longer than its deadline.

The deadline holds for the status line and headers as for the body, with or without gevent:
connections to the instance read their answers through `_DeadlineReader`, which gives each read
of the socket only what is left of the deadline in force (`reading_until`), so a server that
sends one byte at a time cannot stretch it.

The connection is TLS pinned to the certificate install.sh made on the instance
(VAST_INSTANCE_TLS_FINGERPRINT, the SHA-256 of its DER form, checked right after the handshake,
before a byte of the request is sent), or plain HTTP when VAST_INSTANCE_PLAIN_HTTP says so. The
/v1/ pass-through's own pool (`pool_manager`) has the same pin and readers.
"""

from __future__ import annotations

import http.client
import io
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3Error

from .config import Config

CONNECT_S = 3.0
PIECE_BYTES = 64 * 1024  # one read of a body at most
# Sent with every read: an encoded answer could inflate past the cap once decoded.
IDENTITY = {"Accept-Encoding": "identity"}


@dataclass(frozen=True)
class Limits:
    """How long a whole exchange with the instance may take, and how large its answer may be."""

    total_s: float
    max_bytes: int  # 0: the body is not read (the status says it all)
    connect_s: float = CONNECT_S


HEALTH_LIMITS = Limits(total_s=5.0, max_bytes=0)


class InstanceUnreadable(Exception):
    """The instance did not answer within its limits; reason says why, safe to show."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class InstanceAnswer:
    """An answer from the instance, read whole within its limits."""

    status: int
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)


# --- the deadline, enforced on every read of the socket -----------------------------------------

# The time.monotonic() by which the reads of this greenlet or thread must be done; None: none.
_DEADLINE: ContextVar[float | None] = ContextVar("instance_read_deadline", default=None)


@contextmanager
def reading_until(deadline: float) -> Iterator[None]:
    """Hold every read from the instance in this block to a time.monotonic() deadline."""
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each waiting at most for what is left of the deadline in force."""

    def __init__(self, sock: Any):
        self.sock = sock
        # The socket's own file: it counts as a user of the socket, which then stays open
        # until this is closed, as http.client expects of its answers.
        self.raw = sock.makefile("rb", buffering=0)
        self.timeout = sock.gettimeout()  # the read timeout urllib3 set for this answer

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        deadline = _DEADLINE.get()
        if deadline is None:
            return self.raw.readinto(buffer)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the answer did not arrive in time")
        self.sock.settimeout(left if self.timeout is None else min(self.timeout, left))
        try:
            return self.raw.readinto(buffer)
        finally:
            # A kept-alive connection sends its next request with the timeout it had.
            self.sock.settimeout(self.timeout)

    def close(self) -> None:
        self.raw.close()
        super().close()


class _DeadlineSocket:
    """What http.client's answer sees of the socket: a file that keeps the deadline."""

    def __init__(self, sock: Any):
        self.sock = sock

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self.sock))


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock: Any, *args: Any, **kwargs: Any):
        super().__init__(_DeadlineSocket(sock), *args, **kwargs)


class _HTTPConnection(HTTPConnection):
    response_class = _DeadlineResponse


class _HTTPSConnection(HTTPSConnection):
    response_class = _DeadlineResponse


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


def read_capped(response: urllib3.BaseHTTPResponse, max_bytes: int, deadline: float) -> bytes:
    """Read an answer's body as it comes, bytes as sent, until its end, the cap or the deadline.

    deadline is a time.monotonic() value; it binds an answer from a connection of this module.
    Raises InstanceUnreadable past the cap (announced or read) or the deadline, or when the
    answer breaks off.
    """
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise InstanceUnreadable(f"the answer is over {_size(max_bytes)} ({length} bytes)")
    body = bytearray()
    try:
        with reading_until(deadline):
            while True:
                piece = response.read1(
                    min(PIECE_BYTES, max_bytes + 1 - len(body)), decode_content=False
                )
                if not piece:
                    return bytes(body)
                body += piece
                if len(body) > max_bytes:
                    raise InstanceUnreadable(f"the answer is over {_size(max_bytes)}")
    except (Urllib3Error, OSError) as exc:
        if time.monotonic() >= deadline or "timed out" in str(exc) or "in time" in str(exc):
            raise InstanceUnreadable("the answer did not arrive in time") from None
        raise InstanceUnreadable(f"the answer broke off ({type(exc).__name__})") from None


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 else f"{n // 1024} KiB"


# --- the connections ----------------------------------------------------------------------------


def pool_manager(fingerprint: str, **settings: Any) -> urllib3.PoolManager:
    """Return a urllib3 pool to the instance: its readers keep deadlines, its TLS the pin."""
    if fingerprint:
        # A self-signed certificate, checked by its fingerprint rather than by a CA and name.
        settings.update(cert_reqs="CERT_NONE", assert_fingerprint=fingerprint)
    pool = urllib3.PoolManager(**settings)
    pool.pool_classes_by_scheme = POOLS
    return pool


class _InstanceAdapter(HTTPAdapter):
    """requests' adapter over pool_manager(): deadlines kept, the certificate pinned."""

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs):
        self.poolmanager = pool_manager(
            self.fingerprint, num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs
        )

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        if self.fingerprint:  # whatever the session's verify says
            pool_kwargs.update(cert_reqs="CERT_NONE", assert_fingerprint=self.fingerprint)
        return host_params, pool_kwargs


class InstanceHttp:
    """Reads from the instance: pinned TLS (or plain HTTP when configured), bounded reads."""

    def __init__(self, config: Config):
        self.fingerprint = config.instance_tls_fingerprint
        self.transport = config.instance_transport  # tls_pinned, plain_http or None
        session = requests.Session()
        # Straight to the instance: no $HTTPS_PROXY, .netrc or CA bundle from the environment.
        session.trust_env = False
        adapter = _InstanceAdapter(self.fingerprint)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        if self.fingerprint:
            session.verify = False  # no CA or name to check: the pin checks the certificate
        self.session = session

    def request(
        self,
        method: str,
        url: str,
        limits: Limits,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> InstanceAnswer:
        """Send one request and read its answer within limits; raise InstanceUnreadable."""
        deadline = time.monotonic() + limits.total_s
        with reading_until(deadline):
            try:
                response = self.session.request(
                    method,
                    url,
                    data=body,
                    headers={**IDENTITY, **(headers or {})},
                    timeout=(min(limits.connect_s, limits.total_s), limits.total_s),
                    stream=True,
                    allow_redirects=False,
                )
            except requests.exceptions.SSLError as exc:
                raise InstanceUnreadable(_tls_problem(exc)) from None
            except requests.Timeout:
                raise InstanceUnreadable("no answer in time") from None
            except requests.RequestException as exc:
                raise InstanceUnreadable(f"cannot connect ({type(exc).__name__})") from None
        try:
            encoding = response.headers.get("Content-Encoding", "identity").lower()
            if limits.max_bytes == 0:
                content = b""  # closed unread below: the status is the answer
            elif encoding != "identity":
                raise InstanceUnreadable(f"the answer came {encoding}-encoded")
            else:
                content = read_capped(response.raw, limits.max_bytes, deadline)
                response.raw.release_conn()  # read to its end: kept alive for the next read
            return InstanceAnswer(response.status_code, response.headers, content)
        finally:
            response.close()

    def healthy(self, url: str) -> bool:
        """Tell whether the instance's health URL answers 200 right now."""
        try:
            return self.request("GET", url, HEALTH_LIMITS).status == 200
        except InstanceUnreadable:
            return False


def _tls_problem(exc: requests.exceptions.SSLError) -> str:
    """Say why TLS to the instance failed: the pin, or no TLS there at all."""
    if "fingerprint" in str(exc).lower():
        return (
            "its TLS certificate is not the pinned one (VAST_INSTANCE_TLS_FINGERPRINT): "
            "nothing was sent"
        )
    return "TLS failed (is it serving plain HTTP? see VAST_INSTANCE_PLAIN_HTTP)"
