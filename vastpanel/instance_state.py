"""What vast.ai's instance fields mean for this panel: one status word and an address."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# actual_status values while the GPU is held and billed (per shared/vast-api.md, plus exited,
# where the machine stays held after the container died).
GPU_HELD = frozenset({"running", "frozen", "exited"})
# Statuses in which a start is under way: no second start call is sent.
STARTING = frozenset({"scheduling", "creating", "loading"})

MESSAGES = {
    "creating": "vast.ai is creating the instance.",
    "loading": "The instance is loading (pulling the image, starting the container).",
    "stopped": "The instance is stopped; only storage is billed.",
    "exited": "The container exited; the machine is still held and billed.",
    "frozen": "vast.ai reports 'frozen': paused with memory kept; the GPU is billed.",
    "rebooting": "vast.ai reports 'rebooting'.",
    "unknown": "vast.ai reports 'unknown': no heartbeat from the host.",
    "offline": "vast.ai reports 'offline': the host is disconnected.",
    "stopping": "A stop was requested; vast.ai still reports the instance running.",
    "not_found": "vast.ai does not know this instance id (or it is not yours).",
}
SCHEDULING_MESSAGE = "The start waits for the machine's GPU to be free (scheduling)."
QUEUED_MESSAGE = (
    "Start queued: the machine's GPU is taken by someone else right now; "
    "vast.ai starts the instance as soon as it is free. Stop cancels the queued start."
)


@dataclass(frozen=True)
class InstanceState:
    """The instance as this panel understands it at one moment."""

    status: str
    instance_id: int | None = None
    gpu_name: str | None = None
    num_gpus: int | None = None
    dph_total: float | None = None
    endpoint_base_url: str | None = None
    message: str | None = None
    status_msg: str | None = None
    actual_status: str | None = None
    intended_status: str | None = None

    @property
    def gpu_held(self) -> bool:
        """Tell whether the GPU is held (and billed) in this state."""
        return self.actual_status in GPU_HELD and self.intended_status != "stopped"

    @property
    def starting(self) -> bool:
        """Tell whether a start is under way."""
        return self.status in STARTING


def read_instance_state(
    instance: dict[str, Any] | None,
    instance_id: int | None,
    health_port: int,
    *,
    start_queued: bool = False,
) -> InstanceState:
    """Map vast.ai's instance fields (or None for an unknown id) to an InstanceState."""
    if instance is None:
        return InstanceState("not_found", instance_id, message=MESSAGES["not_found"])
    actual = _str(instance.get("actual_status"))
    intended = _str(instance.get("intended_status"))
    status = _status(actual, intended)
    endpoint = endpoint_base_url(instance, health_port) if status == "running" else None
    status_msg = _str(instance.get("status_msg"))
    message = MESSAGES.get(status)
    if status == "scheduling":
        message = QUEUED_MESSAGE if start_queued else SCHEDULING_MESSAGE
    elif status == "running" and endpoint is None:
        message = f"Running, but vast.ai lists no mapping for container port {health_port}/tcp."
    elif status not in MESSAGES and status != "running":
        message = f"vast.ai reports '{status}'."
    if status_msg and status in ("exited", "unknown", "offline", "loading", "creating"):
        message = f"{message} Host says: {status_msg}"
    return InstanceState(
        status=status,
        instance_id=_int(instance.get("id")) or instance_id,
        gpu_name=_str(instance.get("gpu_name")),
        num_gpus=_int(instance.get("num_gpus")),
        dph_total=_float(instance.get("dph_total")),
        endpoint_base_url=endpoint,
        message=message,
        status_msg=status_msg,
        actual_status=actual,
        intended_status=intended,
    )


def endpoint_base_url(instance: dict[str, Any], container_port: int) -> str | None:
    """Return http://ip:hostport for a container port, or None when it is not mapped."""
    ip = _str(instance.get("public_ipaddr"))
    ports = instance.get("ports")
    if not ip or not isinstance(ports, dict):
        return None
    mappings = ports.get(f"{container_port}/tcp")
    if not isinstance(mappings, list) or not mappings or not isinstance(mappings[0], dict):
        return None
    host_port = str(mappings[0].get("HostPort", "")).strip()
    if not host_port.isdigit():
        return None
    return f"http://{ip}:{host_port}"


def _status(actual: str | None, intended: str | None) -> str:
    """Pick the panel's status word from vast.ai's actual and intended status."""
    if actual == "running":
        return "running" if intended in ("running", None) else "stopping"
    if actual == "stopped":
        return "scheduling" if intended == "running" else "stopped"
    if actual in (None, "created"):
        return "creating"
    return actual  # loading, exited, frozen, rebooting, unknown, offline, or anything new


def _str(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _int(value: object) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _float(value: object) -> float | None:
    try:
        return float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
