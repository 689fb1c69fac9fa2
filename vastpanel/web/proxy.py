"""The /v1/ pass-through: the team's OpenAI-compatible endpoint, in front of the instance's LLM.

Clients send `Authorization: Bearer <one of LLM_API_KEYS>` (never CONTROL_API_KEY: a key that
can chat cannot power off); wrong keys count toward the same lockout as the control key's. Each
request is forwarded (method, its canonical path as sent, query, body as it streams in,
end-to-end headers: proxy_request.py) to the instance's LLM, after the Panel has woken the
instance if it was stopped; the answer flows back as it arrives (server-sent events are never
buffered whole), with only the headers an OpenAI client needs. Errors come in OpenAI's shape,
{"error": {"message", "type", "code"}}, so OpenAI clients show them.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import urllib3
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from urllib3.exceptions import HTTPError as Urllib3Error
from werkzeug.exceptions import HTTPException

from ..domain.wake import ProxyTicket
from ..errors import ClientGone, LlmUnavailable, PanelError
from ..instance_http import InstanceUnreadable, pool_manager, read_capped
from . import EXTENSION, get_panel
from .auth import csrf
from .proxy_request import (
    BodyBroken,
    BodyTooLarge,
    RequestBody,
    canonical_path,
    forwarded_headers,
    listed,
)

bp = Blueprint("proxy", __name__, url_prefix="/v1")
log = logging.getLogger("vastpanel")

# Prompts may carry documents: /v1/ bodies may be this large, the app's other routes far less.
LLM_MAX_BODY_BYTES = 32 * 1024 * 1024
CHUNK_BYTES = 16 * 1024  # what one read from the LLM may give; smaller pieces pass at once
SMALL_ANSWER_BYTES = 256 * 1024  # answers of known length up to this are read at once
# ...within this time from their headers: the instance may not hold a request by trickling.
SMALL_ANSWER_S = 60.0
CONNECT_TIMEOUT_S = 10.0
# Between two pieces of an answer: a long prompt can take minutes before its first token.
READ_TIMEOUT_S = 900.0
TIMEOUT = urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
# What the LLM may fail with: no connection, a timeout, a broken answer.
UPSTREAM_ERRORS = (Urllib3Error, OSError)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
# The LLM's answer headers passed on: what an OpenAI client reads. Nothing else of the
# instance's speaks for the panel's origin (no Set-Cookie, CORS, Location, Refresh, ...).
RETURNED = frozenset(
    {"content-type", "content-encoding", "cache-control", "retry-after", "x-request-id"}
)
RETURNED_PREFIXES = ("openai-", "x-ratelimit-", "ratelimit")
OFF_MESSAGE = (
    "The LLM endpoint is off: set LLM_API_KEYS (comma-separated keys for the team's clients) in "
    "the panel's environment and restart it."
)


def init_app(app: Flask) -> None:
    """Register /v1/ and the pool of kept-alive connections that forward to the LLM."""
    # urllib3 itself, not requests: a pass-through has no cookies, auth, redirects, $HTTP_PROXY
    # or per-call settings to merge, and requests' preparing and wrapping of each call would
    # be a large share of a small proxied request. Enough pooled connections for many streams
    # at once; more are opened and dropped after. Never a retry: a POST is not repeated. TLS
    # pinned to the instance's certificate, as every connection to it.
    fingerprint = app.extensions[EXTENSION].instance_http.fingerprint
    pool = pool_manager(fingerprint, num_pools=4, maxsize=128, retries=False)
    app.extensions["vastpanel_proxy_http"] = pool
    csrf.exempt(bp)  # a client with a bearer key, not a browser form
    # An app hook: it runs before the body limit's check, and before routing's redirects.
    app.before_request(guard)
    app.register_blueprint(bp)


def guard():
    """For /v1: raise the body limit to 32 MiB, then check the key, then the path."""
    path = request.environ.get("PATH_INFO", "")
    if path != "/v1" and not path.startswith("/v1/"):
        return None
    request.max_content_length = LLM_MAX_BODY_BYTES  # prompts may carry documents
    refused = require_llm_key()
    if refused is not None:
        return refused
    if canonical_path(request.environ) is None:
        return openai_error(
            400,
            "The path must be a plain path under /v1/: no '.' or '..' segments, no '//', no "
            "encoded '/', '.', '?', '#' or '%'.",
            "invalid_request_error",
            "invalid_path",
        )
    return None


def openai_error(status: int, message: str, kind: str, code: str | None, **headers: str):
    """Answer an error the way OpenAI's API does, so its clients show the message."""
    response = jsonify(error={"message": message, "type": kind, "param": None, "code": code})
    response.status_code = status
    response.headers.update(headers)
    return response


