"""The CLI for moving to another machine: `flask --app app vast offers|move|instances|destroy`,
text and --json (the API's shapes), actor cli, refusals exit 1 with the reason; against the
simulated market (fixtures from tests/test_move_api.py)."""

from __future__ import annotations

import json

import pytest
from test_cli import fits
from test_move_api import (  # noqa: F401 (fixtures)
    FIRST,
    HF_TOKEN,
    SIM_KEY,
    client,
    clock,
    drive,
    make_client,
    panel,
    sim,
    sim_clock,
    stuck_start,
)


@pytest.fixture
def run(client):  # noqa: F811
    runner = client.application.test_cli_runner()

    def run(*args: str, code: int = 0):
        result = runner.invoke(args=["vast", *args])
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        assert SIM_KEY not in result.output and HF_TOKEN not in result.output
        return result

    return run


def test_offers_then_move_then_instances_then_destroy(run, panel, sim, clock):  # noqa: F811
    text = run("offers").stdout
    assert text.startswith("No start is stuck.")
    stuck_start(panel, clock)
    text = run("offers").stdout
    assert f"Stuck: the GPU of machine {sim.machine_id} is taken" in text
    offers = json.loads(run("offers", "--json").stdout)
    fits("Offers", offers)
    best = offers["offers"][0]
    assert f"offer {best['id']}" in text.splitlines()[1] and best["location"] in text
    assert "See `vast offers`" in run("status").stdout

    refused = run("move", "--offer", "1", code=1)
    assert "Offer 1 is no longer among the offers" in refused.stderr
    asked = run("move", "--offer", str(best["id"]))
    assert "Move 1 asked" in asked.stdout
    assert "What lived on the old disk does not come along." in asked.stdout
    assert "already under way" in run("move", code=1).stderr
    assert "cancelling the start on the old machine" in run("status").stdout
    started = panel.audit.entries(20)
    assert any(e.event == "move_started" and e.actor == "cli" for e in started)

    done = drive(panel, clock)
    listing = run("instances").stdout
    assert f"instance {FIRST}" in listing and "stopped, still billed for storage" in listing
    assert f"Move 1: moved from machine {sim.machine_id} (instance {FIRST})" in listing
    data = json.loads(run("instances", "--json").stdout)
    fits("Instances", data)
    assert data["current_instance_id"] == done.new_id

    assert "cannot be destroyed" in run("destroy", str(done.new_id), code=1).stderr
    gone = run("destroy", str(FIRST), "--json").stdout
    fits("KnownInstance", json.loads(gone))
    assert sim.instance(FIRST) is None
    entry = panel.audit.entries(1)[0]
    assert (entry.event, entry.actor) == ("instance_destroyed", "cli")


def test_move_json_is_the_apis_shape_and_off_refuses(make_client, clock):  # noqa: F811
    off = make_client(VAST_MOVE="off").application.test_cli_runner()
    result = off.invoke(args=["vast", "move"])
    assert result.exit_code == 1 and "VAST_MOVE=off" in result.stderr
    app = make_client().application
    stuck_start(app.extensions["vastpanel"], clock)
    result = app.test_cli_runner().invoke(args=["vast", "move", "--json"])
    assert result.exit_code == 0, result.output
    move = json.loads(result.stdout)
    fits("Move", move)
    assert (move["state"], move["actor"]) == ("requested", "cli")
