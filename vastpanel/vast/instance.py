"""What vast.ai's instance fields mean for this panel: one status word and an address."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Any

# actual_status values in which vast.ai bills GPU time: a session is open exactly while the
# instance is seen in one of them. vast.ai's show-instance reference says of `frozen` "Container
# is paused with memory preserved. GPU charges apply." (vast-ai/docs
# cli/reference/show-instance.mdx), which settles what its billing guide leaves open.
GPU_BILLED = frozenset({"running", "frozen"})
# Statuses in which the instance is down and its GPU time is not billed, though vast.ai still
# means it to run: the panel closes the session, shows and audits the status.
DOWN = frozenset({"exited", "unknown", "offline"})
# Statuses the idle rule stops: running, and down ones that would start billing again by
# themselves once the host recovers (an offline host cannot take a stop).
IDLE_STOPPABLE = frozenset({"running", "exited", "unknown"})
# Statuses in which a start is under way: no second start call is sent, and nothing is idle.
STARTING = frozenset({"scheduling", "creating", "loading", "rebooting", "restarting"})

# The fields of vast.ai's answer the panel reads, shows or may bill by; the rest (extra_env with
# its keys, ssh details, ...) is dropped before the answer is stored.
KEPT_FIELDS = frozenset(
    {
        "id",
        "actual_status",
        "intended_status",
        "cur_state",
        "next_state",
        "status_msg",
        "gpu_name",
        "num_gpus",
        "dph_total",
        "dph_base",
        "storage_total_cost",
        "storage_cost",
        "disk_space",
        "public_ipaddr",
        "ports",
        "start_date",
        "end_date",  # the contract's end (vast-ai/docs show_instance.yaml): no start after it
        "uptime_mins",
        "label",
        "machine_id",  # a move needs to know which machine's GPU is taken
    }
)

MESSAGES = {
    "creating": "vast.ai is creating the instance.",
    "loading": "The instance is loading (pulling the image, starting the container).",
    "stopped": "The instance is stopped; only storage is billed.",
    "exited": (
        "The container exited: GPU time is not billed, but vast.ai still means it to run, "
        "so it is stopped like an idle instance."
    ),
    "frozen": "vast.ai reports 'frozen': paused with memory kept; the GPU is billed.",
    "rebooting": "vast.ai reports 'rebooting': the instance is starting again.",
    "restarting": "vast.ai reports 'restarting': the instance is starting again.",
    "unknown": (
        "vast.ai reports 'unknown': no heartbeat from the host; GPU time is not billed. "
        "It is stopped like an idle instance."
    ),
    "offline": "vast.ai reports 'offline': the host is disconnected; nothing is billed.",
    "stopping": "A stop was requested; vast.ai still reports the instance running.",
    "not_found": "vast.ai does not know this instance id (or it is not yours).",
}
# A start is scheduling for a few seconds as a rule; whether it waits for a GPU someone else holds
# is known only from vast.ai's answer (QUEUED_MESSAGE) or, on the page, from how long it lasts.
SCHEDULING_MESSAGE = "Scheduling: vast.ai is assigning the GPU."
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
    # vast.ai's end_date (epoch seconds): the instance cannot start after it (vast.ai's guides:
    # expired instances cannot restart and may be deleted 48 hours later). None when not given.
    contract_ends_at: float | None = None

    @property
    def gpu_billed(self) -> bool:
        """Tell whether vast.ai bills GPU time in this state."""
        return self.actual_status in GPU_BILLED and self.intended_status != "stopped"

    @property
    def down(self) -> bool:
        """Tell whether the instance is down (exited, unknown, offline): no GPU time billed."""
        return self.status in DOWN

    @property
    def starting(self) -> bool:
        """Tell whether a start is under way."""
        return self.status in STARTING


@dataclass(frozen=True)
class Reach:
    """How the panel reaches the instance: the URL scheme, and whether loopback is allowed."""

    scheme: str = "https"
    allow_loopback: bool = False  # VAST_ALLOW_LOOPBACK_INSTANCE_FOR_TESTS: the simulator's


def read_instance_state(
    instance: dict[str, Any] | None,
    instance_id: int | None,
    health_port: int,
    *,
    start_queued: bool = False,
    reach: Reach = Reach(),
) -> InstanceState:
    """Map vast.ai's instance fields (or None for an unknown id) to an InstanceState."""
    if instance is None:
        return InstanceState("not_found", instance_id, message=MESSAGES["not_found"])
    actual = _str(instance.get("actual_status"))
    intended = _str(instance.get("intended_status"))
    status = _status(actual, intended)
    endpoint = endpoint_base_url(instance, health_port, reach) if status == "running" else None
    status_msg = _str(instance.get("status_msg"))
    message = MESSAGES.get(status)
    if status == "scheduling":
        message = QUEUED_MESSAGE if start_queued else SCHEDULING_MESSAGE
    elif status == "running" and endpoint is None:
        message = _no_endpoint_message(instance, health_port, reach)
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
        contract_ends_at=_epoch(instance.get("end_date")),
    )


