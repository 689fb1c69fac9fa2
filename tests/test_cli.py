"""The admin CLI: `flask --app app vast ...`, text and --json, actor cli, errors exit 1."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from conftest import VAST_KEY
from vastpanel.web.openapi import SPEC

REGISTRY = Registry().with_resource("urn:spec", Resource(contents=SPEC, specification=DRAFT202012))


def fits(schema_name: str, data) -> None:
    """Assert that data has the API's documented shape."""
    ref = {"$ref": f"urn:spec#/components/schemas/{schema_name}"}
    Draft202012Validator(ref, registry=REGISTRY).validate(data)


@pytest.fixture
def run(app):
    runner = app.test_cli_runner()

    def run(*args: str, code: int = 0):
        result = runner.invoke(args=["vast", *args])
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        assert VAST_KEY not in result.output
        return result

    return run


def test_status_text_and_json(run, vast):
    vast.set_running()
    text = run("status").stdout
    assert "Instance 4242: running (RTX 3090" in text
    assert "Auto-shutdown in: 30 min" in text
    assert "Dead-man switch: off" in text  # no VAST_AGENT_SECRET here
    data = json.loads(run("status", "--json").stdout)
    fits("Status", data)
    assert data["status"] == "running"


def test_on_off_cycle_is_audited_as_cli(run, vast, panel, clock):
    on = run("on", "--no-wait", "--json")
    fits("PowerOnResult", json.loads(on.stdout))
    assert vast.puts == ["running"]
    vast.set_running()
    waited = run("on")
    assert "Instance running and healthy" in waited.stdout
    assert "waiting up to 10 min" in waited.stderr
    clock.advance(1800)
    off = run("off", "--json")
    data = json.loads(off.stdout)
    fits("PowerOffResult", data)
    assert vast.puts == ["running", "stopped"]
    assert data["session_runtime_minutes"] == pytest.approx(30)
    actors = {(e.event, e.actor) for e in panel.audit.entries(50)}
    assert ("power_on_requested", "cli") in actors
    assert ("power_on_complete", "cli") in actors
    assert ("power_off_complete", "cli") in actors
    assert not {a for _, a in actors} - {"cli", "system"}


def test_costs_and_audit(run, vast, clock):
    assert "Sessions: 0" in run("costs").stdout
    vast.set_running()
    run("status")
    clock.advance(3600)
    costs = json.loads(run("costs", "--json").stdout)
    fits("Costs", costs)
    assert costs["sessions_count"] == 1
    assert costs["total_runtime_hours"] == pytest.approx(1)
    entries = json.loads(run("audit", "--json", "--limit", "5").stdout)
    for entry in entries:
        fits("AuditEntry", entry)
    assert [e["event"] for e in entries] == ["session_opened"]
    assert "session_opened" in run("audit").stdout
    assert "No audit entries." in run("audit", "--before", "1").stdout
    assert "Invalid value for '--limit'" in run("audit", "--limit", "0", code=2).stderr


def test_costs_name_each_contract_vast_ai_billed(run, panel, vast, clock):
    run("status")  # the panel's first record of the instance
    clock.advance(5 * 3600)
    run("status")
    start, end = 1700000000.0, clock.now()
    item = {"type": "disk", "start": start, "end": end, "amount": 0.3}
    row = {"start": start, "end": end, "type": "instance", "source": "instance-4242"}
    vast.charges = [(200, {"success": True, "results": [row | {"amount": 0.3, "items": [item]}]})]
    panel.costs.read_charges()
    text = run("costs").stdout
    line = (
        "vast.ai billed $0.30 for Nov 14\u201315; estimate $0.25, \u221216.7 % (more than 1 % off)"
    )
    assert line in text.splitlines()


def test_errors_exit_non_zero_with_the_message(run, vast, clock):
    vast.instance = None
    result = run("off", code=1)
    assert "Error: vast.ai does not know instance 4242." in result.stderr
    assert result.stdout == ""
    vast.set_stopped()
    clock.advance(60)  # past the reuse time of vast.ai's last answer
    vast.put_answer = (400, {"success": False, "error": "missing_billing", "msg": "No credit."})
    assert "missing_billing" in run("on", "--no-wait", code=1).stderr


def test_json_is_the_apis_answer(run, client, vast, clock):
    """--json prints what the API answers: both are shaped by vastpanel.answers."""
    vast.set_running()
    run("status")
    clock.advance(1800)
    for command, path in [("status", "/status"), ("costs", "/costs")]:
        api = client.get("/infra/vast" + path).get_json()
        assert json.loads(run(command, "--json").stdout) == api
    api = client.get("/infra/vast/audit").get_json()
    assert json.loads(run("audit", "--json", "--limit", "50").stdout) == api