def require_llm_key():
    """Refuse requests without one of LLM_API_KEYS; answer 404 while no key is configured."""
    panel = get_panel()
    if not panel.config.llm_api_keys:
        return openai_error(404, OFF_MESSAGE, "invalid_request_error", "proxy_disabled")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip() if scheme.lower() == "bearer" else ""
    check = panel.keys.check_llm_key(given, request.remote_addr)
    if check.retry_after_s is not None:
        return openai_error(
            429,
            "Too many wrong keys from this address: locked out for "
            f"{check.retry_after_header} s more; nothing was checked.",
            "invalid_request_error",
            "locked_out",
            **{"Retry-After": check.retry_after_header},
        )
    if not check.accepted:
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


@bp.route("/<path:path>", methods=METHODS)
def forward(path: str):
    """Wake the instance if needed, then forward the request and stream the answer back."""
    panel = get_panel()
    target = canonical_path(request.environ)  # the guard has let only canonical paths in
    body = RequestBody(request.environ, LLM_MAX_BODY_BYTES)
    ticket = panel.wake.proxy_request()
    try:
        # The waiting cap applies before any of the body is read; a small body is read once
        # the request waits, so that a client that leaves meanwhile is noticed.
        base = panel.wake.wake_llm(gone=client_gone(request.environ), on_wait=body.preread_small)
        upstream = _send(base + target, body)
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
    except BodyTooLarge:
        ticket.close()  # the upstream request was left unfinished: nothing reached the LLM
        return openai_error(
            413,
            f"The request body is too large: at most {LLM_MAX_BODY_BYTES} bytes.",
            "invalid_request_error",
            "request_entity_too_large",
        )
    except BodyBroken as exc:
        ticket.close()
        log.info("proxy: %s (%s)", exc, request.path)
        return openai_error(400, str(exc), "invalid_request_error", "body_incomplete")
    except UPSTREAM_ERRORS as exc:
        ticket.close()
        log.warning("proxy: the LLM did not answer %s: %s", request.path, type(exc).__name__)
        return openai_error(
            502, "The instance's LLM did not answer.", "server_error", "upstream_unreachable"
        )
    except BaseException:  # the worker closing a connection whose body is too slow, say
        ticket.close()
        raise
    headers = returned_headers(upstream.headers)
    if "content-length" in upstream.headers and request.method != "HEAD":
        headers.append(("Content-Length", upstream.headers["content-length"]))
    if upstream.headers.get("content-type", "").startswith("text/event-stream"):
        headers += [("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")]
    if _small(upstream):
        # A small answer of known length (a non-streamed completion) is read here, so the
        # request ends within its own app context: no generator, no second SQLite connection.
        try:
            answer = _read_small(upstream, ticket)
        except InstanceUnreadable as exc:
            log.warning("proxy: the LLM's answer to %s: %s", request.path, exc.reason)
            return openai_error(
                502, "The instance's LLM broke off its answer.", "server_error", "upstream_broke"
            )
    else:
        answer = _relay(upstream, ticket, request.path)
    response = Response(answer, status=upstream.status)
    response.headers.clear()
    response.headers.extend(headers)
    return response


def returned_headers(upstream: Mapping[str, str]) -> list[tuple[str, str]]:
    """Keep the LLM's answer headers an OpenAI client needs (not Content-Length: set apart)."""
    hop = listed(upstream)
    return [
        (name, value)
        for name, value in upstream.items()
        if name.lower() not in hop
        and (name.lower() in RETURNED or name.lower().startswith(RETURNED_PREFIXES))
    ]


def _small(upstream: urllib3.BaseHTTPResponse) -> bool:
    """Tell whether the answer has a known length small enough to read at once."""
    length = upstream.headers.get("Content-Length", "")
    return length.isdigit() and int(length) <= SMALL_ANSWER_BYTES


def _read_small(upstream: urllib3.BaseHTTPResponse, ticket: ProxyTicket) -> bytes:
    """Read a small answer whole, within SMALL_ANSWER_S, and end the request's accounting."""
    try:
        body = read_capped(upstream, SMALL_ANSWER_BYTES, time.monotonic() + SMALL_ANSWER_S)
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


def _send(url: str, body: RequestBody) -> urllib3.BaseHTTPResponse:
    """Send the request on to the LLM, the body as it streams in; the answer is read later."""
    headers = forwarded_headers(request.headers, get_panel().config.llm_upstream_key)
    if body.length:
        headers["Content-Length"] = str(body.length)
    query = request.query_string.decode("latin-1")
    pool: urllib3.PoolManager = current_app.extensions["vastpanel_proxy_http"]
    return pool.urlopen(
        request.method,
        url + ("?" + query if query else ""),
        # No body: no Content-Length on a GET, 0 on a POST. A chunked one goes on chunked.
        body=None if body.empty else body.pieces(),
        chunked=body.chunked,
        headers=headers,
        preload_content=False,  # read later, piece by piece
        decode_content=False,  # bytes as sent, with their Content-Encoding
        redirect=False,
        retries=False,
        timeout=TIMEOUT,
    )


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
            # A readable socket that gives nothing is closed; one with unread body bytes
            # pending reads as a live client (so large bodies are not noticed leaving).
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    return gone
