"""The simulated instance: a lifecycle derived lazily from timestamps on an injectable clock."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .billing import Meter

RUNNING = "running"
STOPPED = "stopped"
LOADING = "loading"
EXITED = "exited"
INITIAL_STATES = ("stopped", "running", "creating")
# Statuses the console (the control API) can put the instance in, until "recover", a start or
# a stop; "rebooting" ends by itself after load_delay, back to the lifecycle's own status.
FORCED_STATUSES = ("created", "frozen", "rebooting", "unknown", "offline")
FORCED_MESSAGES = {
    "offline": "Host disconnected",
    "unknown": "No heartbeat from the host",
    "rebooting": "Rebooting the container",
}


class ManualClock:
    """A clock that only moves when told to, so tests can be exact without sleeping."""

    def __init__(self, start: float = 1000.0):
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """Return the current reading."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward and return the new reading."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += seconds
            return self._now


@dataclass
class Timing:
    """Seconds each phase lasts; 0 is allowed everywhere."""

    schedule_delay: float = 1.0  # scheduling: intended running, actual still stopped
    load_delay: float = 2.0  # loading: pulling the image and starting the container
    warm_delay: float = 1.0  # after running, until the model answers /health with 200
    stop_delay: float = 0.0  # after a stop, while actual still shows the old status
    create_delay: float = 0.0  # only for initial_state="creating": actual_status is null

    def __post_init__(self):
        for name, value in vars(self).items():
            if not isinstance(value, int | float) or value < 0 or math.isnan(value):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
            setattr(self, name, float(value))


@dataclass
class Hardware:
    """The static facts vast.ai reports about the rented machine."""

    gpu_name: str = "RTX 3090"
    num_gpus: int = 1
    dph_base: float = 0.25  # GPU $/hour
    storage_cost: float = 0.15  # $/GB/month
    disk_space: float = 48.0  # GB
    inet_up_cost: float = 0.01  # $/GB out of the instance
    inet_down_cost: float = 0.005  # $/GB into the instance
    machine_id: int = 13542
    label: str | None = "vastpanel-sim"
    image: str = "vllm/vllm-openai:latest"
    age_seconds: float = 3 * 86400.0  # start_date is this long before the simulator started


