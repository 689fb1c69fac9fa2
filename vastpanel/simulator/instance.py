"""The simulated instance: a lifecycle derived lazily from timestamps on an injectable clock."""

from __future__ import annotations

import math
import secrets
import threading
from collections.abc import Callable

from .billing import Meter
from .hardware import Hardware
from .recipe import Recipe, default_recipe
from .timing import Timing

RUNNING = "running"
STOPPED = "stopped"
LOADING = "loading"
EXITED = "exited"
INITIAL_STATES = ("stopped", "running", "creating")
# Statuses the console (the control API) can put the instance in, until "recover", a start or
# a stop; "rebooting" ends by itself after load_delay, back to the lifecycle's own status.
FORCED_STATUSES = ("created", "frozen", "rebooting", "unknown", "offline")
# GPU time is billed while running and while frozen: vast.ai's show-instance reference says of
# frozen "Container is paused with memory preserved. GPU charges apply." (vast-ai/docs
# cli/reference/show-instance.mdx); its billing guide bills the "active/connected" state only,
# so loading, rebooting, exited and unknown are not billed.
GPU_BILLED = (RUNNING, "frozen")
# The machine holds the instance's GPU in these statuses (vast.ai's cur_state "running"); in the
# others storage is billed at the stopped rate. Nothing is billed while the host is offline
# ("every second your instance exists and is online", vast.ai's billing help).
GPU_HELD = (RUNNING, LOADING, "frozen", "rebooting")
# "Expired instances may be deleted 48 hours after expiration" (vast.ai's overview and
# instance-types guide); the simulator deletes them then.
EXPIRED_DELETE_AFTER_S = 48 * 3600.0


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
        *,
        ends_at: float | None = None,
        lock: threading.RLock | None = None,
        recipe: Recipe | None = None,
        files: dict[str, str] | None = None,
        epoch_offset: float | None = None,
    ):
        if initial_state not in INITIAL_STATES:
            raise ValueError(f"initial_state must be one of {INITIAL_STATES}")
        self.id = instance_id
        self.timing = timing
        self.hardware = hardware
        self.clock = clock
        self.lock = lock or threading.RLock()
        # What it runs, and its own key (vast.ai's CONTAINER_API_KEY): it may stop or destroy
        # this instance only (api.py).
        self.recipe = recipe or default_recipe(hardware.image)
        self.api_key = "inst-" + secrets.token_hex(16)
        self.initial_files = dict(files or {})
        self.llm_port = 0  # where its LLM stack listens, once it does
        self.host_ports: dict[int, int] = {}  # container port -> host port, else the LLM's
        now = clock()
        offset = wall_clock() - now if epoch_offset is None else epoch_offset
        wall = now + offset
        self.start_date = wall if initial_state == "creating" else wall - hardware.age_seconds
        self.meter = Meter(epoch_offset=offset)
        self.initial_end_date = (
            wall + hardware.contract_days * 86400 if ends_at is None else ends_at
        )
        self.reset(initial_state)

    def reset(self, initial_state: str = STOPPED) -> None:
        """Put the instance back in a settled initial state, billing from its creation on."""
        now = self.clock()
        self.meter.reset(now)
        self.meter.contract_start = self.start_date
        self.label = self.hardware.label
        self.files = dict(self.initial_files)  # its disk: path -> content
        self.vanished = False
        self.destroyed_at: float | None = None
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
        self.expired = False
        self.set_end_date(now, self.initial_end_date)
        self._bill_before(now, initial_state)

    def _bill_before(self, now: float, initial_state: str) -> None:
        """Bill the time from creation until the simulator started, in the initial state."""
        since = self.start_date - self.meter.epoch_offset
        if since >= now:
            return
        held = initial_state == RUNNING
        if held:
            self.meter.add(since, now, "gpu", self.hardware.dph_base)
        self.meter.add(since, now, "disk", self.storage_dph_in(RUNNING if held else STOPPED))

    # --- the contract ---

    @property
    def end_date(self) -> float:
        """Return the contract's end in epoch seconds (vast.ai's end_date)."""
        return self._end_date

    def set_end_date(self, now: float, end_date: float) -> None:
        """End the contract at ``end_date`` (epoch): from then on it stops and cannot start.

        An end date already past takes effect now (billing is never rewritten); a later one
        lets an expired instance start again, as when a host extends the contract.
        """
        if self.destroyed_at is None and now > self.meter.billed_until:
            self.accrue(now)
        self._end_date = float(end_date)
        end = end_date - self.meter.epoch_offset
        if end > now:
            self.expired = False
        self._expires_at = max(end, now)
        self._deleted_at = max(end + EXPIRED_DELETE_AFTER_S, now)

    def settle(self, now: float) -> None:
        """Apply what the contract's end did by ``now``: the stop, then the deletion."""
        if self.destroyed_at is not None or self.vanished:
            return
        if not self.expired and now >= self._expires_at:
            self._bill_until(self._expires_at)
            self.expired = True
            self._stop(self._expires_at, linger=0.0)  # the host stops it at once
        if self.expired and now >= self._deleted_at:
            self._bill_until(self._deleted_at)
            self.destroy(self._deleted_at)

    def destroy(self, now: float) -> None:
        """End the contract for good: nothing is billed from ``now`` on."""
        self._bill_until(now)
        self.destroyed_at = now
        self.meter.contract_end = now + self.meter.epoch_offset
        self.intended, self.held, self.forced = STOPPED, False, None

    @property
    def gone(self) -> bool:
        """Return True when the API no longer shows the instance (destroyed or vanished)."""
        return self.vanished or self.destroyed_at is not None

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
        self.settle(now)
        return not self.gone and self.intended == RUNNING and self.actual_status(now) == RUNNING

    def is_warm(self, now: float) -> bool:
        """Return True once the model has had warm_delay seconds of running."""
        return self.is_running(now) and now >= self.running_at + self.timing.warm_delay

    @property
    def storage_dph(self) -> float:
        """Return storage $/hour while running: storage_cost ($/GB/month) x disk_space / 720."""
        return self.hardware.storage_cost * self.hardware.disk_space / 720

    def storage_dph_in(self, status: str | None) -> float:
        """Return storage $/hour in a status: higher when the machine holds no GPU for it."""
        if status in GPU_HELD or status is None or status == "created":
            return self.storage_dph
        return self.storage_dph * self.hardware.stopped_storage_factor

    # --- billing ---

    def accrue(self, now: float) -> None:
        """Bill up to now, after applying what the contract's end did by then."""
        self.settle(now)
        self._bill_until(now)

    def _bill_until(self, now: float) -> None:
        """Bill GPU (running or frozen) and storage (at the rate in force) up to now."""
        meter = self.meter
        start = meter.billed_until if meter.billed_until is not None else now
        if self.destroyed_at is not None:
            now = min(now, self.destroyed_at)
        if now <= start:
            return
        edges = (self.loading_at, self.running_at, self.stop_at, self.exited_at, self.forced_until)
        cuts = sorted({t for t in edges if t is not None and start < t < now})
        for a, b in zip([start, *cuts], [*cuts, now], strict=True):
            if self.vanished:
                continue
            status = self.actual_status(a)
            if status in GPU_BILLED:
                meter.add(a, b, "gpu", self.hardware.dph_base)
            if status != "offline":
                meter.add(a, b, "disk", self.storage_dph_in(status))
        meter.billed_until = now

    def add_bandwidth(self, now: float, into: int, out: int) -> None:
        """Bill bytes into the instance (bwd) and out of it (bwu)."""
        self.accrue(now)
        self.meter.add_bytes(now, "bwd", into, self.hardware.inet_down_cost)
        self.meter.add_bytes(now, "bwu", out, self.hardware.inet_up_cost)

    def charge_row(self, gte: float, lte: float, clip: bool) -> dict | None:
        """Return the contract's row of vast.ai's charges for [gte, lte], accrued to now."""
        now = self.clock()
        if not self.gone:
            self.accrue(now)
        return self.meter.contract_row(self.id, self.label, gte, lte, now, clip)

    # --- acting ---

    def start_needed(self, now: float) -> bool:
        """Return False when a start would be a no-op (running or already on its way)."""
        return not (self.intended == RUNNING and self.actual_status(now) != EXITED)

    def force_status(self, now: float, status: str) -> bool:
        """Show ``status`` (one of FORCED_STATUSES) from now on; False if it was shown already."""
        if status not in FORCED_STATUSES:
            raise ValueError(f"status must be one of {', '.join(FORCED_STATUSES)}")
        self.accrue(now)
        changed = self.actual_status(now) != status
        self.forced = status
        self.forced_until = now + self.timing.load_delay if status == "rebooting" else math.inf
        return changed

    def recover(self, now: float) -> bool:
        """End a forced status: back to what the lifecycle says. False if none was forced."""
        self.accrue(now)
        changed = self.forced is not None and now < self.forced_until
        self.forced, self.forced_until = None, math.inf
        return changed

    def request_start(self, now: float, gpu_free: bool = True) -> str:
        """Ask for running; return "noop", "started", "queued" (GPU taken) or "expired"."""
        self.accrue(now)
        if self.expired:
            return "expired"
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
        self._stop(now, linger=self.timing.stop_delay)

    def _stop(self, now: float, linger: float) -> None:
        actual = self.actual_status(now)
        self.forced, self.forced_until = None, math.inf
        if self.intended == STOPPED:
            return
        self.intended = STOPPED
        self.held = False
        self.creating = False
        lingering = actual in (RUNNING, LOADING, EXITED) and linger > 0
        self.stop_from = actual if lingering else STOPPED
        self.stop_at = now + linger if lingering else now
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
