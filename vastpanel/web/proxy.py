"""The /v1/ pass-through: the team's OpenAI-compatible endpoint, in front of the instance's LLM.

Clients send `Authorization: Bearer <one of LLM_API_KEYS>` (never CONTROL_API_KEY: a key that
can chat cannot power off). Each request is forwarded as it came (method, path, query, body,
end-to-end headers) to the instance's LLM, after the Panel has woken the instance if it was
stopped; the answer flows back as it arrives (server-sent events are never buffered whole).
Errors come in OpenAI's shape, {"error": {"message", "type", "code"}}, so OpenAI clients show
them.
"""

from __future__ import annotations

import hmac
import logging
import select
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import urllib3
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from urllib3.exceptions import HTTPError as Urllib3Error
from werkzeug.exceptions import HTTPException

from ..domain.wake import ProxyTicket
from ..errors import ClientGone, LlmUnavailable, PanelError
from . import get_panel
from .auth import csrf

bp = Blueprint("proxy", __name__, url_prefix="/v1")
log = logging.getLogger("vastpanel")

# Prompts may carry documents: /v1/ bodies may be this large, the app's other routes far less.
LLM_MAX_BODY_BYTES = 32 * 1024 * 1024
CHUNK_BYTES = 16 * 1024  # what one read from the LLM may give; smaller pieces pass at once
SMALL_ANSWER_BYTES = 256 * 1024  # answers of known length up to this are read at once
CONNECT_TIMEOUT_S = 10.0
# Between two pieces of an answer: a long prompt can take minutes before its first token.
READ_TIMEOUT_S = 900.0
TIMEOUT = urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
# What the LLM may fail with: no connection, a timeout, a broken answer.
UPSTREAM_ERRORS = (Urllib3Error, OSError)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
# Meaningful for one connection only (RFC 9110 7.6.1), or set again by whoever sends the body.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# Never passed upstream: the client's key is ours (the LLM gets VAST_LLM_UPSTREAM_KEY), and the
# panel's session cookie or control key must never reach the instance.
NOT_FORWARDED = frozenset({"authorization", "cookie", "x-api-key"})
# Set by gunicorn and the LLM's server for their own connection; ours are set by gunicorn.
NOT_RETURNED = frozenset({"date", "server"})
OFF_MESSAGE = (
    "The LLM endpoint is off: set LLM_API_KEYS (comma-separated keys for the team's clients) in "
    "the panel's environment and restart it."
)


def init_app(app: Flask) -> None:
    """Register /v1/ and the pool of kept-alive connections that forward to the LLM."""
    # urllib3 itself, not requests: a pass-through has no cookies, auth, redirects, $HTTP_PROXY
    # or per-call settings to merge, and requests' preparing and wrapping of each call would
    # be a large share of a small proxied request. Enough pooled connections for many streams
    # at once; more are opened and dropped after. Never a retry: a POST is not repeated.
    pool = urllib3.PoolManager(num_pools=4, maxsize=128, retries=False)
    app.extensions["vastpanel_proxy_http"] = pool
    csrf.exempt(bp)  # a client with a bearer key, not a browser form
    app.before_request(allow_large_bodies)  # an app hook: it must run before the limit's check
    app.register_blueprint(bp)


def allow_large_bodies() -> None:
    """Let /v1/ requests carry up to 32 MiB (prompts with documents); the rest keep the app's."""
    if request.blueprint == bp.name:
        request.max_content_length = LLM_MAX_BODY_BYTES


def openai_error(status: int, message: str, kind: str, code: str | None, **headers: str):
    """Answer an error the way OpenAI's API does, so its clients show the message."""
    response = jsonify(error={"message": message, "type": kind, "param": None, "code": code})
    response.status_code = status
    response.headers.update(headers)
    return response


@bp.before_request
def require_llm_key():
    """Refuse requests without one of LLM_API_KEYS; answer 404 while no key is configured."""
    keys = get_panel().config.llm_api_keys
    if not keys:
        return openai_error(404, OFF_MESSAGE, "invalid_request_error", "proxy_disabled")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given_bytes = given.strip().encode()
    # Compared with every key, in constant time, so timing tells nothing about which is close.
    matches = [hmac.compare_digest(given_bytes, key.encode()) for key in keys]
    if scheme.lower() != "bearer" or not any(matches):
        return openai_error(
            401,
            "Missing or wrong API key: send 'Authorization: Bearer <key>' with one of the "
            "panel's LLM_API_KEYS.",
            "invalid_request_error",
            "invalid_api_key",
        )
    return None


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException):
    """Answer HTTP errors (413 body too large, ...) in OpenAI's shape."""
    return openai_error(
        exc.code or 500, exc.description or exc.name, "invalid_request_error", exc.name.lower()
    )


@bp.errorhandler(Exception)
def unexpected_error(exc: Exception):
    """Log a crash without its request data and answer it in OpenAI's shape."""
    if isinstance(exc, HTTPException):
        return http_error(exc)
    log.exception("Unexpected error on %s %s", request.method, request.path)
    return openai_error(500, "Internal error; see the panel's log.", "server_error", None)


