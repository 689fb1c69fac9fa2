"""Run the real panel server as a subprocess on loopback, the way production runs it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from support import ROOT
from vastpanel.simulator import Simulator

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def instant_simulator(api_key: str, instance_id: int, **options) -> Simulator:
    """A simulator whose instance changes state at once (no scheduling, loading, warm-up or stop)."""
    settings = {"schedule_delay": 0, "load_delay": 0, "warm_delay": 0, "stop_delay": 0}
    return Simulator(api_key=api_key, instance_id=instance_id, **{**settings, **options})


def running_simulator(api_key: str, instance_id: int, **options) -> Simulator:
    """A simulator on wall time whose instance runs from the start and changes state at once."""
    settings = {"initial_state": "running", "clock": time.time}
    return instant_simulator(api_key, instance_id, **{**settings, **options})


class SimulatorProcess:
    """The simulator in its own process (`python -m vastpanel.simulator`), instant like above.

    For measurements where the simulated LLM must not share a GIL with the load's clients.
    It has the attributes simulator_env reads (url, api_key, instance_id) and llm_url.
    """

    def __init__(self, api_key: str, instance_id: int):
        self.api_key = api_key
        self.instance_id = instance_id
        llm_port = free_port()
        self.llm_url = f"http://127.0.0.1:{llm_port}"
        command = [
            sys.executable, "-m", "vastpanel.simulator", "--port", "0",
            "--llm-port", str(llm_port), "--api-key", api_key,
            "--instance-id", str(instance_id), "--schedule-delay", "0", "--load-delay", "0",
            "--warm-delay", "0", "--stop-delay", "0",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.url = self.process.stdout.readline().strip()  # its first line: the API's URL
        if not self.url.startswith("http://127.0.0.1:"):
            end_process(self.process)
            raise RuntimeError(f"the simulator did not start (it printed {self.url!r})")

    def set_llm(self, **settings) -> None:
        """Change the simulated LLM (token_delay_s, ...) through the control API."""
        answer = requests.post(self.url + "/_sim/llm", json=settings, timeout=10)
        answer.raise_for_status()

    def stop(self) -> None:
        """End the process."""
        end_process(self.process)
        self.process.stdout.close()

    def __enter__(self) -> SimulatorProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def simulator_env(sim, db_path, control_key: str, **overrides: str) -> dict[str, str]:
    """Return the variables that point a panel at a running simulator, on the given database.

    The simulator's instance is on 127.0.0.1 and serves plain HTTP, which the panel must be
    told; a test of TLS passes VAST_INSTANCE_PLAIN_HTTP="" and a fingerprint.
    """
    return {
        "VAST_URL": sim.url,
        "VAST_API_KEY": sim.api_key,
        "VAST_INSTANCE_ID": str(sim.instance_id),
        "CONTROL_API_KEY": control_key,
        "VAST_DB_PATH": str(db_path),
        **SIMULATED_INSTANCE,
        **overrides,
    }


# What every panel pointed at the simulator needs: its instance is on loopback, in clear text.
SIMULATED_INSTANCE = {
    "VAST_INSTANCE_PLAIN_HTTP": "true",
    "VAST_ALLOW_LOOPBACK_INSTANCE_FOR_TESTS": "true",
}


def signed_in_session(base_url: str, key: str) -> requests.Session:
    """Sign in to the page as the admin; return a session that sends htmx's header."""
    session = requests.Session()
    page = session.get(base_url + "/signin", timeout=30)
    match = TOKEN.search(page.text)
    if match is None:
        raise RuntimeError(f"no CSRF token on /signin ({page.status_code})")
    answer = session.post(
        base_url + "/signin",
        data={"csrf_token": match.group(1), "key": key},
        allow_redirects=False,
        timeout=30,
    )
    if answer.status_code != 303:
        raise RuntimeError(f"sign-in answered {answer.status_code}")
    session.headers["HX-Request"] = "true"
    return session


def end_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Ask a process to end (SIGTERM); kill it if it has not within the timeout."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(port: int, workers: int = 1) -> list[str]:
    """The README's production command (gunicorn with the repo's config), bound to loopback."""
    return [
        sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app",
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers),
    ]  # fmt: skip


class PanelProcess:
    """The panel in its own process group; stop() ends it, kill() is kill -9."""

    def __init__(self, env: dict[str, str], *, workers: int = 1, log_path: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.control_key = env["CONTROL_API_KEY"]
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            server_command(self.port, workers),
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )
        self.wait_ready()

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        """Call the JSON API with the control key."""
        headers = {"X-API-Key": self.control_key, **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 30)
        return requests.request(method, self.url + "/infra/vast" + path, headers=headers, **kwargs)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the server answers, or fail with its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"panel exited with {self.process.returncode}: {self.log()}")
            try:
                self.api("GET", "/costs", timeout=2)
                return
            # gunicorn's master listens before its worker has booted: a request sent meanwhile
            # waits in the backlog and may time out on a loaded machine. Not ready yet, either.
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"panel did not answer within {timeout} s: {self.log()}")

    def log(self) -> str:
        """Return what the server printed so far (when a log file was given)."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def kill(self) -> None:
        """kill -9 the whole process group, as a crash would."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """End the server politely, then forcibly if it does not go."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        if self._log is not subprocess.DEVNULL:
            self._log.close()
            self._log = subprocess.DEVNULL
