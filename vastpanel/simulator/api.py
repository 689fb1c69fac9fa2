"""The simulated vast.ai REST API: show, start and stop one instance, in vast.ai's shapes."""

from __future__ import annotations

import hmac
import re
from urllib.parse import parse_qsl, urlencode

from flask import Blueprint, Flask, Response, current_app, g, json, request

from .backend import Backend
from .charges import charges_answer
from .control import control
from .faults import CHARGES_PATH, RATE_LIMIT_DETAIL, Fault, charges_too_frequent

vast = Blueprint("vast", __name__, url_prefix="/api/v0")

INVALID_KEY = {"success": False, "error": "auth_error", "msg": "Invalid user key"}
# The charges endpoint tells a missing key (403) from an unknown one (404): show_charges.yaml.
LOGIN_REQUIRED = {"success": False, "error": "auth_error", "msg": "This action requires login."}
STATES = ("running", "stopped")
# Not documented: what vast.ai answers a start after the contract's end_date. The guides say
# only that expired instances cannot restart; this refusal is the simulator's assumption.
CONTRACT_EXPIRED = {
    "success": False,
    "error": "contract_expired",
    "msg": "Instance {id}'s contract ended (end_date {end_date:.0f}): it cannot start again.",
}


def create_api_app(backend: Backend, on_pause=None) -> Flask:
    """Return the WSGI app of the simulated API; ``on_pause(seconds)`` backs POST /_sim/pause."""
    app = Flask(__name__)
    app.extensions["vast_sim"] = backend
    app.extensions["vast_sim_pause"] = on_pause
    app.register_blueprint(vast)
    app.register_blueprint(control)
    return app


def _backend() -> Backend:
    return current_app.extensions["vast_sim"]


def answer(status: int, body, headers: dict | None = None) -> Response:
    """Return a JSON answer (or text, when ``body`` is already a string)."""
    if isinstance(body, str):
        return Response(body, status=status, headers=headers, mimetype="text/plain")
    return Response(json.dumps(body), status=status, headers=headers, mimetype="application/json")


def invalid_args(msg: str) -> Response:
    """Return vast.ai's 400 for arguments it cannot use."""
    return answer(400, {"success": False, "error": "invalid_args", "msg": msg})


@vast.before_request
def front_door():
    """Play the proxy and rate limiter in front of the API, then check the key."""
    backend = _backend()
    g.arrived_at = backend.clock()
    fault = backend.faults.take_front(request.method, request.path)
    if fault is not None:
        backend.pause_for(fault.delay)
        if fault.kind != "slow":
            return _refuse(fault)
    endpoint = request.url_rule.rule if request.url_rule else request.path
    g.auth = _key_accepted(backend)
    if g.auth is None:
        if endpoint == CHARGES_PATH:
            return answer(403, LOGIN_REQUIRED) if not _sent_key() else answer(404, INVALID_KEY)
        return answer(401, INVALID_KEY)
    threshold = backend.rate_limiter.exceeded(
        endpoint, request.method, g.arrived_at, key=_sent_key() or ""
    )
    if threshold is not None and endpoint == CHARGES_PATH:
        return answer(429, charges_too_frequent(), {"Retry-After": "1"})
    if threshold is not None:
        # As vast.ai: plain text, no Retry-After; the client must wait the interval itself.
        return answer(429, RATE_LIMIT_DETAIL.format(threshold=threshold))
    return None


def _sent_key() -> str | None:
    # The header is what clients should send; vast.ai still honours ?api_key= as well.
    header = request.headers.get("Authorization", "")
    sent = header[len("Bearer ") :] if header.startswith("Bearer ") else None
    return sent or request.args.get("api_key")


def _key_accepted(backend: Backend) -> str | None:
    """Say whose key came: "account", "instance" (only for stopping that instance), or None."""
    sent = (_sent_key() or "").encode()
    if hmac.compare_digest(sent, backend.api_key.encode()):
        return "account"
    if hmac.compare_digest(sent, backend.instance_api_key.encode()) and _own_stop(backend):
        return "instance"
    return None


def _own_stop(backend: Backend) -> bool:
    """Tell whether this request stops the instance the per-instance key belongs to."""
    args = request.view_args or {}
    return (
        request.method == "PUT"
        and args.get("raw_id") == str(backend.instance.id)
        and request.get_json(silent=True) == {"state": "stopped"}
    )


