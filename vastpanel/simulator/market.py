"""A small vast.ai market: machines with GPUs, their offers, and other renters taking them.

Offers follow vast-ai/docs ``api-reference/openapi/yaml/search_offers.yaml``: ``POST
/api/v0/bundles/`` takes the query itself, each filter ``{op: value}`` with op in ``eq neq gt
gte lt lte in notin``, plus ``limit``, ``order`` (``[[field, "asc"|"desc"], ...]``), ``type``
and ``allocated_storage`` (GB the price is computed for, 8 by default). The server defaults
``verified`` and ``rentable`` to ``{"eq": true}``; it drops ``rented`` (each offer still says
whether it is rented: the official client filters on it afterwards). ``geolocation`` filters by
two-letter country code although offers show "City, CC". Where the reference says nothing the
simulator chooses, and says so: ``external`` is ignored (every machine here is a plain host),
as is a filter on a field no offer has; GPU names match with spaces or underscores.

A machine's GPU is either free, held by one of the account's instances (running or on its way),
or taken by another renter (``taken``), who can rent it only while the account's instance on it
is stopped: vast.ai's guides say a stopped instance keeps no GPU reservation, and a start then
waits in "scheduling" for as long as the other renter keeps it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from .hardware import Hardware

OPS = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "notin")
OFFER_TYPES = ("on-demand", "ondemand", "bid", "reserved")
DEFAULT_FILTERS = {"verified": {"eq": True}, "rentable": {"eq": True}}
IGNORED_FILTERS = ("rented", "external")
DEFAULT_ALLOCATED_GB = 8.0
FIRST_OFFER_ID = 7_100_001


class BadQuery(ValueError):
    """A search vast.ai would refuse with 400."""


@dataclass
class Machine:
    """One host machine and the offer it lists."""

    machine_id: int
    host_id: int
    gpu_name: str
    geolocation: str  # "City, CC"
    dph_base: float  # GPU $/hour for the whole offer
    offer_id: int
    num_gpus: int = 1
    gpu_ram: int = 24576  # MB per GPU
    reliability: float = 0.99
    verified: bool = True
    storage_cost: float = 0.15  # $/GB/month
    inet_up_cost: float = 0.01  # $/GB
    inet_down_cost: float = 0.005
    disk_space: float = 500.0  # GB free for new instances
    cuda_max_good: float = 12.4
    direct_port_count: int = 100
    contract_days: float = 28.0  # how long a new contract lasts (the offer's end_date)
    taken: bool = False  # another renter has its GPU
    listed: bool = True  # False once the offer is withdrawn

    def __post_init__(self):
        for name in ("dph_base", "storage_cost", "reliability", "disk_space"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a number >= 0")
        if not isinstance(self.num_gpus, int) or self.num_gpus < 1:
            raise ValueError("num_gpus must be a whole number >= 1")
        if ", " not in self.geolocation:
            raise ValueError('geolocation must read "City, CC"')

    @classmethod
    def from_hardware(cls, hardware: Hardware, offer_id: int) -> Machine:
        """Return the machine the simulator's first instance runs on."""
        return cls(
            machine_id=hardware.machine_id,
            host_id=hardware.host_id,
            gpu_name=hardware.gpu_name,
            geolocation=hardware.geolocation,
            dph_base=hardware.dph_base,
            offer_id=offer_id,
            num_gpus=hardware.num_gpus,
            gpu_ram=hardware.gpu_ram,
            reliability=hardware.reliability,
            verified=hardware.verified,
            storage_cost=hardware.storage_cost,
            inet_up_cost=hardware.inet_up_cost,
            inet_down_cost=hardware.inet_down_cost,
            contract_days=hardware.contract_days,
        )

    @property
    def country(self) -> str:
        """Return the two-letter country code of the location."""
        return self.geolocation.rsplit(", ", 1)[-1]

    def hardware(self, disk_space: float, image: str, label: str | None) -> Hardware:
        """Return the facts of a new instance on this machine."""
        return Hardware(
            gpu_name=self.gpu_name,
            num_gpus=self.num_gpus,
            gpu_ram=self.gpu_ram,
            dph_base=self.dph_base,
            storage_cost=self.storage_cost,
            disk_space=disk_space,
            inet_up_cost=self.inet_up_cost,
            inet_down_cost=self.inet_down_cost,
            machine_id=self.machine_id,
            host_id=self.host_id,
            geolocation=self.geolocation,
            reliability=self.reliability,
            verified=self.verified,
            label=label,
            image=image,
            age_seconds=0.0,
            contract_days=self.contract_days,
        )

    def offer(self, allocated_gb: float, rented: bool, now: float, bid: bool = False) -> dict:
        """Return the offer as the search answers it (``now`` in epoch seconds)."""
        storage_total = self.storage_cost * allocated_gb / 720
        min_bid = round(self.dph_base * 0.6, 6)
        dph_total = (min_bid if bid else self.dph_base) + storage_total
        return {
            "id": self.offer_id,
            "ask_contract_id": self.offer_id,
            "bundle_id": self.offer_id + 900_000_000,
            "machine_id": self.machine_id,
            "host_id": self.host_id,
            "hostname": None,
            "gpu_name": self.gpu_name,
            "num_gpus": self.num_gpus,
            "gpu_ram": self.gpu_ram,
            "gpu_total_ram": self.gpu_ram * self.num_gpus,
            "gpu_arch": "nvidia",
            "gpu_frac": 1.0,
            "cuda_max_good": self.cuda_max_good,
            "cpu_arch": "amd64",
            "cpu_cores_effective": 8.0 * self.num_gpus,
            "cpu_ram": 64000 * self.num_gpus,
            "disk_space": self.disk_space,
            "inet_up": 500.0,
            "inet_down": 800.0,
            "inet_up_cost": self.inet_up_cost,
            "inet_down_cost": self.inet_down_cost,
            "dph_base": self.dph_base,
            "storage_cost": self.storage_cost,
            "storage_total_cost": storage_total,
            "dph_total": dph_total,
            "min_bid": min_bid,
            "is_bid": bid,
            "reliability": self.reliability,
            "reliability2": self.reliability,
            "verification": "verified" if self.verified else "unverified",
            "vericode": 1 if self.verified else 0,
            "rentable": not rented,
            "rented": rented,
            "external": None,
            "geolocation": self.geolocation,
            "direct_port_count": self.direct_port_count,
            "static_ip": False,
            "public_ipaddr": "127.0.0.1",
            "start_date": now,
            "end_date": now + self.contract_days * 86400,
            "duration": self.contract_days * 86400,
            "score": round(self.reliability * 100 / max(dph_total, 1e-6), 4),
            "vms_enabled": False,
        }

    def describe(self) -> dict:
        """Return the machine's facts and state."""
        return asdict(self)


