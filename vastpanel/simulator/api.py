"""The simulated vast.ai REST API for the account's instances: show, start, stop, destroy,
the charges, and the user; in vast.ai's shapes. The market's endpoints are in market_api.py.
"""

from __future__ import annotations

import re

from flask import Blueprint, Flask, Response, request

from .backend import Backend
from .charges import charges_answer
from .control import control
from .control_market import control_market
from .faults import Fault
from .gateway import answer, backend, front_door, invalid_args, log_request, refuse
from .instance import SimInstance
from .market_api import market
from .rentals import destroy_instance, no_such_instance

vast = Blueprint("vast", __name__, url_prefix="/api/v0")
vast.before_request(front_door)
vast.after_request(log_request)

STATES = ("running", "stopped")
# Not documented: what vast.ai answers a start after the contract's end_date. The guides say
# only that expired instances cannot restart; this refusal is the simulator's assumption.
CONTRACT_EXPIRED = {
    "success": False,
    "error": "contract_expired",
    "msg": "Instance {id}'s contract ended (end_date {end_date:.0f}): it cannot start again.",
}


def create_api_app(account: Backend, on_pause=None) -> Flask:
    """Return the WSGI app of the simulated API; ``on_pause(seconds)`` backs POST /_sim/pause."""
    app = Flask(__name__)
    app.extensions["vast_sim"] = account
    app.extensions["vast_sim_pause"] = on_pause
    app.register_blueprint(vast)
    app.register_blueprint(market)
    app.register_blueprint(control)
    app.register_blueprint(control_market)
    return app


def _parse_id(raw_id: str) -> int | None:
    return int(raw_id) if re.fullmatch(r"[0-9]{1,18}", raw_id) else None


@vast.get("/instances/", strict_slashes=False)
def show_instances():
    """Answer {"instances": [...]}: every instance of the account, oldest first, as
    `vastai show instances` asks for them (GET /api/v0/instances/?owner=me)."""
    account = backend()
    with account.lock:
        ids = sorted(i for i in account.instances if account.live(i) is not None)
    views = [account.instance_view(i) for i in ids]
    return answer(200, {"instances": [v for v in views if v is not None]})


@vast.get("/instances/<raw_id>/", strict_slashes=False)
def show_instance(raw_id: str):
    """Answer {"instances": {...}}, or {"instances": null} for an id that is not ours."""
    instance_id = _parse_id(raw_id)
    if instance_id is None:
        return invalid_args(f"Invalid instance id {raw_id!r}: must be an integer.")
    return answer(200, {"instances": backend().instance_view(instance_id)})


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
    account = backend()
    with account.lock:
        inst = account.live(instance_id)
        if inst is None:
            return answer(404, no_such_instance(instance_id))
        if "label" in body:
            inst.label = body["label"]
        if state == "stopped":
            account.stop(inst)
        elif state == "running":
            refusal = _start(account, inst)
            if refusal is not None:
                return refusal
    return answer(200, {"success": True})


@vast.delete("/instances/<raw_id>/", strict_slashes=False)
def delete_instance(raw_id: str):
    """Destroy the instance: 200 {"success": true}, then 404 no_such_instance."""
    instance_id = _parse_id(raw_id)
    if instance_id is None:
        return answer(
            400, {"success": False, "error": "invalid_args", "msg": "invalid instance_id"}
        )
    return answer(*destroy_instance(backend(), instance_id))


def _start(account: Backend, inst: SimInstance) -> Response | None:
    """Start the instance unless its contract, its GPU or a fault refuses; return a refusal."""
    now = account.clock()
    inst.accrue(now)
    if inst.expired:
        msg = CONTRACT_EXPIRED["msg"].format(id=inst.id, end_date=inst.end_date)
        return answer(400, {**CONTRACT_EXPIRED, "msg": msg})
    if inst.held:
        if not account.gpu_free_for(inst):
            return _gpu_taken(account)  # still queued
        inst.release_hold(now)
        return None
    if not inst.start_needed(now):
        return None  # starting a running instance is a no-op success
    refusal = account.faults.take_start_refusal()
    if refusal is not None:
        account.pause_for(refusal.delay)
        if refusal.kind == "missing_billing":
            return refuse(refusal)
    outcome = inst.request_start(account.clock(), gpu_free=account.gpu_free_for(inst))
    if outcome == "queued":
        return _gpu_taken(account)
    return None


def _gpu_taken(account: Backend) -> Response:
    """Answer resources_unavailable (200, success false), in a fault's words if one is set."""
    faults = [f for f in account.faults.describe() if f["kind"] == "resources_unavailable"]
    options = {k: faults[0][k] for k in ("body", "headers", "status")} if faults else {}
    return refuse(Fault.from_options("resources_unavailable", **options))


@vast.get("/charges/", strict_slashes=False)
def charges():
    """Answer the account's charges, one row per contract (charges.py)."""
    status, body = charges_answer(backend(), request.args)
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
