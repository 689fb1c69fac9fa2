"""Production serving end to end: a real gunicorn and the admin CLI against the simulator.

Everything listens on 127.0.0.1: the simulator (vast.ai and the instance's LLM stack) and the
gunicorn started by `gunicorn -c gunicorn.conf.py app:app`, the production command of
docs/operations.md.
Every wait is bounded. The test marked `slow` holds one request for about 35 s on purpose.
"""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from gunicorn.config import Config as GunicornConfig
from gunicorn.util import load_class
from gunicorn.workers.ggevent import GeventWorker

from support import ROOT, store
from support.liveserver import end_process, free_port
from vastpanel.simulator import Simulator

VAST_KEY = "simkey-serving-0123456789abcdef"
CONTROL_KEY = "control-serving-fedcba9876543210"
WRONG_KEY = "wrong-key-serving-55555555"
INSTANCE_ID = 31337
QUERY_MARK = "querymark-7f3a"
BODY_MARK = "bodymark-9c1e"
# Longer than gunicorn's default worker timeout (30 s): the case the config file is about.
SLOW_WARM_S = 34.0
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING|ERROR) \S+ .+$")
START_TIMEOUT_S = 30.0


def panel_env(sim: Simulator, db_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a panel process pointed at the simulator, nothing inherited."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VAST_", "VASTPANEL_", "CONTROL_API_KEY", "GUNICORN_", "FLASK_"))
    }
    env.update(
        VAST_URL=sim.url,
        VAST_API_KEY=VAST_KEY,
        VAST_INSTANCE_ID=str(INSTANCE_ID),
        CONTROL_API_KEY=CONTROL_KEY,
        VAST_DB_PATH=str(db_path),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """Return the log once it holds text (access lines follow the response)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not logged within {timeout} s:\n{self.log()}")


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(
        api_key=VAST_KEY,
        instance_id=INSTANCE_ID,
        schedule_delay=0.2,
        load_delay=0.2,
        warm_delay=0.2,
    ) as sim:
        yield sim


@pytest.fixture(scope="module")
def server(sim, tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("gunicorn")
    port = free_port()
    env = panel_env(
        sim,
        tmp / "vastpanel.db",
        VASTPANEL_BIND=f"127.0.0.1:{port}",
        VAST_WAIT_TIMEOUT_S="90",
    )
    log_path = tmp / "stderr.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, f"gunicorn exited:\n{server.log()}"
            try:
                if requests.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                    break
            # Before the worker has booted a request waits in the listen backlog, and on a
            # loaded machine it may time out there: not up yet either.
            except (requests.ConnectionError, requests.Timeout):
                pass
            assert time.monotonic() < deadline, f"gunicorn not up:\n{server.log()}"
            time.sleep(0.2)
        yield server
    finally:
        end_process(process, timeout=20)


@pytest.fixture
def api(server) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["X-API-Key"] = CONTROL_KEY
        yield session


def events(log: str) -> list[tuple[str, str]]:
    return re.findall(r" INFO vastpanel event=(\S+) actor=(\S+)", log)


def test_gunicorn_config_file(monkeypatch, tmp_path):
    for name in (
        "VASTPANEL_BIND",
        "VASTPANEL_WORKERS",
        "VASTPANEL_CONNECTIONS",
        "VASTPANEL_CONNECTIONS_PER_CLIENT",
        "VASTPANEL_BODY_TIMEOUT_S",
        "FORWARDED_ALLOW_IPS",
    ):
        monkeypatch.delenv(name, raising=False)
    # The config sets PROMETHEUS_MULTIPROC_DIR in os.environ: given here, it is undone after.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("VAST_WAIT_TIMEOUT_S", "600")
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert settings["bind"] == ["127.0.0.1:8000"]
    # A request that waits costs no thread: gevent, with room for many waiting connections,
    # of which one client may hold a tenth, and a body may keep a request waiting 10 s.
    worker = settings["worker_class"]
    assert worker == "vastpanel.serving.PanelWorker" and settings["worker_connections"] >= 200
    assert issubclass(load_class(worker), GeventWorker)
    assert settings["CONNECTIONS_PER_CLIENT"] == 100 and settings["BODY_TIMEOUT_S"] == 10
    # gunicorn believes X-Forwarded-Proto from the proxies whose X-Forwarded-For the app does.
    assert settings["forwarded_allow_ips"] == "127.0.0.1,::1"
    assert "threads" not in settings
    # A blocked hub (no request waits count: they are greenlets) is replaced within a minute.
    assert settings["timeout"] == 60
    assert settings["METRICS_DIR"] == str(tmp_path)
    for atom in ("%(r)s", "%(q)s", "%(f)s"):  # the request line, the query, the referer
        assert atom not in settings["access_log_format"]
    assert "%(U)s" in settings["access_log_format"]
    known = set(GunicornConfig().settings)
    ours = {
        k
        for k, v in settings.items()
        if not k.startswith("_") and k.islower() and not isinstance(v, types.ModuleType)
    }
    assert ours <= known, ours - known

    monkeypatch.setenv("VAST_WAIT_TIMEOUT_S", "1800")  # a long health wait is a waiting greenlet
    monkeypatch.setenv("VASTPANEL_BIND", "0.0.0.0:9000")
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert settings["timeout"] == 60 and settings["bind"] == ["0.0.0.0:9000"]

    # gunicorn's master reads this file: it must not import requests/urllib3, which would then
    # keep unpatched ssl names in the gevent worker (blocking HTTPS to vast.ai).
    imported = subprocess.run(
        [sys.executable, "-c", "import runpy, sys; runpy.run_path('gunicorn.conf.py'); "
         "print(sorted({'requests', 'urllib3'} & set(sys.modules)))"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert imported.stdout.strip() == "[]", imported.stdout

    monkeypatch.setenv("VASTPANEL_CONNECTIONS", "0")
    with pytest.raises(SystemExit, match="VASTPANEL_CONNECTIONS must be 1 or more"):
        runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    monkeypatch.delenv("VASTPANEL_CONNECTIONS")
    monkeypatch.setenv("VASTPANEL_CONNECTIONS_PER_CLIENT", "-5")
    with pytest.raises(SystemExit, match="VASTPANEL_CONNECTIONS_PER_CLIENT must be 1 or more"):
        runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    monkeypatch.delenv("VASTPANEL_CONNECTIONS_PER_CLIENT")
    for bad in ("0", "soon", "inf"):
        monkeypatch.setenv("VASTPANEL_BODY_TIMEOUT_S", bad)
        with pytest.raises(SystemExit, match="VASTPANEL_BODY_TIMEOUT_S must be a number"):
            runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    monkeypatch.setenv("VASTPANEL_BODY_TIMEOUT_S", "2.5")
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.0/8")
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert settings["BODY_TIMEOUT_S"] == 2.5 and settings["forwarded_allow_ips"] == "10.0.0.0/8"
    monkeypatch.delenv("VASTPANEL_BODY_TIMEOUT_S")
    monkeypatch.delenv("FORWARDED_ALLOW_IPS")

    monkeypatch.setenv("VAST_WAIT_TIMEOUT_S", "soon")
    with pytest.raises(SystemExit, match="VAST_WAIT_TIMEOUT_S must be a number"):
        runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def test_power_cycle_under_gunicorn_logs_no_secret_and_no_query(server, api, sim):
    sim.reset()
    on = api.post(f"{server.url}/infra/vast/power/on", json={}, timeout=60)
    assert on.status_code == 200, on.text
    assert on.json()["message"] == "Instance running and healthy"
    status = api.get(f"{server.url}/infra/vast/status", params={"probe": QUERY_MARK}, timeout=30)
    assert status.json()["status"] == "running"
    activity = api.post(f"{server.url}/infra/vast/activity", json={"prompt": BODY_MARK}, timeout=30)
    assert activity.status_code == 200
    audit = api.get(
        f"{server.url}/infra/vast/audit", params={"limit": 5, "token": QUERY_MARK}, timeout=30
    )
    assert audit.status_code == 200
    refused = requests.get(
        f"{server.url}/infra/vast/costs", headers={"X-API-Key": WRONG_KEY}, timeout=30
    )
    assert refused.status_code == 401
    off = api.post(f"{server.url}/infra/vast/power/off", timeout=60)
    assert off.status_code == 200, off.text
    health = requests.get(f"{server.url}/healthz", params={"last": QUERY_MARK}, timeout=30)
    assert health.status_code == 200

    log = server.wait_for_log('"GET /healthz HTTP/1.1" 200', timeout=10)
    for leak in (VAST_KEY, CONTROL_KEY, WRONG_KEY, QUERY_MARK, BODY_MARK):
        assert leak not in log, f"{leak} in the log:\n{log}"
    lines = log.splitlines()
    assert all(LINE.match(line) for line in lines), log
    access = [line for line in lines if " gunicorn.access " in line]
    assert not [line for line in access if "?" in line]
    for request in (
        '"POST /infra/vast/power/on HTTP/1.1" 200',
        '"GET /infra/vast/status HTTP/1.1" 200',
        '"GET /infra/vast/audit HTTP/1.1" 200',
        '"GET /infra/vast/costs HTTP/1.1" 401',
        '"POST /infra/vast/power/off HTTP/1.1" 200',
    ):
        assert any(request in line for line in access), f"{request} not in:\n{log}"
    for event in (
        ("power_on_requested", "api"),
        ("session_opened", "system"),
        ("power_on_complete", "api"),
        ("power_off_requested", "api"),
        ("power_off_complete", "api"),
    ):
        assert event in events(log), log


@pytest.mark.slow
def test_power_on_waits_over_30_s_for_health_under_gunicorn(server, api, sim):
    """The instance's health turns 200 only ~35 s after the start; gunicorn must not cut it."""
    sim.reset()
    sim.set_timing(schedule_delay=0.5, load_delay=0.5, warm_delay=SLOW_WARM_S)
    try:
        started = time.monotonic()
        on = api.post(f"{server.url}/infra/vast/power/on", json={}, timeout=120)
        waited = time.monotonic() - started
        assert on.status_code == 200, on.text
        assert on.json()["message"] == "Instance running and healthy"
        assert waited > 30, waited
        assert server.process.poll() is None
        log = server.log()
        assert "WORKER TIMEOUT" not in log
        assert log.count("Booting worker") == 1, log
        assert api.post(f"{server.url}/infra/vast/power/off", timeout=60).status_code == 200
    finally:
        sim.set_timing(schedule_delay=0.2, load_delay=0.2, warm_delay=0.2)


def test_container_healthcheck_command(server):
    def healthcheck(port) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "vastpanel.healthcheck"],
            cwd=ROOT,
            env={**os.environ, "VASTPANEL_BIND": f"0.0.0.0:{port}"},
            capture_output=True,
            text=True,
            timeout=30,
        )

    ok = healthcheck(server.url.rsplit(":", 1)[1])
    assert ok.returncode == 0, ok.stderr
    down = healthcheck(free_port())
    assert down.returncode == 1 and "unhealthy" in down.stderr


