"""The instance object of ``GET /api/v0/instances/{id}/``, exactly as vast.ai shows it.

Fields and meanings: ``vast-api.md`` ("Show one instance", "What show instance gives for a
recipe") and vast-ai/docs ``cli/reference/show-instance.mdx``; the recipe fields come back as
the create request gave them (recipe.py), never the registry login.
"""

from __future__ import annotations

from .instance import EXITED, GPU_HELD, LOADING, RUNNING, STOPPED, SimInstance

FORCED_MESSAGES = {
    "offline": "Host disconnected",
    "unknown": "No heartbeat from the host",
    "rebooting": "Rebooting the container",
}
EXPIRED_MESSAGE = "The instance's contract has ended (end_date); it cannot start."


def instance_object(inst: SimInstance, now: float, note: str | None = None) -> dict:
    """Return the instance object exactly as GET /api/v0/instances/{id}/ shows it.

    ``note`` is what the status bar says of work under way (a copy), unless the
    instance's own state says more.
    """
    inst.accrue(now)
    hw, recipe = inst.hardware, inst.recipe
    actual = inst.actual_status(now)
    running = inst.is_running(now)
    storage_total_cost = inst.storage_dph_in(actual)
    row = {
        "id": inst.id,
        "actual_status": actual,
        "intended_status": "frozen" if actual == "frozen" else inst.intended,
        "cur_state": RUNNING if actual in GPU_HELD else STOPPED,
        "next_state": inst.intended,
        "status_msg": _status_msg(inst, actual, note),
        "gpu_name": hw.gpu_name,
        "num_gpus": hw.num_gpus,
        "gpu_ram": hw.gpu_ram,
        "dph_base": hw.dph_base,
        "storage_cost": hw.storage_cost,
        "disk_space": hw.disk_space,
        "storage_total_cost": storage_total_cost,
        "dph_total": hw.dph_base + storage_total_cost,
        "inet_up_cost": hw.inet_up_cost,
        "inet_down_cost": hw.inet_down_cost,
        "public_ipaddr": "127.0.0.1\n",
        "start_date": inst.start_date,
        "end_date": inst.end_date,
        "uptime_mins": round((now - inst.running_at) / 60, 2) if running else None,
        "label": inst.label,
        "machine_id": hw.machine_id,
        "host_id": hw.host_id,
        "geolocation": hw.geolocation,
        "reliability2": hw.reliability,
        "verification": "verified" if hw.verified else "unverified",
        "ssh_host": "127.0.0.1",
        "ssh_port": 20000 + inst.id % 10000,
        "static_ip": False,
        "direct_port_start": -1,
        "direct_port_end": -1,
        "image_uuid": recipe.image,
        "image_args": list(recipe.args or []),
        "image_runtype": recipe.runtype,
        "extra_env": recipe.extra_env(),  # the official client makes it a dict
        "onstart": recipe.onstart,
        "template_hash_id": recipe.template_hash_id,
        "volume_info": recipe.volume_info,
        "gpu_util": 0.0 if running else None,
        "cpu_cores_effective": 8.0,
        "cpu_ram": 64000,
        "inet_up": 500.0,
        "inet_down": 800.0,
    }
    if running:
        row["ports"] = {
            f"{port}/tcp": [
                {"HostIp": "0.0.0.0", "HostPort": str(inst.host_ports.get(port, inst.llm_port))}
            ]
            for port in recipe.ports()
        }
    return row


def _status_msg(inst: SimInstance, actual: str | None, note: str | None) -> str | None:
    if actual in FORCED_MESSAGES:
        return FORCED_MESSAGES[actual]
    if inst.expired:
        return EXPIRED_MESSAGE
    if note is not None:
        return note
    if actual == EXITED:
        return "Error: container exited with code 137 (OOMKilled)"
    if inst.intended == RUNNING and inst.held:
        return "Required resources are currently unavailable, state change queued."
    if actual == LOADING:
        return f"Pulling image {inst.recipe.image}"
    if actual == RUNNING:
        return "success, running " + inst.recipe.image.replace(":", "_") + "/jupyter"
    return None
