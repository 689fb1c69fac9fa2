"""The simulated vast.ai market's endpoints: search offers, create from one, copy between
instances (rentals.py holds what they do, in vast.ai's shapes)."""

from __future__ import annotations

import re

from flask import Blueprint, request

from .gateway import answer, backend, front_door, log_request
from .rentals import copy_direct, create_instance, search_offers

market = Blueprint("vast_market", __name__, url_prefix="/api/v0")
market.before_request(front_door)
market.after_request(log_request)


@market.post("/bundles/", strict_slashes=False)
def bundles():
    """Answer {"offers": [...]} for the query in the body (no key needed)."""
    query = request.get_json(silent=True)
    if query is None and not request.get_data():
        query = {}  # an empty body: every default filter, no other
    return answer(*search_offers(backend(), query))


@market.put("/asks/<raw_id>/", strict_slashes=False)
def asks(raw_id: str):
    """Create an instance on offer ``raw_id``: {"success", "new_contract", ...}."""
    if not re.fullmatch(r"[0-9]{1,18}", raw_id):
        msg = f"error 400/3467: Invalid args: 'id' is required and must be a valid offer ID ({raw_id})"
        return answer(400, {"success": False, "error": "invalid_args", "msg": msg})
    return answer(*create_instance(backend(), int(raw_id), request.get_json(silent=True)))


@market.put("/commands/copy_direct/", strict_slashes=False)
def copy():
    """Start a copy between two instances of the account; progress shows in their status."""
    return answer(*copy_direct(backend(), request.get_json(silent=True)))
