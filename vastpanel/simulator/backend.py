"""The simulated account that both servers share: one instance, faults and request logs."""

from __future__ import annotations

import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .faults import Fault, FaultBook, RateLimiter
from .instance import FORCED_STATUSES, SimInstance
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
BILLING_OPTIONS = (
    "factor",
    "billing_read",
    "dph_base",
    "storage_cost",
    "stopped_storage_factor",
    "clip_to_range",
)
LOG_LIMIT = 10_000  # a demo left polling for days keeps only the latest requests


@dataclass
class LlmConfig:
    """What the simulated LLM stack on the instance serves."""

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


def _non_negative(value: object) -> bool:
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
    ):
        self.api_key = api_key
        # The instance's own key, as vast.ai puts CONTAINER_API_KEY in every instance: it may
        # only stop that instance (see api.py).
        self.instance_api_key = "inst-" + secrets.token_hex(16)
        self.instance = instance
        self.initial_state = initial_state
        self.faults = FaultBook()
        self.rate_limiter = RateLimiter(rate_limit)
        self.llm = llm
        self.metrics = VllmMetrics(llm.model, llm.max_num_seqs, llm.sticky_gauges)
        self.billing_read = True  # False: the key lacks billing_read, the charges answer 403
        # Whether charge rows are clipped to the asked day range: vast.ai does not document
        # it, so the default is the whole contract's amount (see billing.py).
        self.clip_charges = clip_charges
        self.llm_port = 0  # set once the LLM server is listening
        self.host_ports: dict[int, int] = {}  # container port -> host port, else the LLM's
        self.closing = threading.Event()
        self._log: deque[dict] = deque(maxlen=LOG_LIMIT)
        self._llm_log: deque[dict] = deque(maxlen=LOG_LIMIT)
        self._log_lock = threading.Lock()

    @property
    def clock(self) -> Callable[[], float]:
        """Return the clock every phase is measured on."""
        return self.instance.clock

    def pause_for(self, seconds: float) -> None:
        """Hold an answer back, cut short when the simulator stops."""
        if seconds > 0:
            self.closing.wait(seconds)

    # --- request logs (never holding the Authorization header) ---

    def record(self, entry: dict, llm: bool = False) -> None:
        """Append one answered request to the API log or the LLM log."""
        with self._log_lock:
            (self._llm_log if llm else self._log).append(entry)

    def requests(self, method: str | None = None, path: str | None = None, llm=False) -> list:
        """Return logged requests, optionally only those with ``method`` and/or ``path``."""
        with self._log_lock:
            rows = list(self._llm_log if llm else self._log)
        return [
            dict(r)
            for r in rows
            if (method is None or r["method"] == method.upper())
            and (path is None or r["path"] == path)
        ]

    def clear_requests(self) -> None:
        """Empty both request logs."""
        with self._log_lock:
            self._log.clear()
            self._llm_log.clear()

    # --- the console and the fault switchboard ---

    def instance_view(self) -> dict | None:
        """Return the instance as the API shows it now, or None when it has vanished."""
        inst = self.instance
        with inst.lock:
            now = self.clock()
            inst.settle(now)
            if inst.gone:
                return None
            return inst.as_api_dict(now, self.llm_port, self.host_ports)

    def external(self, action: str) -> bool:
        """Change the instance as if from the vast.ai console; False if it had no effect."""
        if action not in EXTERNAL_ACTIONS:
            raise ValueError(f"action must be one of {', '.join(EXTERNAL_ACTIONS)}")
        inst = self.instance
        with inst.lock:
            now = self.clock()
            inst.accrue(now)
            if action == "appear":
                changed, inst.vanished = inst.vanished, False
                return changed
            if inst.gone:
                return False
            if action == "expire":
                changed = not inst.expired
                inst.set_end_date(now, now + inst.meter.epoch_offset)
                inst.settle(now)
                return changed
            if action == "vanish":
                inst.vanished = True
                return True
            if action == "start":
                outcome = inst.request_start(now, gpu_free=not self.faults.gpu_busy())
                return outcome in ("started", "queued")
            if action == "stop":
                changed = inst.intended != "stopped"
                inst.request_stop(now)
                return changed
            if action == "recover":
                return inst.recover(now)
            if action in FORCED_STATUSES:
                return inst.force_status(now, action)
            return inst.exit_container(now)

    def set_billing(self, **options) -> dict:
        """Bill differently from now on (see BILLING_OPTIONS); what ran so far stays billed."""
        inst = self.instance
        unknown = set(options) - set(BILLING_OPTIONS)
        if unknown:
            raise ValueError(f"unknown billing options: {', '.join(sorted(unknown))}")
        factor = options.get("factor", {})
        if not isinstance(factor, dict) or any(
            k not in inst.meter.factor or not _non_negative(v) for k, v in factor.items()
        ):
            raise ValueError("factor must map gpu, disk, bwd or bwu to a number >= 0")
        for name in ("dph_base", "storage_cost"):
            if name in options and not _non_negative(options[name]):
                raise ValueError(f"{name} must be a number >= 0")
        stopped = options.get("stopped_storage_factor", 1.0)
        if not _non_negative(stopped) or stopped < 1.0:
            raise ValueError("stopped_storage_factor must be a number >= 1.0")
        for name in ("billing_read", "clip_to_range"):
            if name in options and not isinstance(options[name], bool):
                raise ValueError(f"{name} must be true or false")
        with inst.lock:
            inst.accrue(self.clock())  # what ran so far is billed at the old terms
            inst.meter.factor.update({k: float(v) for k, v in factor.items()})
            self.billing_read = options.get("billing_read", self.billing_read)
            self.clip_charges = options.get("clip_to_range", self.clip_charges)
            for name in ("dph_base", "storage_cost", "stopped_storage_factor"):
                if name in options:
                    setattr(inst.hardware, name, float(options[name]))
            return self.billing()

    def billing(self) -> dict:
        """Return how the simulator bills, and the bill per UTC day and item so far."""
        inst = self.instance
        with inst.lock:
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
        inst = self.instance
        with inst.lock:
            row = inst.charge_row(gte, lte, self.clip_charges)
        return [row] if row is not None else []

    def set_contract(self, ends_at: float) -> dict | None:
        """End the instance's contract at ``ends_at`` (epoch); return the instance as shown."""
        if not _non_negative(ends_at):
            raise ValueError("ends_at must be epoch seconds")
        inst = self.instance
        with inst.lock:
            now = self.clock()
            if inst.gone:
                raise ValueError(f"instance {inst.id} is gone")
            inst.set_end_date(now, float(ends_at))
            return self.instance_view()

    def add_bandwidth(self, received: int, sent: int) -> None:
        """Bill LLM traffic: bytes into the instance (bwd) and out of it (bwu)."""
        inst = self.instance
        with inst.lock:
            inst.add_bandwidth(self.clock(), received, sent)

    def add_fault(self, kind: str, **options) -> Fault:
        """Activate a fault (see faults.Fault); raise ValueError for a bad one."""
        return self.faults.add(Fault.from_options(kind, **options))

    def clear_faults(self, kind: str | None = None) -> int:
        """Remove faults; a start queued behind a busy GPU proceeds once none is left."""
        removed = self.faults.clear(kind)
        inst = self.instance
        with inst.lock:
            if not self.faults.gpu_busy():
                inst.release_hold(self.clock())
        return removed

    def reset(self) -> None:
        """Return to the initial state: no faults, empty logs, rate limits forgotten."""
        self.faults.clear()
        self.rate_limiter.reset()
        self.clear_requests()
        with self.instance.lock:
            self.instance.reset(self.initial_state)

    def snapshot(self) -> dict:
        """Return everything a test or a demo may want to see at once."""
        inst = self.instance
        with inst.lock:
            now = self.clock()
            return {
                "instance": self.instance_view(),
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
                "llm": {
                    "token_delay_s": self.llm.token_delay_s,
                    "serve_metrics": self.llm.serve_metrics,
                    "sticky_gauges": self.llm.sticky_gauges,
                    "requests_running": self.metrics.running,
                    "requests_waiting": self.metrics.waiting,
                    "gauges": self.metrics.gauges(),
                },
            }
