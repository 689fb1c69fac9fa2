"""The simulated account both servers share: its instances, the market, faults and logs.

The account starts with one instance (the "first", ``Backend.instance``); creating from an
offer adds more (rentals.py). Console actions, billing switches and the contract route act on
the first instance unless told an ``instance_id``, so the single-instance routes keep working.
One lock guards the account: every instance shares it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from .billing import check_billing_options
from .copying import CopyJob
from .faults import Fault, FaultBook, RateLimiter
from .instance import FORCED_STATUSES, RUNNING, SimInstance
from .instance_shape import instance_object
from .logs import RequestLog
from .market import Machine, Market, default_machines
from .recipe import DEFAULT_TEMPLATES, Recipe
from .vllm_metrics import VllmMetrics

EXTERNAL_ACTIONS = (
    "start",
    "stop",
    "exit",
    "vanish",
    "appear",
    "recover",
    "expire",
    *FORCED_STATUSES,
)


@dataclass
class LlmConfig:
    """What the simulated LLM stack on each instance serves."""

    model: str = "sim-model"
    completion: str = "Hello from the simulated vast.ai instance."
    api_key: str | None = None  # when set, the LLM stack wants "Authorization: Bearer <key>"
    token_delay_s: float = 0.0  # seconds per generated token: a long stream takes this x tokens
    serve_metrics: bool = True  # False: /metrics answers 404, as a stack without that route
    metrics_token: str | None = None  # when set, /metrics wants "Authorization: Bearer <token>"
    max_num_seqs: int = 256  # requests generated at once; more wait (vllm:num_requests_waiting)
    # As vLLM (vllm-project/vllm#22545, #29928): when every request in flight is aborted, the
    # running/waiting gauges keep their values until the engine runs another request.
    sticky_gauges: bool = True
    # False: vLLM started with --disable-log-stats, whose /metrics still answers 200 but with
    # the process's own metrics only, no vllm: sample at all.
    log_stats: bool = True


def non_negative(value: object) -> bool:
    """Tell whether a JSON value is a number >= 0 (booleans are not numbers here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


class Backend:
    """Everything one simulated vast.ai account holds, safe to use from server threads."""

    def __init__(
        self,
        api_key: str,
        instance: SimInstance,
        initial_state: str,
        rate_limit: dict[str, float] | None,
        llm: LlmConfig,
        clip_charges: bool = False,
        machines: list[Machine] | None = None,
    ):
        self.api_key = api_key
        self.lock = instance.lock
        self.initial_state = initial_state
        self.first_id = instance.id
        self.instances: dict[int, SimInstance] = {instance.id: instance}
        self.market = Market(machines or default_machines(instance.hardware))
        if instance.hardware.machine_id not in self.market.machines:
            raise ValueError("the first instance's machine_id must be one of the machines")
        self.templates = dict(DEFAULT_TEMPLATES)
        self.copies: list[CopyJob] = []
        self.faults = FaultBook()
        self._fault_took_gpu = False  # resources_unavailable took the first machine's GPU
        self.rate_limiter = RateLimiter(rate_limit)
        self.llm = llm
        instance.metrics = self.new_metrics()
        self.billing_read = True  # False: the key lacks billing_read, the charges answer 403
        # Whether charge rows are clipped to the asked day range: vast.ai does not document
        # it, so the default is the whole contract's amount (see billing.py).
        self.clip_charges = clip_charges
        # Set by the runner: serve a new instance's LLM stack, or stop serving a forgotten one.
        self.serve_llm: Callable[[SimInstance], None] = lambda inst: None
        self.forget_llm: Callable[[int], None] = lambda instance_id: None
        self.closing = threading.Event()
        self.log = RequestLog()

    # --- the first instance, as the single-instance simulator had it ---

    @property
    def instance(self) -> SimInstance:
        """Return the account's first instance (the "current" one of the control routes)."""
        return self.instances[self.first_id]

    @property
    def instance_api_key(self) -> str:
        """Return the first instance's own key (its CONTAINER_API_KEY)."""
        return self.instance.api_key

    @property
    def metrics(self) -> VllmMetrics:
        """Return the first instance's vLLM metrics."""
        return self.instance.metrics

    @property
    def llm_port(self) -> int:
        """Return the port the first instance's LLM stack listens on."""
        return self.instance.llm_port

    @llm_port.setter
    def llm_port(self, port: int) -> None:
        self.instance.llm_port = port

    @property
    def host_ports(self) -> dict[int, int]:
        """Return the first instance's container port -> host port overrides."""
        return self.instance.host_ports

    @host_ports.setter
    def host_ports(self, ports: dict[int, int]) -> None:
        self.instance.host_ports = ports

    @property
    def clock(self) -> Callable[[], float]:
        """Return the clock every phase is measured on."""
        return self.instance.clock

    def pause_for(self, seconds: float) -> None:
        """Hold an answer back, cut short when the simulator stops."""
        if seconds > 0:
            self.closing.wait(seconds)

    # --- instances ---

    def new_metrics(self) -> VllmMetrics:
        """Return the metrics of a fresh LLM stack."""
        llm = self.llm
        return VllmMetrics(llm.model, max(1, llm.max_num_seqs), llm.sticky_gauges)

    def find(self, instance_id: int | None = None) -> SimInstance | None:
        """Return an instance of the account (the first without an id), gone or not."""
        return self.instances.get(self.first_id if instance_id is None else instance_id)

    def target(self, instance_id: object = None) -> SimInstance:
        """Return the instance a control request names; raise ValueError for an unknown id."""
        if instance_id is not None and (
            not isinstance(instance_id, int) or isinstance(instance_id, bool)
        ):
            raise ValueError("instance_id must be an instance's id (a number)")
        inst = self.find(instance_id)
        if inst is None:
            raise ValueError(f"no instance {instance_id} in the account")
        return inst

    def live(self, instance_id: int) -> SimInstance | None:
        """Return the instance the API still shows, settled to now, or None."""
        inst = self.instances.get(instance_id)
        if inst is None:
            return None
        inst.settle(self.clock())
        return None if inst.gone else inst

    def add_instance(
        self, machine: Machine, recipe: Recipe, disk: float, label: str | None, initial: str
    ) -> SimInstance:
        """Create an instance on a machine, serve its LLM stack, and return it."""
        first = self.instance
        inst = SimInstance(
            max(self.instances) + 1,
            replace(first.timing),
            machine.hardware(disk, recipe.image, label),
            first.clock,
            first.clock,  # not read: the epoch offset below is the account's
            initial,
            lock=self.lock,
            recipe=recipe,
            epoch_offset=first.meter.epoch_offset,
        )
        inst.metrics = self.new_metrics()
        self.instances[inst.id] = inst
        self.serve_llm(inst)
        return inst

    def instance_view(self, instance_id: int | None = None) -> dict | None:
        """Return an instance as the API shows it now, or None when it is gone."""
        with self.lock:
            now = self.clock()
            self.settle_copies(now)
            inst = self.live(self.first_id if instance_id is None else instance_id)
            if inst is None:
                return None
            return instance_object(inst, now, self.copy_status(inst.id, now))

    # --- GPUs: free, held by one of the account's instances, or taken by another renter ---

    def holds_gpu(self, inst: SimInstance, now: float) -> bool:
        """Tell whether an instance holds its machine's GPU (running or on its way)."""
        inst.settle(now)
        return not inst.gone and inst.intended == RUNNING and not inst.held

    def gpu_free_on(self, machine: Machine, but: SimInstance | None = None) -> bool:
        """Tell whether a machine's GPU is free for ``but`` (or for a new instance)."""
        if machine.taken:
            return False
        now = self.clock()
        return not any(
            inst is not but
            and inst.hardware.machine_id == machine.machine_id
            and self.holds_gpu(inst, now)
            for inst in self.instances.values()
        )

    def gpu_free_for(self, inst: SimInstance) -> bool:
        """Tell whether the GPU of an instance's machine is free for it."""
        machine = self.market.machines.get(inst.hardware.machine_id)
        return machine is None or self.gpu_free_on(machine, but=inst)

    def set_taken(self, machine_id: int, taken: bool) -> Machine:
        """Let another renter take a machine's GPU, or give it back (queued starts proceed)."""
        with self.lock:
            machine = self.market.machine(machine_id)
            machine.taken = taken
            if not taken:
                self.release_holds(machine.machine_id)
            return machine

    def release_holds(self, machine_id: int) -> None:
        """Let the first start queued on a machine proceed, if its GPU is free now."""
        now = self.clock()
        for inst in sorted(self.instances.values(), key=lambda i: i.id):
            if inst.hardware.machine_id == machine_id and inst.held and not inst.gone:
                if self.gpu_free_for(inst):
                    inst.release_hold(now)
                return

    def stop(self, inst: SimInstance) -> None:
        """Stop an instance; a start queued behind its GPU may then proceed."""
        inst.request_stop(self.clock())
        self.release_holds(inst.hardware.machine_id)

    def destroy(self, inst: SimInstance) -> None:
        """Destroy an instance for good; its GPU and storage are released."""
        inst.destroy(self.clock())
        self.release_holds(inst.hardware.machine_id)

    # --- copies between instances ---

    def settle_copies(self, now: float) -> None:
        """Write the files of every copy that has ended by now."""
        for job in self.copies:
            if not job.done and now >= job.ends:
                job.done = True
                dst = self.instances.get(job.dst_id)
                if dst is not None and not dst.gone:
                    dst.files.update(job.files)

    def copy_status(self, instance_id: int, now: float) -> str | None:
        """Return the status bar's words about a copy under way, if any."""
        notes = (job.status_for(instance_id, now) for job in self.copies if not job.done)
        return next((note for note in notes if note), None)

    # --- the console and the fault switchboard ---

    def external(self, action: str, instance_id: object = None) -> bool:
        """Change an instance as if from the vast.ai console; False if it had no effect."""
        if action not in EXTERNAL_ACTIONS:
            raise ValueError(f"action must be one of {', '.join(EXTERNAL_ACTIONS)}")
        with self.lock:
            inst = self.target(instance_id)
            now = self.clock()
            inst.accrue(now)
            if action == "appear":
                changed, inst.vanished = inst.vanished, False
                return changed
            if inst.gone:
                return False
            if action == "vanish":
                inst.vanished = True
                return True
            if action == "expire":
                changed = not inst.expired
                inst.set_end_date(now, now + inst.meter.epoch_offset)
                inst.settle(now)
                return changed
            if action == "start":
                outcome = inst.request_start(now, gpu_free=self.gpu_free_for(inst))
                return outcome in ("started", "queued")
            if action == "stop":
                changed = inst.intended != "stopped"
                self.stop(inst)
                return changed
            if action == "recover":
                return inst.recover(now)
            if action in FORCED_STATUSES:
                return inst.force_status(now, action)
            return inst.exit_container(now)

    def add_fault(self, kind: str, **options) -> Fault:
        """Activate a fault (see faults.Fault); raise ValueError for a bad one.

        resources_unavailable is another renter taking the first instance's machine.
        """
        fault = self.faults.add(Fault.from_options(kind, **options))
        if kind == "resources_unavailable":
            with self.lock:
                machine = self.market.machines[self.instance.hardware.machine_id]
                if not machine.taken:
                    machine.taken, self._fault_took_gpu = True, True
        return fault

    def clear_faults(self, kind: str | None = None) -> int:
        """Remove faults; a start queued behind a taken GPU proceeds once none is left."""
        removed = self.faults.clear(kind)
        with self.lock:
            if self._fault_took_gpu and not self.faults.gpu_busy():
                self._fault_took_gpu = False
                self.set_taken(self.instance.hardware.machine_id, False)
            self.release_holds(self.instance.hardware.machine_id)
        return removed

    # --- billing and contracts ---

    def set_billing(self, **options) -> dict:
        """Bill the first instance differently from now on (billing.BILLING_OPTIONS)."""
        inst = self.instance
        check_billing_options(options)
        factor = options.get("factor", {})
        with self.lock:
            if not inst.gone:
                inst.accrue(self.clock())  # what ran so far is billed at the old terms
            inst.meter.factor.update({k: float(v) for k, v in factor.items()})
            self.billing_read = options.get("billing_read", self.billing_read)
            self.clip_charges = options.get("clip_to_range", self.clip_charges)
            for name in ("dph_base", "storage_cost", "stopped_storage_factor"):
                if name in options:
                    setattr(inst.hardware, name, float(options[name]))
            return self.billing()

    def billing(self) -> dict:
        """Return how the first instance is billed, and its bill per UTC day and item so far."""
        inst = self.instance
        with self.lock:
            if not inst.gone:
                inst.accrue(self.clock())
            return {
                **inst.meter.describe(),
                "billing_read": self.billing_read,
                "clip_to_range": self.clip_charges,
                "stopped_storage_factor": inst.hardware.stopped_storage_factor,
            }

    def charge_rows(self, gte: float, lte: float) -> list[dict]:
        """Return one charges row per contract overlapping [gte, lte] (epoch seconds)."""
        with self.lock:
            rows = (i.charge_row(gte, lte, self.clip_charges) for i in self.instances.values())
            return [row for row in rows if row is not None]

    def set_contract(self, ends_at: object, instance_id: object = None) -> dict | None:
        """End an instance's contract at ``ends_at`` (epoch); return the instance as shown."""
        if not non_negative(ends_at):
            raise ValueError("ends_at must be epoch seconds")
        with self.lock:
            inst = self.target(instance_id)
            now = self.clock()
            inst.settle(now)
            if inst.gone:
                raise ValueError(f"instance {inst.id} is gone")
            inst.set_end_date(now, float(ends_at))
            return self.instance_view(inst.id)

    def add_bandwidth(self, inst: SimInstance, received: int, sent: int) -> None:
        """Bill an instance's LLM traffic: bytes into it (bwd) and out of it (bwu)."""
        with self.lock:
            inst.add_bandwidth(self.clock(), received, sent)

    # --- reset and state ---

    def reset(self) -> None:
        """Return to the initial state: one instance, the first market, no faults or logs."""
        self.faults.clear()
        self.rate_limiter.reset()
        self.log.clear()
        with self.lock:
            created = [i for i in self.instances if i != self.first_id]
            for instance_id in created:
                del self.instances[instance_id]
            self.market.reset()
            self._fault_took_gpu = False
            self.copies.clear()
            self.instance.reset(self.initial_state)
        # Outside the lock: a request on that LLM stack may be waiting for it.
        for instance_id in created:
            self.forget_llm(instance_id)

    def snapshot(self) -> dict:
        """Return everything a test or a demo may want to see at once."""
        inst = self.instance
        with self.lock:
            now = self.clock()
            return {
                "instance": self.instance_view(),
                "instances": [
                    self.instance_view(i) for i in self.instances if self.live(i) is not None
                ],
                "vanished": inst.vanished,
                "held": inst.held,
                "warm": inst.is_warm(now),
                "clock": now,
                "timing": vars(inst.timing).copy(),
                "faults": self.faults.describe(),
                "rate_limit": dict(self.rate_limiter.intervals),
                "llm_port": self.llm_port,
                "billing": self.billing(),
                "contract": {"end_date": inst.end_date, "expired": inst.expired},
                "machines": [m.describe() for m in self.market.machines.values()],
                "llm": {
                    "token_delay_s": self.llm.token_delay_s,
                    "serve_metrics": self.llm.serve_metrics,
                    "sticky_gauges": self.llm.sticky_gauges,
                    "log_stats": self.llm.log_stats,
                    "requests_running": self.metrics.running,
                    "requests_waiting": self.metrics.waiting,
                    "gauges": self.metrics.gauges(),
                },
            }
