"""What stands in front of the simulated API: the proxy's faults, the key check, the rate
limiter, and the request log. Every API blueprint runs these hooks (api.py, market_api.py).

Keys: the account's key opens everything. An instance's own key (vast.ai's CONTAINER_API_KEY)
opens only a stop or a destroy of that very instance: vast-ai/docs
``api-reference/hello-world.mdx`` shows it stopping its instance, and ``vast-api.md`` notes
it can destroy it too. Searching offers needs no key (search_offers.yaml). A missing or
unknown key answers 401, except on the charges endpoint, which documents 403 for a missing
header and 404 for an unknown key (show_charges.yaml).
"""

from __future__ import annotations

import hmac
import re
from urllib.parse import parse_qsl, urlencode

from flask import Response, current_app, g, json, request

from .backend import Backend
from .faults import CHARGES_PATH, RATE_LIMIT_DETAIL, Fault, charges_too_frequent

INVALID_KEY = {"success": False, "error": "auth_error", "msg": "Invalid user key"}
LOGIN_REQUIRED = {"success": False, "error": "auth_error", "msg": "This action requires login."}
OPEN_ENDPOINTS = ("/api/v0/bundles/",)
INSTANCE_ENDPOINT = "/api/v0/instances/<raw_id>/"
ASKS_ENDPOINT = "/api/v0/asks/<raw_id>/"


def backend() -> Backend:
    """Return the simulated account this app serves."""
    return current_app.extensions["vast_sim"]


def answer(status: int, body, headers: dict | None = None) -> Response:
    """Return a JSON answer (or text, when ``body`` is already a string)."""
    if isinstance(body, str):
        return Response(body, status=status, headers=headers, mimetype="text/plain")
    return Response(json.dumps(body), status=status, headers=headers, mimetype="application/json")


def invalid_args(msg: str) -> Response:
    """Return vast.ai's 400 for arguments it cannot use."""
    return answer(400, {"success": False, "error": "invalid_args", "msg": msg})


def refuse(fault: Fault) -> Response:
    """Return the answer a fault gives in place of the real one."""
    status, headers, body = fault.answer(request.path)
    return Response(body, status=status, headers=headers)


def front_door():
    """Play the proxy and rate limiter in front of the API, then check the key."""
    account = backend()
    g.arrived_at = account.clock()
    fault = account.faults.take_front(request.method, request.path)
    if fault is not None:
        account.pause_for(fault.delay)
        if fault.kind != "slow":
            return refuse(fault)
    endpoint = request.url_rule.rule if request.url_rule else request.path
    g.auth = _key_accepted(account)
    if g.auth is None and endpoint not in OPEN_ENDPOINTS:
        if endpoint == CHARGES_PATH:
            return answer(403, LOGIN_REQUIRED) if not _sent_key() else answer(404, INVALID_KEY)
        return answer(401, INVALID_KEY)
    # Per key, as vast.ai limits per identity; the open search, per caller (all loopback here).
    threshold = account.rate_limiter.exceeded(
        endpoint, request.method, g.arrived_at, key=_sent_key() or ""
    )
    if threshold is None:
        return None
    if endpoint == CHARGES_PATH:
        return answer(429, charges_too_frequent(), {"Retry-After": "1"})
    if endpoint == ASKS_ENDPOINT:
        # create_instance.yaml documents this 429 as JSON with a "detail".
        return answer(429, {"detail": f"API requests too frequent endpoint threshold={threshold}"})
    # As vast.ai: plain text, no Retry-After; the client must wait the interval itself.
    return answer(429, RATE_LIMIT_DETAIL.format(threshold=threshold))


def _sent_key() -> str | None:
    # The header is what clients should send; vast.ai still honours ?api_key= as well.
    header = request.headers.get("Authorization", "")
    sent = header[len("Bearer ") :] if header.startswith("Bearer ") else None
    return sent or request.args.get("api_key")


def _key_accepted(account: Backend) -> str | None:
    """Say whose key came: "account", "instance" (its own stop or destroy), or None."""
    sent = (_sent_key() or "").encode()
    if hmac.compare_digest(sent, account.api_key.encode()):
        return "account"
    inst = account.instances.get(_path_instance_id())
    if inst is not None and hmac.compare_digest(sent, inst.api_key.encode()) and _own_action():
        return "instance"
    return None


def _path_instance_id() -> int | None:
    raw = (request.view_args or {}).get("raw_id", "")
    endpoint = request.url_rule.rule if request.url_rule else ""
    digits = re.fullmatch(r"[0-9]{1,18}", raw)
    return int(raw) if endpoint == INSTANCE_ENDPOINT and digits else None


def _own_action() -> bool:
    """Tell whether this request stops or destroys the instance in its path."""
    if request.method == "DELETE":
        return True
    return request.method == "PUT" and request.get_json(silent=True) == {"state": "stopped"}


def _redacted(body: object) -> object:
    """Return a request body fit for the log: a registry login is a secret."""
    if isinstance(body, dict) and body.get("image_login"):
        return {**body, "image_login": "[redacted]"}
    return body


def log_request(response: Response) -> Response:
    """Record method, path, redacted query, body and status; never the Authorization header."""
    account = backend()
    query = [
        (k, "[redacted]" if k == "api_key" else v)
        for k, v in parse_qsl(request.query_string.decode("latin-1"))
    ]
    account.log.record(
        {
            "method": request.method,
            "path": request.path,
            "query": urlencode(query),
            "json": _redacted(request.get_json(silent=True)) if request.method != "GET" else None,
            "status": response.status_code,
            "time": g.get("arrived_at", account.clock()),
            "auth": g.get("auth"),  # whose key: "account", "instance" or None; never the key
        }
    )
    return response
