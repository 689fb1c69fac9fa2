"""Every connection to the instance: an address the panel does not control.

Whoever answers there (the host, a compromised container, anyone on the path) may answer slowly,
endlessly or hugely. So every read from the instance has a total deadline and a size cap
(`Limits`): an answer that trickles is cut at the deadline, one that floods at the cap, and no
answer holds a watchdog look, or the stop it is about to send, for longer than its deadline.

The body is read piece by piece, each read waiting at most for what is left of the deadline (the
socket's timeout is set before each read), so the body's bound holds with or without gevent.
The status line and headers are read by http.client: under gevent (the gunicorn worker) a
gevent.Timeout bounds that wait as well; without gevent (tests, `flask run`) each read of the
headers waits at most the deadline.

The connection is TLS pinned to the certificate install.sh made on the instance
(VAST_INSTANCE_TLS_FINGERPRINT, the SHA-256 of its DER form, checked right after the handshake,
before a byte of the request is sent), or plain HTTP when VAST_INSTANCE_PLAIN_HTTP says so. The
/v1/ pass-through's own urllib3 pool takes the same pin (`pool_settings`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import requests
import urllib3
from requests.adapters import HTTPAdapter
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


def read_capped(response: urllib3.BaseHTTPResponse, max_bytes: int, deadline: float) -> bytes:
    """Read an answer's body as it comes, bytes as sent, until its end, the cap or the deadline.

    deadline is a time.monotonic() value. Raises InstanceUnreadable past the cap (announced or
    read) or the deadline, or when the answer breaks off.
    """
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise InstanceUnreadable(f"the answer is over {_size(max_bytes)} ({length} bytes)")
    # None for an answer that is not on a socket (tests' fakes).
    sock = getattr(getattr(response, "connection", None), "sock", None)
    timeout = sock.gettimeout() if sock is not None else None
    body = bytearray()
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise InstanceUnreadable("the answer did not arrive in time")
            if sock is not None:
                sock.settimeout(left)  # the next read waits only for what is left
            want = min(PIECE_BYTES, max_bytes + 1 - len(body))
            piece = response.read1(want, decode_content=False)
            if not piece:
                return bytes(body)
            body += piece
            if len(body) > max_bytes:
                raise InstanceUnreadable(f"the answer is over {_size(max_bytes)}")
    except (Urllib3Error, OSError) as exc:
        if time.monotonic() >= deadline or "timed out" in str(exc):
            raise InstanceUnreadable("the answer did not arrive in time") from None
        raise InstanceUnreadable(f"the answer broke off ({type(exc).__name__})") from None
    finally:
        if sock is not None and sock.fileno() != -1:
            sock.settimeout(timeout)  # a kept-alive connection sends its next request as before


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 else f"{n // 1024} KiB"


@contextmanager
def total_deadline(seconds: float) -> Iterator[None]:
    """Bound everything in the block to seconds under gevent (InstanceUnreadable past it).

    Without gevent this does nothing: read_capped still bounds the body by itself.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("socket"):
        yield
        return
    import gevent

    timer = gevent.Timeout(seconds)  # a BaseException: no `except Exception` below swallows it
    timer.start()
    try:
        yield
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        raise InstanceUnreadable("the answer did not arrive in time") from None
    finally:
        timer.close()


class _PinnedAdapter(HTTPAdapter):
    """Accepts only the certificate with this SHA-256, whatever the session's verify says."""

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        # A self-signed certificate, checked by its fingerprint rather than by a CA and name.
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
        if self.fingerprint:
            session.mount("https://", _PinnedAdapter(self.fingerprint))
        self.session = session

    def pool_settings(self) -> dict[str, str]:
        """Return what a urllib3 pool to the instance needs to pin its certificate."""
        if not self.fingerprint:
            return {}
        return {"cert_reqs": "CERT_NONE", "assert_fingerprint": self.fingerprint}

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
        with total_deadline(limits.total_s):
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