class Market:
    """The machines on the market, by id; not thread-safe (the account's lock guards it)."""

    def __init__(self, machines: list[Machine]):
        self.machines: dict[int, Machine] = {}
        for machine in machines:
            self.add(machine)
        self._initial = {m.machine_id: (m.taken, m.listed) for m in machines}

    def add(self, machine: Machine) -> Machine:
        """List a machine; raise ValueError when its machine or offer id is in use."""
        if machine.machine_id in self.machines:
            raise ValueError(f"machine {machine.machine_id} is already on the market")
        if self.by_offer(machine.offer_id) is not None:
            raise ValueError(f"offer {machine.offer_id} is already on the market")
        self.machines[machine.machine_id] = machine
        return machine

    def machine(self, machine_id: object) -> Machine:
        """Return a machine; raise ValueError for an unknown id."""
        machine = self.machines.get(machine_id) if isinstance(machine_id, int) else None
        if machine is None:
            raise ValueError(f"no machine {machine_id!r} on the market")
        return machine

    def by_offer(self, offer_id: int) -> Machine | None:
        """Return the machine whose offer has this id, listed or not."""
        return next((m for m in self.machines.values() if m.offer_id == offer_id), None)

    def reset(self) -> None:
        """Forget added machines; the first ones back as they were."""
        self.machines = {k: m for k, m in self.machines.items() if k in self._initial}
        for machine_id, (taken, listed) in self._initial.items():
            self.machines[machine_id].taken = taken
            self.machines[machine_id].listed = listed


def default_machines(first: Hardware) -> list[Machine]:
    """Return the first instance's machine and four others: the demo's market."""
    others = [
        (24816, 5151, "RTX 3090", "Lyon, FR", 0.22, 0.991, True),
        (31337, 6262, "RTX 3090", "Oslo, NO", 0.27, 0.985, True),
        (40404, 7373, "RTX 3090", "Austin, US", 0.18, 0.97, False),
        (52525, 8484, "RTX 4090", "Toronto, CA", 0.45, 0.998, True),
    ]
    machines = [Machine.from_hardware(first, FIRST_OFFER_ID)]
    for i, (machine_id, host, gpu, where, price, reliability, verified) in enumerate(others, 1):
        if machine_id == first.machine_id:
            continue
        machines.append(
            Machine(
                machine_id=machine_id,
                host_id=host,
                gpu_name=gpu,
                geolocation=where,
                dph_base=price,
                offer_id=FIRST_OFFER_ID + i,
                reliability=reliability,
                verified=verified,
            )
        )
    return machines


