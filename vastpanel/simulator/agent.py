"""The real dead-man switch (deploy/instance/vastpanel_agent.py) run inside the simulated instance.

vast.ai gives every instance its id and its own API key in the environment (CONTAINER_ID,
CONTAINER_API_KEY), and the instance's processes live only while it runs. So here: while the
simulated instance runs, the agent file runs as a subprocess with those variables, pointed at
the simulator's API and at the simulated vLLM's /metrics; when the instance stops, the process
is killed with it; the next start is a new boot (AGENT_BOOT_ID changes), with the state file
kept, as a disk is. A watcher thread follows the instance, because its lifecycle is otherwise
derived lazily from timestamps.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .backend import Backend

AGENT_FILE = Path(__file__).resolve().parents[2] / "deploy" / "instance" / "vastpanel_agent.py"
WATCH_EVERY_S = 0.05


@dataclass
class AgentSettings:
    """How the simulated instance runs its agent (the variables the operator would set)."""

    secret: str
    state_dir: Path
    grace_minutes: float = 60.0
    idle_minutes: float = 30.0
    check_seconds: float = 30.0
    port: int = 0  # where the agent listens for heartbeats; 0 picks a free one once
    log_path: Path | None = None  # the agent's stderr (its journal), appended to
    extra_env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()  # e.g. ("--dry-run",)


class InstanceAgent:
    """Runs the agent file while the simulated instance runs, one process per boot."""

    def __init__(self, backend: Backend, settings: AgentSettings, api_url):
        self.backend = backend
        self.settings = settings
        self._api_url = api_url  # a callable: the API's port is known only once it serves
        self.port = settings.port or _free_port()
        self.boots = 0  # how many agent processes were started
        self.process: subprocess.Popen | None = None
        self._boot: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def state_path(self) -> Path:
        """Return the agent's state file (kept across boots, as the instance's disk is)."""
        return self.settings.state_dir / "vastpanel-agent-state.json"

    def start(self) -> None:
        """Follow the instance from a background thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="sim-agent", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following and end the agent process."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._end_process()

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_EVERY_S):
            inst = self.backend.instance
            with inst.lock:
                now = self.backend.clock()
                running = not inst.vanished and inst.is_running(now)
                boot = inst.running_at
            with self._lock:
                alive = self.process is not None and self.process.poll() is None
                if running and (not alive or boot != self._boot):
                    self._end_process_locked()
                    self._start_process(boot)
                elif not running and self.process is not None:
                    self._end_process_locked()

    def _start_process(self, boot: float) -> None:
        settings = self.settings
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("VAST", "AGENT_"))},
            "CONTAINER_ID": str(self.backend.instance.id),
            "CONTAINER_API_KEY": self.backend.instance_api_key,
            "VAST_URL": self._api_url(),
            "VAST_AGENT_SECRET": settings.secret,
            "AGENT_GRACE_MINUTES": str(settings.grace_minutes),
            "AGENT_IDLE_MINUTES": str(settings.idle_minutes),
            "AGENT_CHECK_SECONDS": str(settings.check_seconds),
            "AGENT_METRICS_URL": f"http://127.0.0.1:{self.backend.llm_port}/metrics",
            "AGENT_LISTEN": f"127.0.0.1:{self.port}",
            "AGENT_STATE_PATH": str(self.state_path),
            "AGENT_BOOT_ID": f"sim-boot-{boot!r}",
            "PYTHONUNBUFFERED": "1",
            **settings.extra_env,
        }
        log = open(settings.log_path, "ab") if settings.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                [sys.executable, str(AGENT_FILE), *settings.args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        self._boot = boot
        self.boots += 1

    def _end_process(self) -> None:
        with self._lock:
            self._end_process_locked()

    def _end_process_locked(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()  # as a container stop: SIGTERM, then SIGKILL
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