class SimInstance:
    """One vast.ai instance whose status is computed from request timestamps on each read.

    Every phase boundary is stored as an absolute clock reading when a request arrives, so a
    read at any later time (or a jump of an injected clock) gives the right status without a
    background thread. Callers hold ``lock`` around a read-then-act sequence.
    """

    def __init__(
        self,
        instance_id: int,
        timing: Timing,
        hardware: Hardware,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        initial_state: str = STOPPED,
    ):
        if initial_state not in INITIAL_STATES:
            raise ValueError(f"initial_state must be one of {INITIAL_STATES}")
        self.id = instance_id
        self.timing = timing
        self.hardware = hardware
        self.clock = clock
        self.lock = threading.RLock()
        self.start_date = wall_clock() - hardware.age_seconds
        self.meter = Meter(epoch_offset=wall_clock() - clock())
        self.reset(initial_state)

    def reset(self, initial_state: str = STOPPED) -> None:
        """Put the instance back in a settled initial state, billing from now on."""
        now = self.clock()
        self.meter.reset(now)
        self.label = self.hardware.label
        self.vanished = False
        self.held = False  # a start queued behind resources_unavailable
        self.creating = initial_state == "creating"
        self.exited_at: float | None = None
        self.forced: str | None = None  # a status set from the console (FORCED_STATUSES)
        self.forced_until = math.inf
        self.stop_at = now  # actual becomes stopped at this reading
        self.stop_from = STOPPED  # the actual status shown until stop_at
        if initial_state == STOPPED:
            self.intended = STOPPED
            self.loading_at = self.running_at = math.inf
        elif initial_state == RUNNING:
            self.intended = RUNNING
            self.loading_at = self.running_at = now
        else:
            self.intended = RUNNING
            self.loading_at = now + self.timing.create_delay
            self.running_at = self.loading_at + self.timing.load_delay

    # --- reading ---

    def actual_status(self, now: float) -> str | None:
        """Return what the machine is doing at ``now``."""
        if self.forced is not None and now < self.forced_until:
            return self.forced
        if self.intended == STOPPED:
            return self.stop_from if now < self.stop_at else STOPPED
        if self.exited_at is not None and now >= self.exited_at:
            return EXITED
        if now >= self.running_at:
            return RUNNING
        if now >= self.loading_at:
            return LOADING
        return None if self.creating else STOPPED

    def is_running(self, now: float) -> bool:
        """Return True when actual and intended status are both running."""
        return self.intended == RUNNING and self.actual_status(now) == RUNNING

    def is_warm(self, now: float) -> bool:
        """Return True once the model has had warm_delay seconds of running."""
        return self.is_running(now) and now >= self.running_at + self.timing.warm_delay

    @property
    def storage_dph(self) -> float:
        """Return storage $/hour: storage_cost ($/GB/month) x disk_space / 720."""
        return self.hardware.storage_cost * self.hardware.disk_space / 720

    # --- billing ---

    def accrue(self, now: float) -> None:
        """Bill GPU (while running) and storage (unless destroyed) up to now."""
        meter = self.meter
        start = meter.billed_until if meter.billed_until is not None else now
        if now <= start:
            return
        edges = (self.loading_at, self.running_at, self.stop_at, self.exited_at)
        cuts = sorted({t for t in edges if t is not None and start < t < now})
        for a, b in zip([start, *cuts], [*cuts, now], strict=True):
            if self.vanished:
                continue
            if self.actual_status(a) == RUNNING:
                meter.add(a, b, "gpu", self.hardware.dph_base)
            meter.add(a, b, "disk", self.storage_dph)
        meter.billed_until = now

    def charge_rows(self, gte: float, lte: float) -> list[dict]:
        """Return vast.ai's charge rows for the days overlapping [gte, lte], accrued to now."""
        self.accrue(self.clock())
        return self.meter.rows(self.id, self.hardware.gpu_name, gte, lte)

    # --- acting ---

    def start_needed(self, now: float) -> bool:
        """Return False when a start would be a no-op (running or already on its way)."""
        return not (self.intended == RUNNING and self.actual_status(now) != EXITED)

    def force_status(self, now: float, status: str) -> bool:
        """Show ``status`` (one of FORCED_STATUSES) from now on; False if it was shown already."""
        if status not in FORCED_STATUSES:
            raise ValueError(f"status must be one of {', '.join(FORCED_STATUSES)}")
        changed = self.actual_status(now) != status
        self.forced = status
        self.forced_until = now + self.timing.load_delay if status == "rebooting" else math.inf
        return changed

    def recover(self, now: float) -> bool:
        """End a forced status: back to what the lifecycle says. False if none was forced."""
        changed = self.forced is not None and now < self.forced_until
        self.forced, self.forced_until = None, math.inf
        return changed

    def request_start(self, now: float, gpu_free: bool = True) -> str:
        """Ask for running; return "noop", "started" or "queued" (GPU taken, held in scheduling)."""
        self.accrue(now)
        if self.forced is not None and now < self.forced_until and self.forced != "rebooting":
            self.forced, self.forced_until = None, math.inf
            self.intended = STOPPED  # vast.ai reschedules it as a fresh start
        if not self.start_needed(now):
            return "noop"
        actual = self.actual_status(now)
        if self.intended == STOPPED and actual in (RUNNING, LOADING) and now < self.stop_at:
            # A stop still taking effect is cancelled: the container never went away.
            self.intended = RUNNING
            return "started"
        self.intended = RUNNING
        self.exited_at = None
        self.creating = False
        self.held = not gpu_free
        self._schedule_boot(now)
        return "queued" if self.held else "started"

    def release_hold(self, now: float) -> None:
        """The GPU became free: a queued start begins scheduling now."""
        self.accrue(now)
        if self.held:
            self.held = False
            self._schedule_boot(now)

    def request_stop(self, now: float) -> None:
        """Ask for stopped; the old actual status lingers for stop_delay seconds."""
        self.accrue(now)
        actual = self.actual_status(now)
        self.forced, self.forced_until = None, math.inf
        if self.intended == STOPPED:
            return
        self.intended = STOPPED
        self.held = False
        self.creating = False
        lingering = actual in (RUNNING, LOADING, EXITED)
        self.stop_from = actual if lingering else STOPPED
        self.stop_at = now + self.timing.stop_delay if lingering else now
        # loading_at/running_at are kept: a start within stop_delay resumes the same boot.

    def exit_container(self, now: float) -> bool:
        """The container died: actual exited, intended stays running. False if none was up."""
        self.accrue(now)
        if self.intended != RUNNING or self.actual_status(now) not in (RUNNING, LOADING):
            return False
        self.exited_at = now
        return True

    def _schedule_boot(self, now: float) -> None:
        if self.held:
            self.loading_at = self.running_at = math.inf
        else:
            self.loading_at = now + self.timing.schedule_delay
            self.running_at = self.loading_at + self.timing.load_delay

    # --- the shape vast.ai answers ---

    def as_api_dict(
        self, now: float, llm_port: int, host_ports: dict[int, int] | None = None
    ) -> dict:
        """Return the instance object exactly as GET /api/v0/instances/{id}/ shows it."""
        hw = self.hardware
        actual = self.actual_status(now)
        running = self.is_running(now)
        storage_total_cost = self.storage_dph
        row = {
            "id": self.id,
            "actual_status": actual,
            "intended_status": "frozen" if actual == "frozen" else self.intended,
            "cur_state": RUNNING if actual in (RUNNING, LOADING) else STOPPED,
            "next_state": self.intended,
            "status_msg": self._status_msg(actual),
            "gpu_name": hw.gpu_name,
            "num_gpus": hw.num_gpus,
            "dph_base": hw.dph_base,
            "storage_cost": hw.storage_cost,
            "disk_space": hw.disk_space,
            "storage_total_cost": storage_total_cost,
            "dph_total": hw.dph_base + storage_total_cost,
            "public_ipaddr": "127.0.0.1\n",
            "start_date": self.start_date,
            "uptime_mins": round((now - self.running_at) / 60, 2) if running else None,
            "label": self.label,
            "machine_id": hw.machine_id,
            "host_id": 4242,
            "ssh_host": "127.0.0.1",
            "ssh_port": 20000 + self.id % 10000,
            "static_ip": False,
            "direct_port_start": -1,
            "direct_port_end": -1,
            "image_uuid": hw.image,
            "extra_env": [],  # the official client turns this list of pairs into a dict
            "gpu_util": 0.0 if running else None,
            "cpu_cores_effective": 8.0,
            "cpu_ram": 64000,
            "inet_up": 500.0,
            "inet_down": 800.0,
            "reliability2": 0.995,
        }
        if running:
            row["ports"] = {
                f"{port}/tcp": [
                    {"HostIp": "0.0.0.0", "HostPort": str((host_ports or {}).get(port, llm_port))}
                ]
                for port in (8000, 8001)
            }
        return row

    def _status_msg(self, actual: str | None) -> str | None:
        if actual in FORCED_MESSAGES:
            return FORCED_MESSAGES[actual]
        if actual == EXITED:
            return "Error: container exited with code 137 (OOMKilled)"
        if self.intended == RUNNING and self.held:
            return "Required resources are currently unavailable, state change queued."
        if actual == LOADING:
            return f"Pulling image {self.hardware.image}"
        if actual == RUNNING:
            return "success, running " + self.hardware.image.replace(":", "_") + "/jupyter"
        return None