def kept_fields(instance: dict[str, Any] | None) -> dict[str, Any] | None:
    """Return only the fields of vast.ai's answer that the panel uses (None stays None)."""
    if instance is None:
        return None
    return {k: v for k, v in instance.items() if k in KEPT_FIELDS}


def endpoint_base_url(
    instance: dict[str, Any], container_port: int, reach: Reach = Reach()
) -> str | None:
    """Return scheme://ip:hostport for a container port, or None when it is not mapped.

    public_ipaddr must be a bare IPv4 or IPv6 address (once stripped) that the public internet
    routes: a host name, or a loopback, private or link-local address (the cloud's metadata
    service at 169.254.169.254, say), could steer the panel's requests, with the upstream key,
    to something else, so the endpoint is then unknown.
    """
    host = _url_host(instance.get("public_ipaddr"), reach.allow_loopback)
    ports = instance.get("ports")
    if host is None or not isinstance(ports, dict):
        return None
    mappings = ports.get(f"{container_port}/tcp")
    if not isinstance(mappings, list) or not mappings or not isinstance(mappings[0], dict):
        return None
    host_port = str(mappings[0].get("HostPort", "")).strip()
    if not (host_port.isascii() and host_port.isdigit() and 1 <= int(host_port) <= 65535):
        return None
    return f"{reach.scheme}://{host}:{int(host_port)}"


# Addresses the panel never connects to as "the instance": they reach this machine, its network
# or nothing routable (from IANA's special-purpose address registries). Loopback is apart: a
# setting allows it for the simulator. Documentation ranges (203.0.113.0/24, 2001:db8::/32)
# route nowhere and stay allowed: the tests' fake instances live there.
LOOPBACK_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128"))
REFUSED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # unspecified, "this network"
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # shared (carrier-grade NAT)
        "169.254.0.0/16",  # link-local, the cloud's metadata service
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
        "::/128",  # unspecified
        "100::/64",  # discard-only
        "fc00::/7",  # unique local (private)
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated, private)
        "ff00::/8",  # multicast
    )
)
LOOPBACK = "a loopback address"
# IPv6 forms that carry an IPv4 address on to IPv4: checked as that address.
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def refused_address(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, loopback_ok: bool
) -> str | None:
    """Name the kind of address the panel refuses as the instance's, or None when it is fine."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return refused_address(address.ipv4_mapped, loopback_ok)
        if address in NAT64:
            return refused_address(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), loopback_ok)
    if any(address in network for network in LOOPBACK_NETWORKS):
        return None if loopback_ok else LOOPBACK
    for network in REFUSED_NETWORKS:
        if address in network:
            return f"in {network}"
    return None


def _url_host(value: object, loopback_ok: bool = False) -> str | None:
    """Return an IP address as a URL writes it ([...] for IPv6), or None if it is not one
    the panel connects to."""
    address = _address(value)
    if address is None or refused_address(address, loopback_ok) is not None:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        return f"[{address.compressed}]"
    return address.compressed


def _address(value: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Return a bare IP address (stripped, no IPv6 zone), or None."""
    if not isinstance(value, str):
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return None
    return address


def _no_endpoint_message(instance: dict[str, Any], health_port: int, reach: Reach) -> str:
    """Say why a running instance has no endpoint: a bad or refused address, or no mapping."""
    raw = instance.get("public_ipaddr")
    shown = repr(raw)[:60] if raw is not None else "nothing"
    address = _address(raw)
    if address is None:
        return (
            f"Running, but the endpoint is unknown: vast.ai's public_ipaddr is {shown}, "
            "not a bare IP address."
        )
    refused = refused_address(address, reach.allow_loopback)
    if refused is not None:
        hint = (
            " VAST_ALLOW_LOOPBACK_INSTANCE_FOR_TESTS=true allows loopback, for the simulator."
            if refused == LOOPBACK
            else ""
        )
        return (
            f"Running, but the endpoint is unknown: vast.ai's public_ipaddr {shown} is "
            f"{refused}, which the panel never connects to (loopback, private, link-local, "
            "shared, unspecified, multicast and reserved addresses reach this machine or its "
            f"network, not a rented GPU).{hint}"
        )
    return f"Running, but vast.ai lists no mapping for container port {health_port}/tcp."


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


def _epoch(value: object) -> float | None:
    """Read epoch seconds; anything else (null, text, 0, not finite) is no date."""
    seconds = _float(value)
    return seconds if seconds is not None and math.isfinite(seconds) and seconds > 0 else None


def _float(value: object) -> float | None:
    try:
        return float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
