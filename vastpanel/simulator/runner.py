"""The handle tests and the demo use: both servers, faults, console actions and logs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .agent import AgentSettings, InstanceAgent
from .api import create_api_app
from .backend import Backend, LlmConfig
from .faults import DEFAULT_RATE_LIMIT, Fault
from .hardware import Hardware
from .instance import SimInstance
from .llm import create_llm_app
from .server import HOST, KeepAliveServerThread, ServerThread
from .timing import Timing


class Simulator:
    """A fake vast.ai account with one instance, served over real HTTP on loopback.

    Use it as a context manager, or call ``start()`` and ``stop()``. Like vast.ai it refuses
    a request sooner than ``rate_limit`` (GET 2 s, PUT 1 s per key) after the last accepted
    one with a plain-text 429; ``rate_limit={}`` turns that off.
    """

    def __init__(
        self,
        api_key: str = "sim-key",
        instance_id: int = 12345,
        *,
        schedule_delay: float = 1.0,
        load_delay: float = 2.0,
        warm_delay: float = 1.0,
        stop_delay: float = 0.0,
        create_delay: float = 0.0,
        initial_state: str = "stopped",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rate_limit: dict[str, float] | None = DEFAULT_RATE_LIMIT,
        port: int = 0,
        llm_port: int = 0,
        hardware: Hardware | None = None,
        llm: LlmConfig | None = None,
        quiet: bool = True,
        agent: AgentSettings | None = None,
        host_ports: dict[int, int] | None = None,
        contract_ends_at: float | None = None,
        clip_charges_to_range: bool = False,
    ):
        if not api_key:
            raise ValueError("api_key must not be empty")
        timing = Timing(schedule_delay, load_delay, warm_delay, stop_delay, create_delay)
        instance = SimInstance(
            instance_id,
            timing,
            hardware or Hardware(),
            clock,
            wall_clock,
            initial_state,
            ends_at=contract_ends_at,
        )
        self.backend = Backend(
            api_key, instance, initial_state, rate_limit, llm or LlmConfig(), clip_charges_to_range
        )
        self._api = ServerThread(
            create_api_app(self.backend, on_pause=self.pause), port, quiet, "sim-api"
        )
        self._llm = KeepAliveServerThread(create_llm_app(self.backend), llm_port)
        self._resume_timer: threading.Timer | None = None
        # host_ports maps a container port (8000, 8001) to another loopback port than the LLM's,
        # e.g. 8001 to an nginx in front of the LLM stack and the agent.
        self.backend.host_ports = dict(host_ports or {})
        self.agent = InstanceAgent(self.backend, agent, lambda: self.url) if agent else None

    # --- lifecycle ---

    def start(self) -> Simulator:
        """Serve the API and the LLM stack from background threads."""
        self.backend.closing.clear()
        self.backend.llm_port = self._llm.start()
        self._api.start()
        if self.agent is not None:
            self.agent.start()
        return self

    def stop(self) -> None:
        """Stop both servers and cut short any delayed answer."""
        self._cancel_resume()
        if self.agent is not None:
            self.agent.stop()
        self.backend.closing.set()
        self._api.stop()
        self._llm.stop()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def pause(self, seconds: float | None = None) -> None:
        """Take the API off the air (connections refused); back after ``seconds`` if given."""
        self._cancel_resume()
        self._api.stop()
        if seconds is not None:
            self._resume_timer = threading.Timer(seconds, self._api.start)
            self._resume_timer.daemon = True
            self._resume_timer.start()

    def resume(self) -> None:
        """Serve the API again on the same port."""
        self._cancel_resume()
        self._api.start()

    def _cancel_resume(self) -> None:
        timer, self._resume_timer = self._resume_timer, None
        if timer is not None:
            timer.cancel()

    # --- where it listens ---

    @property
    def url(self) -> str:
        """Return the API root to use as the vast.ai server URL."""
        return f"http://{HOST}:{self._api.port}"

    @property
    def port(self) -> int:
        """Return the API port."""
        return self._api.port

    @property
    def llm_port(self) -> int:
        """Return the loopback port the instance's 8000/tcp and 8001/tcp map to."""
        return self._llm.port

    @property
    def llm_url(self) -> str:
        """Return the LLM stack's root URL."""
        return f"http://{HOST}:{self._llm.port}"

    @property
    def paused(self) -> bool:
        """Return True while the API refuses connections."""
        return not self._api.serving

    @property
    def api_key(self) -> str:
        """Return the only key the API accepts."""
        return self.backend.api_key

    @property
    def instance_id(self) -> int:
        """Return the simulated instance's id."""
        return self.backend.instance.id

    # --- the switchboard ---

    def add_fault(self, kind: str, **options) -> Fault:
        """Activate a fault; see the package docstring for kinds and options."""
        return self.backend.add_fault(kind, **options)

    def clear_faults(self, kind: str | None = None) -> int:
        """Remove faults (all, or one kind); a start queued behind a busy GPU then proceeds."""
        return self.backend.clear_faults(kind)

    def external(self, action: str) -> bool:
        """Start, stop, exit, vanish or appear as if from the vast.ai console."""
        return self.backend.external(action)

    def set_timing(self, **delays: float) -> None:
        """Change phase durations for transitions that begin from now on."""
        inst = self.backend.instance
        with inst.lock:
            inst.timing = Timing(**{**vars(inst.timing), **delays})

    def set_billing(self, **options) -> dict:
        """Bill differently from now on (backend.BILLING_OPTIONS)."""
        return self.backend.set_billing(**options)

    def set_contract(self, ends_at: float) -> dict | None:
        """End the instance's contract at ``ends_at`` (epoch seconds)."""
        return self.backend.set_contract(ends_at)

    def charges(self) -> dict:
        """Return the bill per UTC day and item, accrued up to now, and how it is billed."""
        return self.backend.billing()

    def reset(self) -> None:
        """Back to the initial state, no faults, empty logs."""
        self.backend.reset()

    # --- what happened ---

    def instance(self) -> dict | None:
        """Return the instance exactly as GET shows it now (None once it has vanished)."""
        return self.backend.instance_view()

    def state(self) -> dict:
        """Return the snapshot GET /_sim/state answers."""
        return self.backend.snapshot()

    def requests(self, method: str | None = None, path: str | None = None) -> list[dict]:
        """Return the logged API requests, oldest first."""
        return self.backend.requests(method, path)

    def llm_requests(self, method: str | None = None, path: str | None = None) -> list[dict]:
        """Return the logged requests to the LLM stack."""
        return self.backend.requests(method, path, llm=True)

    def clear_requests(self) -> None:
        """Empty the request logs."""
        self.backend.clear_requests()