@bp.route("/", defaults={"path": ""}, methods=METHODS)
@bp.route("/<path:path>", methods=METHODS)
def forward(path: str):
    """Wake the instance if needed, then forward the request and stream the answer back."""
    panel = get_panel()
    body = request.get_data(cache=False)
    ticket = panel.wake.proxy_request()
    try:
        base = panel.wake.wake_llm(gone=client_gone(request.environ))
        upstream = _send(base + request.path, body)
    except ClientGone:
        ticket.close()
        log.info("proxy: the client left while waiting for the instance (%s)", request.path)
        return Response(status=499)
    except LlmUnavailable as exc:
        ticket.close()
        return openai_error(
            503, exc.message, "server_error", exc.code, **{"Retry-After": str(exc.retry_after)}
        )
    except PanelError as exc:
        ticket.close()
        return openai_error(502, exc.message, "server_error", "upstream_error")
    except UPSTREAM_ERRORS as exc:
        ticket.close()
        log.warning("proxy: the LLM did not answer %s: %s", request.path, type(exc).__name__)
        return openai_error(
            502, "The instance's LLM did not answer.", "server_error", "upstream_unreachable"
        )
    dropped = HOP_BY_HOP | NOT_RETURNED | _listed(upstream.headers)
    headers = [
        (name, value) for name, value in upstream.headers.items() if name.lower() not in dropped
    ]
    if "content-length" in upstream.headers and request.method != "HEAD":
        headers.append(("Content-Length", upstream.headers["content-length"]))
    if upstream.headers.get("content-type", "").startswith("text/event-stream"):
        headers += [("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")]
    if _small(upstream):
        # A small answer of known length (a non-streamed completion) is read here, so the
        # request ends within its own app context: no generator, no second SQLite connection.
        try:
            body = _read_small(upstream, ticket)
        except UPSTREAM_ERRORS as exc:
            log.warning("proxy: the LLM's answer to %s broke off: %s", request.path, exc)
            return openai_error(
                502, "The instance's LLM broke off its answer.", "server_error", "upstream_broke"
            )
    else:
        body = _relay(upstream, ticket, request.path)
    response = Response(body, status=upstream.status)
    response.headers.clear()
    response.headers.extend(headers)
    return response


def _small(upstream: urllib3.BaseHTTPResponse) -> bool:
    """Tell whether the answer has a known length small enough to read at once."""
    length = upstream.headers.get("Content-Length", "")
    return length.isdigit() and int(length) <= SMALL_ANSWER_BYTES


def _read_small(upstream: urllib3.BaseHTTPResponse, ticket: ProxyTicket) -> bytes:
    """Read a small answer whole and end the request's accounting."""
    try:
        body = upstream.read(decode_content=False)
        upstream.release_conn()  # read to the end: the connection goes back to the pool
        return body
    finally:
        _close(upstream)
        ticket.close()


def _close(upstream: urllib3.BaseHTTPResponse) -> None:
    """End an answer: its connection is closed unless it went back to the pool already.

    Given back to the pool even closed, so the pool keeps its size (it reconnects it).
    """
    upstream.close()
    upstream.release_conn()


def _send(url: str, body: bytes) -> urllib3.BaseHTTPResponse:
    """Send the request on to the LLM; the answer is read later, piece by piece."""
    dropped = HOP_BY_HOP | NOT_FORWARDED | _listed(request.headers)
    headers = {
        name: value for name, value in request.headers.items() if name.lower() not in dropped
    }
    upstream_key = get_panel().config.llm_upstream_key
    if upstream_key:
        headers["Authorization"] = f"Bearer {upstream_key}"
    query = request.query_string.decode("latin-1")
    pool: urllib3.PoolManager = current_app.extensions["vastpanel_proxy_http"]
    return pool.urlopen(
        request.method,
        url + ("?" + query if query else ""),
        body=body or None,  # no body: no Content-Length on a GET, 0 on a POST
        headers=headers,
        preload_content=False,  # read later, piece by piece
        decode_content=False,  # bytes as sent, with their Content-Encoding
        redirect=False,
        retries=False,
        timeout=TIMEOUT,
    )


def _listed(headers: Mapping[str, str]) -> set[str]:
    """Name the headers a Connection header marks as hop-by-hop (the client's or the LLM's)."""
    return {h.strip().lower() for h in headers.get("Connection", "").split(",")}


def _relay(upstream: urllib3.BaseHTTPResponse, ticket: ProxyTicket, path: str) -> Iterator[bytes]:
    """Pass the answer on as it arrives; a client that leaves closes the upstream request."""
    try:
        while True:
            try:
                # read1: whatever has arrived (one read), not a full buffer; bytes as sent.
                chunk = upstream.read1(CHUNK_BYTES, decode_content=False)
            except UPSTREAM_ERRORS as exc:
                log.warning(
                    "proxy: the LLM's answer to %s broke off mid-way (%s); ending it for the client",
                    path,
                    type(exc).__name__,
                )
                return
            if not chunk:
                upstream.release_conn()  # read to the end: back to the pool
                return
            yield chunk
            ticket.touch()
    finally:  # also on GeneratorExit, when the client went away
        _close(upstream)
        ticket.close()
        # The body flows after the request's teardown: close the connection opened since.
        ticket.wake.store.close()


def client_gone(environ: dict[str, Any]) -> Callable[[], bool]:
    """Return a check that tells whether the client closed its connection (while we wait)."""
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if sock is None:
        return lambda: False

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            # The body is read already: a readable socket that gives nothing is closed.
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    return gone
