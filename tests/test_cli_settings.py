"""The CLI needs the server's settings: without them it says so and exits 1, creating nothing,
and it never starts a watchdog of its own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import base_config, config_from
from support import ROOT, store
from support.liveserver import SIMULATED_INSTANCE
from vastpanel import create_app
from vastpanel.simulator import Simulator


@pytest.mark.parametrize("command", [["status"], ["on", "--no-wait"], ["off"]])
def test_without_vast_settings_the_vast_commands_fail(tmp_path, command):
    config = base_config(tmp_path, VAST_API_KEY="", VAST_INSTANCE_ID="")
    app = create_app(config_from(config))
    try:
        result = app.test_cli_runner().invoke(args=["vast", *command])
        assert result.exit_code == 1
        assert "Error: VAST_API_KEY and VAST_INSTANCE_ID not set." in result.stderr
        assert "server's settings" in result.stderr
        assert store.list_audit(app.extensions["vastpanel"].store.db, 10) == []
        books = app.test_cli_runner().invoke(args=["vast", "costs"])
        assert books.exit_code == 0 and "Sessions: 0" in books.stdout  # the books need no vast.ai
    finally:
        app.extensions["vastpanel"].store.close()


def flask_vast(args: list[str], cwd, **env: str) -> subprocess.CompletedProcess:
    """Run `flask --app app vast ...` as a user would, with only the given settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "CONTROL_"))}
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", str(ROOT / "app.py"), "vast", *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.e2e
def test_the_real_command_creates_nothing_and_exits_1_without_settings(tmp_path):
    for args in (["status"], ["costs"], ["audit"]):
        result = flask_vast(args, tmp_path)
        assert result.returncode == 1, result
        assert f"Error: no database at {tmp_path}/data/vastpanel.db" in result.stderr
        assert "VAST_DB_PATH" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no data/, no database, no secret_key


@pytest.mark.e2e
def test_the_real_command_acts_on_the_simulator_without_a_watchdog(tmp_path):
    db_path = tmp_path / "server" / "panel.db"
    db = store.open_db(str(db_path))
    store.migrate(db)  # the server's database, as a server run would have left it
    db.close()
    with Simulator(api_key="sim-cli-key-0123456789", instance_id=77, stop_delay=0.2) as sim:
        env = {
            "VAST_URL": sim.url,
            "VAST_API_KEY": sim.api_key,
            "VAST_INSTANCE_ID": "77",
            "VAST_DB_PATH": str(db_path),
            **SIMULATED_INSTANCE,
        }
        started = flask_vast(["on", "--no-wait"], tmp_path, **env)
        assert started.returncode == 0, started
        assert "Start requested" in started.stdout
        status = flask_vast(["status"], tmp_path, **env)
        assert status.returncode == 0, status
        assert status.stdout.startswith("Instance 77: ")
        assert "watchdog" not in started.stderr + status.stderr
        audit = flask_vast(["audit"], tmp_path, **env)
        assert "cli      power_on_requested" in audit.stdout
    db = store.open_db(str(db_path))
    try:
        assert store.read_lease(db, "watchdog") is None
    finally:
        db.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server"]
    assert not (db_path.parent / "secret_key").exists()
