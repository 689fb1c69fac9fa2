"""The handle tests and the demo use: the servers, faults, console actions, market and logs."""

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
from .market import Machine
from .recipe import Recipe
from .server import HOST, KeepAliveServerThread, ServerThread
from .timing import Timing

# What the first instance's disk holds, so a copy has something to move.
DEFAULT_FILES = {
    "/workspace/README.md": "Files on the simulated instance's disk.\n",
    "/workspace/models/sim-model/config.json": '{"model_type": "sim"}\n',
}


class Simulator:
    """A fake vast.ai account, its first instance and a small market, over real HTTP on loopback.

    Use it as a context manager, or call ``start()`` and ``stop()``. Like vast.ai it refuses
    a request sooner than ``rate_limit`` (GET 2 s, PUT 1 s per key) after the last accepted
    one with a plain-text 429; ``rate_limit={}`` turns that off. Every instance, the first and
    those created from offers, serves its own LLM stack on its own loopback port.
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
        machines: list[Machine] | None = None,
        gpu_taken: bool = False,
        files: dict[str, str] | None = None,
        recipe: Recipe | None = None,
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
            recipe=recipe,
            files=DEFAULT_FILES if files is None else files,
        )
        self.backend = Backend(
            api_key,
            instance,
            initial_state,
            rate_limit,
            llm or LlmConfig(),
            clip_charges_to_range,
            machines,
        )
        if gpu_taken:  # another renter has the first instance's GPU: a start stays queued
            self.backend.set_taken(instance.hardware.machine_id, True)
        self._api = ServerThread(
            create_api_app(self.backend, on_pause=self.pause), port, quiet, "sim-api"
        )
        self._llm = KeepAliveServerThread(create_llm_app(self.backend, instance_id), llm_port)
        self._more_llms: dict[int, KeepAliveServerThread] = {}
        self._serving = False
        self.backend.serve_llm = self._serve_llm
        self.backend.forget_llm = self._forget_llm
        self._resume_timer: threading.Timer | None = None
        # host_ports maps a container port (8000, 8001) to another loopback port than the LLM's,
        # e.g. 8001 to an nginx in front of the LLM stack and the agent.
        self.backend.host_ports = dict(host_ports or {})
        self.agent = InstanceAgent(self.backend, agent, lambda: self.url) if agent else None

    # --- lifecycle ---

    def start(self) -> Simulator:
        """Serve the API and every instance's LLM stack from background threads."""
        self.backend.closing.clear()
        self._serving = True
        self.backend.llm_port = self._llm.start()
        for instance_id, server in list(self._more_llms.items()):
            self.backend.instances[instance_id].llm_port = server.start()
        self._api.start()
        if self.agent is not None:
            self.agent.start()
        return self

    def stop(self) -> None:
        """Stop every server and cut short any delayed answer."""
        self._cancel_resume()
        if self.agent is not None:
            self.agent.stop()
        self.backend.closing.set()
        self._serving = False
        self._api.stop()
        self._llm.stop()
        for server in list(self._more_llms.values()):
            server.stop()

    def _serve_llm(self, inst: SimInstance) -> None:
        """Give a new instance its own LLM stack on its own port."""
        app = create_llm_app(self.backend, inst.id)
        server = KeepAliveServerThread(app, 0, name=f"sim-llm-{inst.id}", threads=16)
        self._more_llms[inst.id] = server
        if self._serving:
            inst.llm_port = server.start()

    def _forget_llm(self, instance_id: int) -> None:
        server = self._more_llms.pop(instance_id, None)
        if server is not None:
            server.stop()

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
        """Return the first instance's id."""
        return self.backend.instance.id

    @property
    def machine_id(self) -> int:
        """Return the machine the first instance runs on."""
        return self.backend.instance.hardware.machine_id

    def llm_url_of(self, instance_id: int) -> str:
        """Return the root URL of an instance's own LLM stack."""
        return f"http://{HOST}:{self.backend.instances[instance_id].llm_port}"

    # --- the switchboard ---

    def add_fault(self, kind: str, **options) -> Fault:
        """Activate a fault; see the package docstring for kinds and options."""
        return self.backend.add_fault(kind, **options)

    def clear_faults(self, kind: str | None = None) -> int:
        """Remove faults (all, or one kind); a start queued behind a busy GPU then proceeds."""
        return self.backend.clear_faults(kind)

    def external(self, action: str, instance_id: int | None = None) -> bool:
        """Act on an instance (the first by default) as if from the vast.ai console."""
        return self.backend.external(action, instance_id)

    def set_timing(self, **delays: float) -> None:
        """Change every instance's phase durations for transitions that begin from now on."""
        with self.backend.lock:
            timing = Timing(**{**vars(self.backend.instance.timing), **delays})
            for inst in self.backend.instances.values():
                inst.timing = Timing(**vars(timing))

    def take_gpu(self, machine_id: int | None = None) -> None:
        """Another renter takes a machine's GPU (the first instance's machine by default)."""
        self.backend.set_taken(machine_id or self.machine_id, True)

    def free_gpu(self, machine_id: int | None = None) -> None:
        """The other renter gives the GPU back; a start queued on the machine proceeds."""
        self.backend.set_taken(machine_id or self.machine_id, False)

    def files(self, instance_id: int | None = None) -> dict[str, str]:
        """Return the files on an instance's disk (copies that have ended included)."""
        with self.backend.lock:
            self.backend.settle_copies(self.backend.clock())
            return dict(self.backend.target(instance_id).files)

    def set_billing(self, **options) -> dict:
        """Bill differently from now on (backend.BILLING_OPTIONS)."""
        return self.backend.set_billing(**options)

    def set_contract(self, ends_at: float, instance_id: int | None = None) -> dict | None:
        """End an instance's contract (the first's by default) at ``ends_at`` (epoch)."""
        return self.backend.set_contract(ends_at, instance_id)

    def charges(self) -> dict:
        """Return the bill per UTC day and item, accrued up to now, and how it is billed."""
        return self.backend.billing()

    def reset(self) -> None:
        """Back to the initial state, no faults, empty logs."""
        self.backend.reset()

    # --- what happened ---

    def instance(self, instance_id: int | None = None) -> dict | None:
        """Return an instance (the first by default) exactly as GET shows it now, or None."""
        return self.backend.instance_view(instance_id)

    def instances(self) -> list[dict]:
        """Return every instance the API still shows, oldest first."""
        return self.backend.snapshot()["instances"]

    def state(self) -> dict:
        """Return the snapshot GET /_sim/state answers."""
        return self.backend.snapshot()

    def requests(self, method: str | None = None, path: str | None = None) -> list[dict]:
        """Return the logged API requests, oldest first."""
        return self.backend.log.requests(method, path)

    def llm_requests(self, method: str | None = None, path: str | None = None) -> list[dict]:
        """Return the logged requests to the LLM stack."""
        return self.backend.log.requests(method, path, llm=True)

    def clear_requests(self) -> None:
        """Empty the request logs."""
        self.backend.log.clear()