def test_admin_cli_against_the_simulator(sim, tmp_path):
    """`flask --app app vast ...` as an admin types it: real process, logs on stderr."""
    sim.reset()
    env = panel_env(sim, tmp_path / "cli.db", VAST_WAIT_TIMEOUT_S="60")
    db = store.open_db(str(tmp_path / "cli.db"))  # the server's database: the CLI creates none
    store.migrate(db)
    db.close()

    def flask(*args: str, code: int = 0) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "app", "vast", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == code, (result.stdout, result.stderr)
        assert VAST_KEY not in result.stdout + result.stderr
        assert CONTROL_KEY not in result.stdout + result.stderr
        return result

    on = flask("on", "--json")
    assert '"message": "Instance running and healthy"' in on.stdout
    assert ("power_on_complete", "cli") in events(on.stderr)
    assert all(LINE.match(line) for line in on.stderr.splitlines() if "vastpanel" in line)
    assert "Instance 31337: running" in flask("status").stdout
    off = flask("off")
    assert off.stdout.startswith("Instance stopped.")
    assert ("power_off_complete", "cli") in events(off.stderr)
    assert "power_off_complete" in flask("audit", "--limit", "3").stdout

    sim.add_fault("response", status=400, method="PUT", body={"success": False, "error": "x"})
    sim.external("start")
    failed = flask("off", code=1)
    assert failed.stderr.rstrip().splitlines()[-1].startswith("Error: vast.ai refused the request")
    sim.clear_faults()
    flask("off")
