"""The /_sim/ control routes of the market and of the instances' disks.

GET  /_sim/market   {"machines": [...], "offers": [...]}: every machine, and the offers a
                    search with no filter would see
POST /_sim/market   {"action": "take"|"free", "machine_id": m}: another renter takes the
                    machine's GPU, or gives it back (a start queued on it proceeds);
                    {"action": "withdraw"|"relist", "offer_id": o}: the offer vanishes
                    (create answers 404) or comes back; {"action": "add", "machine":
                    {...}}: a machine joins the market (market.Machine's fields)
GET  /_sim/files    ?instance_id=N (the first instance without): {"files": {path: text}}
PUT  /_sim/files    {"instance_id": N, "files": {path: text}}: write files on its disk
"""

from __future__ import annotations

import re

from flask import Blueprint, jsonify, request

from .control import _backend, _bad, _body, loopback_only
from .market import machine_from_dict
from .rentals import search_offers

control_market = Blueprint("sim_control_market", __name__, url_prefix="/_sim")
control_market.before_request(loopback_only)

MARKET_ACTIONS = ("take", "free", "withdraw", "relist", "add")


@control_market.get("/market")
def show_market():
    """Show every machine, and the offers an unfiltered search sees."""
    backend = _backend()
    with backend.lock:
        machines = [m.describe() for m in backend.market.machines.values()]
        _, found = search_offers(backend, {"verified": {}, "rentable": {}})
    return jsonify({"machines": machines, "offers": found["offers"]})


@control_market.post("/market")
def change_market():
    """Take or free a machine's GPU, withdraw or relist an offer, or add a machine."""
    backend = _backend()
    body = _body()
    action = body.get("action")
    if action not in MARKET_ACTIONS:
        return _bad(f"action must be one of {', '.join(MARKET_ACTIONS)}")
    with backend.lock:
        try:
            if action in ("take", "free"):
                machine = backend.set_taken(body.get("machine_id"), action == "take")
            elif action == "add":
                if not isinstance(body.get("machine"), dict):
                    return _bad("machine must be an object of market.Machine's fields")
                machine = backend.market.add(machine_from_dict(body["machine"]))
            else:
                machine = backend.market.by_offer(body.get("offer_id"))
                if machine is None:
                    return _bad(f"no offer {body.get('offer_id')!r} on the market")
                machine.listed = action == "relist"
        except ValueError as error:
            return _bad(str(error))
        return jsonify({"ok": True, "machine": machine.describe()}), 201 if action == "add" else 200


@control_market.get("/files")
def show_files():
    """Show the files on an instance's disk (?instance_id=, the first one without)."""
    backend = _backend()
    raw = request.args.get("instance_id")
    if raw is not None and not re.fullmatch(r"[0-9]{1,18}", raw):
        return _bad("instance_id must be a number")
    with backend.lock:
        backend.settle_copies(backend.clock())
        try:
            inst = backend.target(None if raw is None else int(raw))
        except ValueError as error:
            return _bad(str(error), 404)
        return jsonify({"instance_id": inst.id, "files": dict(sorted(inst.files.items()))})


@control_market.put("/files")
def write_files():
    """Write files on an instance's disk: {"instance_id": N, "files": {path: text}}."""
    backend = _backend()
    body = _body()
    files = body.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and k.startswith("/") and isinstance(v, str) for k, v in files.items()
    ):
        return _bad("files must map absolute paths to text")
    with backend.lock:
        try:
            inst = backend.target(body.get("instance_id"))
        except ValueError as error:
            return _bad(str(error), 404)
        inst.files.update(files)
        return jsonify({"ok": True, "instance_id": inst.id, "files": sorted(inst.files)})
