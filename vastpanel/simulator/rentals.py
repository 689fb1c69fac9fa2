"""Renting on the simulated market: search, create from an offer, destroy, copy between instances.

Each function takes the request's parts and returns ``(status, body)`` in vast.ai's shapes:
search ``search_offers.yaml``, create ``create_instance.yaml``, destroy the auto-generated
``DELETE /api/v0/instances/{id}/`` reference, copy ``copy.yaml`` (vast-ai/docs
``api-reference/openapi/yaml/``). Two of vast.ai's answers differ from ``vast-api.md``'s
summary and are played as documented: a 404 on create carries ``error: "invalid_args"`` with
``no_such_ask`` in its ``msg`` (only the 410 has ``error: "no_such_ask"``), and create's
answer documents ``success`` and ``new_contract``; ``instance_api_key`` is added as
``vast-api.md`` reports it. ``success`` is false when the new instance does not come up
running (created stopped, or queued behind a taken GPU with ``cancel_unavail`` false).
"""

from __future__ import annotations

import re

from .backend import Backend
from .copying import COPY_STARTED, CopyJob, forbidden_destination, select
from .market import BadQuery, search
from .recipe import BadRecipe, recipe_from_request


def search_offers(backend: Backend, query: object) -> tuple[int, dict]:
    """Answer POST /api/v0/bundles/: the offers the query selects."""
    with backend.lock:
        now = backend.clock()
        epoch = now + backend.instance.meter.epoch_offset
        listed = [
            (m, not backend.gpu_free_on(m)) for m in backend.market.machines.values() if m.listed
        ]
        try:
            return 200, {"offers": search(query, listed, epoch)}
        except BadQuery as error:
            return 400, {"error": "invalid_request", "msg": str(error)}


def create_instance(backend: Backend, offer_id: int, body: object) -> tuple[int, dict]:
    """Answer PUT /api/v0/asks/{offer_id}/: a new instance on that offer's machine."""
    if not isinstance(body, dict):
        return 400, _invalid(offer_id, "expected a JSON object")
    try:
        recipe, disk, target = recipe_from_request(body, backend.templates)
    except BadRecipe as error:
        return 400, _invalid(offer_id, str(error))
    label = body.get("label")
    if label is not None and not isinstance(label, str):
        return 400, _invalid(offer_id, "label must be a string")
    # "Defaults to true for on-demand with target_state='running'" (create_instance.yaml).
    cancel_unavail = body.get("cancel_unavail")
    if cancel_unavail is None:
        cancel_unavail = target == "running"
    with backend.lock:
        machine = backend.market.by_offer(offer_id)
        if machine is None or not machine.listed:
            msg = f"error 404/3603: no_such_ask Instance type by id {offer_id} is not available."
            return 404, {"success": False, "error": "invalid_args", "msg": msg, "ask_id": offer_id}
        if disk > machine.disk_space:
            return 400, _invalid(offer_id, f"disk {disk:g} GB is more than the offer's space")
        free = backend.gpu_free_on(machine)
        if not free and target == "running" and cancel_unavail:
            msg = f"error 410/3907: no_such_ask Instance type {offer_id} is no longer available."
            return 410, {"success": False, "error": "no_such_ask", "msg": msg, "ask_id": offer_id}
        starts = target == "running" and free
        inst = backend.add_instance(
            machine, recipe, disk, label, "creating" if starts else "stopped"
        )
        if target == "running" and not free:
            inst.request_start(backend.clock(), gpu_free=False)  # queued: scheduling
    return 200, {"success": starts, "new_contract": inst.id, "instance_api_key": inst.api_key}


def destroy_instance(backend: Backend, instance_id: int) -> tuple[int, dict]:
    """Answer DELETE /api/v0/instances/{id}/: the instance and its disk are gone for good."""
    with backend.lock:
        inst = backend.live(instance_id)
        if inst is None:
            return 404, no_such_instance(instance_id)
        backend.destroy(inst)
    return 200, {"success": True}


def copy_direct(backend: Backend, body: object) -> tuple[int, dict]:
    """Answer PUT /api/v0/commands/copy_direct/: start copying between two instances."""
    if not isinstance(body, dict):
        return 400, _args_error("expected a JSON object")
    ids = [_instance_id(body.get(name)) for name in ("src_id", "dst_id")]
    paths = [body.get(name) for name in ("src_path", "dst_path")]
    if None in ids:
        return 400, _args_error("src_id and dst_id must be instance ids")
    if not all(isinstance(p, str) and p.strip() for p in paths):
        return 400, _args_error("src_path and dst_path are required")
    if forbidden_destination(paths[1]):
        return 400, _args_error(f"Refusing to copy into {paths[1]}: never / or /root.")
    with backend.lock:
        now = backend.clock()
        backend.settle_copies(now)
        src, dst = (backend.live(i) for i in ids)
        if src is None or dst is None:
            return 404, no_such_instance(ids[0] if src is None else ids[1])
        job = CopyJob(src.id, dst.id, paths[0], paths[1], now, now + src.timing.copy_delay)
        job.files = select(src.files, paths[0], paths[1])
        if src.hardware.machine_id != dst.hardware.machine_id:
            src.add_bandwidth(now, 0, job.size)
            dst.add_bandwidth(now, job.size, 0)
        backend.copies.append(job)
        backend.settle_copies(now)
    return 200, {"success": True, "msg": COPY_STARTED}


def no_such_instance(instance_id: int) -> dict:
    """Return vast.ai's body for an instance that is not (or no longer) the account's."""
    return {
        "success": False,
        "error": "no_such_instance",
        "msg": f"Instance {instance_id} not found.",
    }


def _invalid(offer_id: int, reason: str) -> dict:
    return {
        "success": False,
        "error": "invalid_args",
        "msg": f"Invalid args: {reason}",
        "ask_id": offer_id,
    }


def _args_error(msg: str) -> dict:
    return {"success": False, "error": "invalid_args", "msg": msg}


def _instance_id(value: object) -> int | None:
    """Read an instance id sent as a number or a string of digits (the CLI sends strings)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,18}", value.strip()):
        return int(value)
    return None
