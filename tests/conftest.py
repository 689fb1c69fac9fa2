"""Fixtures: an app on a fresh SQLite file per test, a movable clock, and vast.ai faked."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import responses

from support import store
from support.clock import FakeClock
from vastpanel import Config, create_app

FIXTURES = Path(__file__).parent / "fixtures"
VAST_URL = "https://vast.test"
INSTANCE_ID = 4242
VAST_KEY = "vastkey-0123456789abcdef-secret"
CONTROL_KEY = "controlkey-fedcba9876543210-secret"
HEALTH_URL = "http://203.0.113.7:41234/health"
INSTANCE_URL = f"{VAST_URL}/api/v0/instances/{INSTANCE_ID}/"
CHARGES_URL = f"{VAST_URL}/api/v0/charges/"


# Modules whose tests start processes (gunicorn, the simulator, nginx, chromium) or run for
# seconds: marked e2e, so `pytest -m "not e2e"` is the everyday run. New modules may instead
# say `pytestmark = pytest.mark.e2e` themselves.
E2E_MODULES = frozenset(
    {
        "test_browser",
        "test_container",
        "test_e2e",
        "test_instance_deploy",
        "test_reliability_crash",
        "test_reliability_fuzz",
        "test_reliability_load",
        "test_serving",
        "test_watchdog_e2e",
    }
)


# Modules that load the CPU (chromium, hundreds of client threads) or judge latencies under
# load: pytest-xdist runs them one after another on one worker (--dist loadgroup), while the
# e2e tests that mostly wait on the clock (idle times, long streams) and the fresh clone (mostly
# pip, then four test files) run beside them on the other workers.
HEAVY_MODULES = frozenset(
    {
        "test_browser",
        "test_browser_first_hour",
        "test_browser_keepalive",
        "test_reliability_fuzz",
        "test_reliability_load",
        "test_starvation",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests of the e2e modules; keep the heavy modules on one parallel worker; start
    the long ones first."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else ""
        if module in E2E_MODULES:
            item.add_marker(pytest.mark.e2e)
        if module in HEAVY_MODULES:
            item.add_marker(pytest.mark.xdist_group("heavy"))
    # The tests that wait for minutes go first (xdist hands work out in this order): started
    # last, they would be the run's whole tail on otherwise idle workers.
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


def finished_pid() -> int:
    """Return the pid of a process that has already exited (and been reaped)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return int(done.stdout)


def load_fixture(name: str) -> Any:
    """Read a recorded vast.ai answer beside the tests."""
    text = (FIXTURES / name).read_text()
    return json.loads(text) if name.endswith(".json") else text