@vast.after_request
def log_request(response: Response) -> Response:
    """Record method, path, redacted query, body and status; never the Authorization header."""
    backend = _backend()
    query = [
        (k, "[redacted]" if k == "api_key" else v)
        for k, v in parse_qsl(request.query_string.decode("latin-1"))
    ]
    backend.record(
        {
            "method": request.method,
            "path": request.path,
            "query": urlencode(query),
            "json": request.get_json(silent=True) if request.method != "GET" else None,
            "status": response.status_code,
            "time": g.get("arrived_at", backend.clock()),
            "auth": g.get("auth"),  # whose key: "account", "instance" or None; never the key
        }
    )
    return response


def _parse_id(raw_id: str) -> int | None:
    return int(raw_id) if re.fullmatch(r"[0-9]{1,18}", raw_id) else None


@vast.get("/instances/<raw_id>/", strict_slashes=False)
def show_instance(raw_id: str):
    """Answer {"instances": {...}}, or {"instances": null} for an id that is not ours."""
    instance_id = _parse_id(raw_id)
    if instance_id is None:
        return invalid_args(f"Invalid instance id {raw_id!r}: must be an integer.")
    backend = _backend()
    view = backend.instance_view() if instance_id == backend.instance.id else None
    return answer(200, {"instances": view})


@vast.put("/instances/<raw_id>/", strict_slashes=False)
def change_instance(raw_id: str):
    """Apply {"state": "running"|"stopped"} (and/or {"label": ...}) to the instance."""
    instance_id = _parse_id(raw_id)
    if instance_id is None:
        return invalid_args(f"Invalid instance id {raw_id!r}: must be an integer.")
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not ({"state", "label"} & body.keys()):
        return invalid_args("Expected a JSON object with 'state' (running or stopped).")
    state = body.get("state")
    if "state" in body and state not in STATES:
        return invalid_args(f"Invalid state {state!r}: must be one of running, stopped.")
    if "label" in body and not isinstance(body["label"], str | None):
        return invalid_args("Invalid label: must be a string.")
    backend = _backend()
    inst = backend.instance
    with inst.lock:
        inst.settle(backend.clock())
        if instance_id != inst.id or inst.gone:
            return answer(
                404,
                {
                    "success": False,
                    "error": "no_such_instance",
                    "msg": f"Instance {instance_id} not found.",
                },
            )
        if "label" in body:
            inst.label = body["label"]
        if state == "stopped":
            inst.request_stop(backend.clock())
        elif state == "running":
            refusal = _start(backend)
            if refusal is not None:
                return refusal
    return answer(200, {"success": True})


def _start(backend: Backend) -> Response | None:
    """Start the instance unless a fault refuses; return the refusal, if any."""
    inst = backend.instance
    inst.accrue(backend.clock())
    if inst.expired:
        return contract_expired(inst)
    if inst.held and backend.faults.gpu_busy():
        return _refuse(Fault.from_options("resources_unavailable"))  # still queued
    if not inst.start_needed(backend.clock()):
        return None  # starting a running instance is a no-op success
    refusal = backend.faults.take_start_refusal()
    if refusal is not None:
        backend.pause_for(refusal.delay)
        if refusal.kind == "missing_billing":
            return _refuse(refusal)
    outcome = inst.request_start(backend.clock(), gpu_free=not backend.faults.gpu_busy())
    if outcome == "queued":
        return _refuse(refusal or Fault.from_options("resources_unavailable"))
    return None


def contract_expired(inst) -> Response:
    """Return the refusal of a start after the contract's end (an assumption, see above)."""
    msg = CONTRACT_EXPIRED["msg"].format(id=inst.id, end_date=inst.end_date)
    return answer(400, {**CONTRACT_EXPIRED, "msg": msg})


def _refuse(fault: Fault) -> Response:
    status, headers, body = fault.answer(request.path)
    return Response(body, status=status, headers=headers)


@vast.get("/charges/", strict_slashes=False)
def charges():
    """Answer the account's charges, one row per contract (charges.py)."""
    status, body = charges_answer(_backend(), request.args)
    return answer(status, body)


@vast.get("/users/current/", strict_slashes=False)
def current_user():
    """Answer the little the official client asks about the account on every command."""
    return answer(
        200,
        {
            "id": 1,
            "username": "vastpanel-sim",
            "email": "sim@example.invalid",
            "credit": 25.0,
            "balance": 0.0,
            "host_agreement_accepted": False,
        },
    )
