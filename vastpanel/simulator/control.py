"""The /_sim/ control routes: faults, console actions, request log, state, timing, outage."""

from __future__ import annotations

from dataclasses import asdict, replace

from flask import Blueprint, current_app, jsonify, request

from .backend import Backend
from .timing import Timing

control = Blueprint("sim_control", __name__, url_prefix="/_sim")

LOOPBACK = ("127.0.0.1", "::1")


def _backend() -> Backend:
    return current_app.extensions["vast_sim"]


def _bad(msg: str, status: int = 400):
    return jsonify({"ok": False, "error": msg}), status


def _body() -> dict:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else {}


@control.before_request
def loopback_only():
    """Refuse control requests that do not come from this machine."""
    if request.remote_addr not in LOOPBACK:
        return _bad("the simulator is controlled from loopback only", 403)
    return None


@control.get("/state")
def state():
    """Show the instance, faults, timing and clock."""
    return jsonify(_backend().snapshot())


@control.post("/fault")
def add_fault():
    """Activate a fault: {"kind": ..., "count": N, "method": "GET"|"PUT", ...}."""
    options = _body()
    kind = options.pop("kind", None)
    try:
        fault = _backend().add_fault(kind, **options)
    except (TypeError, ValueError) as error:
        return _bad(str(error))
    return jsonify({"ok": True, "fault": fault.describe()}), 201


@control.delete("/fault")
def clear_faults():
    """Remove every fault, or only ?kind=...; a queued start then proceeds."""
    removed = _backend().clear_faults(request.args.get("kind"))
    return jsonify({"ok": True, "removed": removed})


@control.post("/external")
def external():
    """Act as the vast.ai console would: {"action": A} (backend.EXTERNAL_ACTIONS).

    start, stop, exit, vanish, appear; expire (the contract ends now); created, frozen,
    rebooting, unknown, offline show that status until recover, a start or a stop (rebooting
    ends by itself after load_delay).
    """
    backend = _backend()
    body = _body()
    try:
        changed = backend.external(str(body.get("action")), body.get("instance_id"))
    except ValueError as error:
        return _bad(str(error))
    view = backend.instance_view(body.get("instance_id"))
    return jsonify({"ok": True, "changed": changed, "instance": view})


@control.post("/contract")
def set_contract():
    """End a contract at {"ends_at": epoch seconds, "instance_id": id} (past: it expires now)."""
    body = _body()
    try:
        view = _backend().set_contract(body.get("ends_at"), body.get("instance_id"))
    except ValueError as error:
        return _bad(str(error))
    return jsonify({"ok": True, "instance": view})


@control.post("/billing")
def set_billing():
    """Bill differently from now on: {"factor": {"gpu": 1.5}, "clip_to_range": true, ...}."""
    try:
        billing = _backend().set_billing(**_body())
    except ValueError as error:
        return _bad(str(error))
    return jsonify({"ok": True, "billing": billing})


@control.get("/requests")
def list_requests():
    """Show the API request log (?method=, ?path=, ?server=llm for the LLM stack's log)."""
    rows = _backend().log.requests(
        method=request.args.get("method"),
        path=request.args.get("path"),
        llm=request.args.get("server") == "llm",
    )
    return jsonify({"requests": rows, "count": len(rows)})


@control.delete("/requests")
def clear_requests():
    """Empty the request logs."""
    _backend().log.clear()
    return jsonify({"ok": True})


@control.post("/reset")
def reset():
    """Back to the initial state, no faults, empty logs."""
    backend = _backend()
    backend.reset()
    return jsonify(backend.snapshot())


@control.post("/timing")
def set_timing():
    """Change phase durations of every instance, for transitions that start from now on."""
    backend = _backend()
    with backend.lock:
        try:
            timing = Timing(**{**asdict(backend.instance.timing), **_body()})
        except (TypeError, ValueError) as error:
            return _bad(str(error))
        for inst in backend.instances.values():
            inst.timing = replace(timing)
        return jsonify({"ok": True, "timing": asdict(timing)})


@control.post("/pause")
def pause():
    """Take the API off the air for {"seconds": S}: connections are refused, then it returns."""
    seconds = _body().get("seconds")
    if not isinstance(seconds, int | float) or not 0 < seconds <= 3600:
        return _bad("seconds must be a number in (0, 3600]")
    on_pause = current_app.extensions.get("vast_sim_pause")
    if on_pause is None:
        return _bad("pausing is not available here", 501)
    on_pause(float(seconds))
    return jsonify({"ok": True, "resumes_in": seconds}), 202


LLM_SETTINGS = {
    "token_delay_s": (int, float),
    "serve_metrics": (bool,),
    "max_num_seqs": (int,),
    "sticky_gauges": (bool,),
    "log_stats": (bool,),
}


@control.post("/llm")
def set_llm():
    """Change the LLM stack: {"token_delay_s": s, "serve_metrics": b, "max_num_seqs": n, ...}."""
    backend = _backend()
    body = _body()
    for name, value in body.items():
        kinds = LLM_SETTINGS.get(name)
        if kinds is None:
            return _bad(f"unknown setting {name!r}; known: {', '.join(LLM_SETTINGS)}")
        bool_for_number = isinstance(value, bool) and bool not in kinds
        if not isinstance(value, kinds) or bool_for_number or (kinds != (bool,) and value < 0):
            return _bad(
                f"{name} must be {'true or false' if kinds == (bool,) else 'a number >= 0'}"
            )
    with backend.lock:
        for name, value in body.items():
            setattr(backend.llm, name, value)
        for inst in backend.instances.values():
            inst.metrics.max_num_seqs = max(1, backend.llm.max_num_seqs)
            inst.metrics.sticky_gauges = backend.llm.sticky_gauges
    return jsonify({"ok": True, "llm": backend.snapshot()["llm"]})