def base_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Return a complete test configuration on a database under tmp_path."""
    config = {
        "VAST_URL": VAST_URL,
        "VAST_API_KEY": VAST_KEY,
        "VAST_INSTANCE_ID": str(INSTANCE_ID),
        "CONTROL_API_KEY": CONTROL_KEY,
        "VAST_DB_PATH": str(tmp_path / "vastpanel.db"),
        # The fake instances answer plain HTTP, at 203.0.113.7 or (real servers) on loopback.
        "VAST_INSTANCE_PLAIN_HTTP": "true",
        "VAST_ALLOW_LOOPBACK_INSTANCE_FOR_TESTS": "true",
    }
    config.update(overrides)
    return config


def config_from(env: Mapping[str, str]) -> Config:
    """Build a test's Config from environment variables, with Flask's TESTING on.

    As for any test config, the watchdog then starts only if VASTPANEL_WATCHDOG is true.
    """
    return replace(Config.from_env(env), testing=True)


class FakeVast:
    """vast.ai's instance endpoints faked with `responses`: a state, and the calls counted."""

    def __init__(self, mock: responses.RequestsMock, clock: FakeClock):
        self.mock = mock
        self.clock = clock
        self.boot_after: float | None = None  # seconds from a start call to running
        self.started_at: float | None = None
        self.on_get = None  # called before each GET is answered, to change the state
        self.instance: dict[str, Any] | None = load_fixture("instance_stopped.json")["instances"]
        self.put_answer: tuple[int, Any] | None = None  # override the next PUT answers
        self.health_status = 200
        # What the instance's /metrics answers: (status, text); an idle vLLM by default.
        self.metrics: tuple[int, str] = (200, load_fixture("vllm_v1_idle.prom"))
        self.metrics_gets = 0
        self.puts: list[str] = []
        self.gets = 0
        # vast.ai's minimum interval per method ({"GET": 2.0}), on the fake clock; empty: off
        self.rate_limit: dict[str, float] = {}
        self.refused: list[str] = []  # methods answered 429
        self._last_accepted: dict[str, float] = {}
        # vast.ai's charges: one (status, body) per page, or a callable(request) -> (status, body)
        self.charges: list[tuple[int, Any]] | Any = [(200, {"success": True, "results": []})]
        self.charges_asked: list[dict[str, str]] = []
        mock.add_callback(responses.GET, INSTANCE_URL, callback=self._get)
        mock.add_callback(responses.PUT, INSTANCE_URL, callback=self._put)
        mock.add_callback(responses.GET, CHARGES_URL, callback=self._charges)
        mock.add_callback(
            responses.GET, re.compile(r"http://203\.0\.113\.7:\d+/.*"), callback=self._health
        )

    def set_running(self) -> None:
        self.instance = copy.deepcopy(load_fixture("instance_running.json")["instances"])

    def set_stopped(self) -> None:
        self.instance = copy.deepcopy(load_fixture("instance_stopped.json")["instances"])

    def set(self, **fields: Any) -> None:
        assert self.instance is not None
        self.instance.update(fields)

    def _too_soon(self, method: str) -> bool:
        """Play vast.ai's rate limit: a request within the interval is refused (429)."""
        interval = self.rate_limit.get(method)
        last = self._last_accepted.get(method)
        now = self.clock.now()
        if interval and last is not None and now - last < interval:
            self.refused.append(method)
            return True
        self._last_accepted[method] = now
        return False

    def _get(self, request):
        if self._too_soon("GET"):
            return 429, {}, "API requests too frequent: endpoint threshold=2.0"
        self.gets += 1
        if self.on_get is not None:
            self.on_get()
        if self.started_at is not None and self.clock.now() - self.started_at >= self.boot_after:
            self.started_at = None
            self.set_running()
        assert request.headers["Authorization"] == f"Bearer {VAST_KEY}"
        assert "api_key" not in request.url
        return 200, {}, json.dumps({"instances": self.instance})

    def _put(self, request):
        if self._too_soon("PUT"):
            return 429, {}, "API requests too frequent"
        state = json.loads(request.body)["state"]
        self.puts.append(state)
        if self.put_answer is not None:
            status, body = self.put_answer
            return status, {}, json.dumps(body)
        if self.instance is None:
            return 404, {}, json.dumps(load_fixture("no_such_instance.json"))
        self.instance["intended_status"] = state
        if state == "stopped":
            self.started_at = None
            self.set_stopped()
        elif self.boot_after is not None and self.instance["actual_status"] != "running":
            self.started_at = self.clock.now()
        return 200, {}, json.dumps({"success": True})

    def _charges(self, request):
        query = {k: v[0] for k, v in parse_qs(urlparse(request.url).query).items()}
        self.charges_asked.append(query)
        page = int(query.get("after_token", 0))
        if callable(self.charges):
            return self.charges(query)
        status, body = self.charges[page]
        if status == 200 and isinstance(body, dict) and "results" in body:
            more = page + 1 < len(self.charges)
            body = {**body, "next_token": str(page + 1) if more else None}
        return status, {}, body if isinstance(body, str) else json.dumps(body)

    def _health(self, request):
        # One callback for the instance's ports: responses rotates between matching ones.
        if request.path_url == "/metrics":
            self.metrics_gets += 1
            status, text = self.metrics
            return status, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}, text
        status = self.health_status() if callable(self.health_status) else self.health_status
        return status, {}, "ok"


@pytest.fixture
def db(tmp_path):
    """A migrated store on a fresh SQLite file, without an app."""
    db = store.open_db(str(tmp_path / "store.db"))
    store.migrate(db)
    yield db
    db.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def vast(clock):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeVast(mock, clock)


@pytest.fixture
def app(tmp_path, clock, vast):
    app = create_app(config_from(base_config(tmp_path)), clock=clock)
    yield app
    app.extensions["vastpanel"].store.close()


@pytest.fixture
def panel(app):
    return app.extensions["vastpanel"]


@pytest.fixture
def client(app):
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = CONTROL_KEY
    return client


@pytest.fixture
def http(sim):
    """A requests session that sends the key of the test module's simulator (`sim`)."""
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {sim.api_key}"
        yield session