def machine_from_dict(data: dict) -> Machine:
    """Build a machine from JSON; raise ValueError naming what is wrong."""
    known = {f.name for f in fields(Machine)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown machine fields: {', '.join(sorted(unknown))}")
    try:
        return Machine(**data)
    except TypeError as error:
        raise ValueError(str(error)) from None


def search(query: object, offers: list[tuple[Machine, bool]], now: float) -> list[dict]:
    """Return the offers a search query selects, ordered and limited as it asks."""
    if not isinstance(query, dict):
        raise BadQuery("Invalid json body")
    offer_type = query.get("type", "on-demand")
    if offer_type not in OFFER_TYPES:
        raise BadQuery(f"type must be one of {', '.join(OFFER_TYPES)}")
    allocated = query.get("allocated_storage", DEFAULT_ALLOCATED_GB)
    if not _number(allocated) or allocated < 0:
        raise BadQuery("allocated_storage must be a number of GB")
    filters = {**DEFAULT_FILTERS, **{k: v for k, v in query.items() if k not in _NOT_FILTERS}}
    for name, condition in filters.items():
        if not isinstance(condition, dict) or not set(condition) <= set(OPS):
            raise BadQuery(f"filter {name} must be an object of {', '.join(OPS)}")
    rows = []
    for machine, rented in offers:
        offer = machine.offer(float(allocated), rented, now, bid=offer_type == "bid")
        view = {**offer, "verified": machine.verified, "geolocation": machine.country}
        if all(_passes(view, name, cond) for name, cond in filters.items()):
            rows.append(offer)
    for field_name, direction in reversed(_order(query.get("order"))):
        rows.sort(key=lambda o, f=field_name: _sort_key(o.get(f)), reverse=direction == "desc")
    limit = query.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise BadQuery("limit must be a whole number >= 1")
    return rows[:limit] if limit else rows


_NOT_FILTERS = (
    "limit",
    "order",
    "type",
    "allocated_storage",
    "disable_bundling",
    "target_reliability",
)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _order(order: object) -> list[tuple[str, str]]:
    """Read ``order``: ``[[field, "asc"|"desc"], ...]``; the CLI's default is score desc."""
    if order is None:
        return [("score", "desc")]
    if not isinstance(order, list) or not all(
        isinstance(o, list) and len(o) == 2 and o[1] in ("asc", "desc") for o in order
    ):
        raise BadQuery('order must be [[field, "asc"|"desc"], ...]')
    return [(str(f), d) for f, d in order]


def _sort_key(value: object) -> tuple[int, object]:
    if _number(value) and not math.isnan(value):
        return (0, value)
    return (1, str(value))


def _passes(view: dict, name: str, condition: dict) -> bool:
    """Tell whether an offer passes one filter (ignored ones and unknown fields pass)."""
    if name in IGNORED_FILTERS or name not in view:
        return True
    value = view[name]
    if name == "gpu_name":
        value = str(value).replace("_", " ")
        condition = {op: _gpu_names(arg) for op, arg in condition.items()}
    for op, arg in condition.items():
        if op in ("in", "notin"):
            if not isinstance(arg, list):
                raise BadQuery(f"{name}: {op} takes a list")
            if (value in arg) != (op == "in"):
                return False
            continue
        if op == "eq" and value != arg or op == "neq" and value == arg:
            return False
        if op in ("gt", "gte", "lt", "lte"):
            if not _number(arg):
                raise BadQuery(f"{name}: {op} takes a number")
            if not _number(value) or not _compare(value, op, arg):
                return False
    return True


def _gpu_names(arg: object) -> object:
    if isinstance(arg, list):
        return [str(a).replace("_", " ") for a in arg]
    return str(arg).replace("_", " ")


def _compare(value: float, op: str, arg: float) -> bool:
    return {
        "gt": value > arg,
        "gte": value >= arg,
        "lt": value < arg,
        "lte": value <= arg,
    }[op]
