"""The OpenAPI description stays true: real answers of every endpoint, errors included.

Each endpoint's test provokes every response code the description lists for it (and no other),
and validates each real body against the documented schema with jsonschema.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import responses
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from conftest import CONTROL_KEY, INSTANCE_URL, base_config, config_from, load_fixture
from support import store
from vastpanel import MAX_BODY_BYTES, create_app
from vastpanel.domain import power
from vastpanel.domain.lockout import FREE_WRONG_KEYS
from vastpanel.web.openapi import PREFIX, SPEC

SPEC_URI = "urn:vastpanel:openapi"
REGISTRY = Registry().with_resource(SPEC_URI, Resource(contents=SPEC, specification=DRAFT202012))


def pointer(*parts: str) -> str:
    """Build a JSON pointer into the spec (escaping '/' and '~')."""
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def validator(*parts: str) -> Draft202012Validator:
    """Return a validator for the schema at the given place in the spec."""
    return Draft202012Validator({"$ref": f"{SPEC_URI}#/{pointer(*parts)}"}, registry=REGISTRY)


class Contract:
    """Sends real requests and checks each answer against the description."""

    def __init__(self, method: str, path: str, url: str | None = None):
        self.method, self.path = method, PREFIX + path
        self.url = PREFIX + (url or path)  # a path with {parameters} is called with values
        self.operation = SPEC["paths"][self.path][method.lower()]
        self.seen: set[str] = set()

    def call(self, client, expect: int, *, body: Any = None, raw: str | None = None, query=None):
        """Send one request, check its code is `expect` and its body fits the description."""
        kwargs: dict[str, Any] = {"query_string": query}
        if body is not None:
            kwargs["json"] = body
        elif raw is not None:
            kwargs["data"] = raw
        response = client.open(self.url, method=self.method, **kwargs)
        code = str(response.status_code)
        assert code == str(expect), response.get_data(as_text=True)
        assert code in self.operation["responses"], (
            f"{self.method} {self.path}: {code} undocumented"
        )
        content = self.operation["responses"][code]["content"]
        assert response.mimetype in content, response.mimetype
        check = validator(
            "paths", self.path, self.method.lower(), "responses", code, "content",
            response.mimetype, "schema",
        )  # fmt: skip
        check.validate(response.get_json())
        self.check_request(expect, body, query)
        self.seen.add(code)
        return response.get_json()

    def check_request(self, code: int, body: Any, query: dict | None) -> None:
        """A request answered 2xx fits the description of its input; a 422 one does not."""
        fits = True
        if body is not None:
            fits = validator(
                "paths", self.path, self.method.lower(), "requestBody", "content",
                "application/json", "schema",
            ).is_valid(body)  # fmt: skip
        for i, param in enumerate(self.operation.get("parameters", [])):
            if query and param["name"] in query:
                raw = query[param["name"]]
                value = int(raw) if raw.lstrip("-").isdigit() else raw
                fits &= validator(
                    "paths", self.path, self.method.lower(), "parameters", str(i), "schema"
                ).is_valid(value)
        if code < 300:
            assert fits, f"a request the API accepted does not fit the description: {body} {query}"
        elif code == 422 and (body is not None or query):
            assert not fits, f"the description accepts what the API refused: {body} {query}"

    def covered(self) -> None:
        """Assert that every documented code, and no other, was seen."""
        assert self.seen == set(self.operation["responses"])


@pytest.fixture
def make_client(tmp_path, clock, vast):
    """Build more apps on their own databases (other config), closed after the test."""
    apps = []

    def make(**overrides: str):
        config = config_from(base_config(tmp_path / str(len(apps)), **overrides))
        app = create_app(config, clock=clock)
        apps.append(app)
        client = app.test_client()
        client.environ_base["HTTP_X_API_KEY"] = CONTROL_KEY
        return client

    yield make
    for app in apps:
        app.extensions["vastpanel"].store.close()


GATEWAY_KEY = "gateway-key-openapi-0123456789"


def common_errors(contract: Contract, client, make_client, crash, **kwargs) -> None:
    """Provoke 401 (no key), 403 (a gateway key, where it may not go), 413 (body too large),
    429 (locked out), 503 (API disabled) and, with crash(), a 500."""
    anonymous = client.application.test_client()
    contract.call(anonymous, 401, **kwargs)
    if "403" in contract.operation["responses"]:
        gateway = make_client(GATEWAY_API_KEYS=GATEWAY_KEY)
        gateway.environ_base["HTTP_X_API_KEY"] = GATEWAY_KEY
        contract.call(gateway, 403, **kwargs)
    contract.call(client, 413, raw="x" * (MAX_BODY_BYTES + 1))
    guesser = client.application.test_client()
    guesser.environ_base.update(REMOTE_ADDR="198.51.100.9", HTTP_X_API_KEY="wrong-key-guess")
    for _ in range(FREE_WRONG_KEYS):
        guesser.get(PREFIX + "/costs")
    contract.call(guesser, 429, **kwargs)
    contract.call(make_client(CONTROL_API_KEY=""), 503, **kwargs)
    if crash is not None:
        crash()
        contract.call(client, 500, **kwargs)


def crash_on(monkeypatch, obj, name: str):
    def crash():
        def boom(*args, **kwargs):
            raise RuntimeError("boom")

        monkeypatch.setattr(obj, name, boom)

    return crash


def vast_rejects_key(vast) -> None:
    vast.mock.replace(
        responses.Response(
            responses.GET, INSTANCE_URL, status=401, json=load_fixture("auth_error.json")
        )
    )


def hold_power_lock(the_panel, monkeypatch) -> None:
    """Let another process hold the power lease, and give up waiting for it at once."""
    monkeypatch.setattr(power, "POWER_WAIT_S", 0.05)
    store.acquire_lease(the_panel.store.db, "power", "other-process", the_panel.clock.now(), 90)


def test_the_description_is_valid_openapi_31():
    validate_openapi(SPEC)
    assert SPEC["openapi"].startswith("3.1")


def test_every_api_route_is_described(app):
    routes = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(PREFIX)
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    described = {(path, method) for path, item in SPEC["paths"].items() for method in item}
    assert routes == described


def test_openapi_json_is_served_without_key(app):
    response = app.test_client().get(f"{PREFIX}/openapi.json")
    assert response.status_code == 200
    assert response.get_json() == json.loads(json.dumps(SPEC))
    assert CONTROL_KEY not in response.get_data(as_text=True)


def test_status(client, make_client, vast, panel, monkeypatch):
    contract = Contract("GET", "/status")
    assert contract.call(client, 200)["status"] == "stopped"
    vast.set_running()
    body = contract.call(make_client(), 200)
    assert body["status"] == "running" and body["auto_shutdown_in_minutes"] is not None
    assert contract.call(make_client(VAST_API_KEY=""), 200)["status"] == "unconfigured"
    common_errors(contract, client, make_client, crash_on(monkeypatch, panel.status, "report"))
    vast_rejects_key(vast)
    assert "rejected" in contract.call(make_client(), 502)["detail"]
    contract.covered()


def test_power_on(client, make_client, vast, panel, monkeypatch):
    contract = Contract("POST", "/power/on")
    body = contract.call(client, 200, body={"wait_for_health": False})
    assert vast.puts == ["running"] and body["status"] == "scheduling"
    vast.set_running()
    healthy = contract.call(
        make_client(), 200, body={"health_path": "/v1/models", "health_port": 8001}
    )
    assert healthy["message"] == "Instance running and healthy"
    contract.call(make_client(), 200, raw="")
    for bad in ({"health_port": 0}, {"health_path": "http://x/h"}, {"wait_for_health": "yes"}):
        contract.call(client, 422, body=bad)
    contract.call(client, 422, raw="{not json")
    contract.call(client, 422, body=[1, 2])
    vast.health_status = 503
    timeout = contract.call(make_client(VAST_WAIT_TIMEOUT_S="20"), 504)
    assert "not healthy within 20 s" in timeout["detail"]
    vast.instance = None
    assert "does not know" in contract.call(make_client(), 502)["detail"]
    contract.call(make_client(VAST_API_KEY=""), 500)
    common_errors(contract, client, make_client, None)
    hold_power_lock(panel, monkeypatch)
    contract.call(client, 409, body={"wait_for_health": False})
    contract.covered()


def test_power_off(client, make_client, vast, panel, monkeypatch):
    contract = Contract("POST", "/power/off")
    vast.set_running()
    assert contract.call(client, 200)["status"] == "stopped"
    assert vast.puts == ["stopped"]
    assert contract.call(client, 200, body={})["session_runtime_minutes"] == 0
    contract.call(client, 422, raw="[1")
    contract.call(make_client(VAST_API_KEY=""), 500)
    vast.set_running()
    vast.put_answer = (400, load_fixture("missing_billing.json"))
    assert "missing_billing" in contract.call(make_client(), 502)["detail"]
    common_errors(contract, client, make_client, None)
    hold_power_lock(panel, monkeypatch)
    contract.call(client, 409)
    contract.covered()


def test_activity(client, make_client, panel, monkeypatch):
    contract = Contract("POST", "/activity")
    assert contract.call(client, 200)["status"] == "recorded"
    contract.call(client, 200, body={"model": "anything"})
    contract.call(client, 422, raw="nope")
    contract.call(client, 422, body="a string")
    common_errors(
        contract, client, make_client, crash_on(monkeypatch, panel.idle, "record_activity")
    )
    contract.covered()


def test_keepalive(client, make_client, vast, panel, monkeypatch):
    contract = Contract("POST", "/keepalive")
    assert "not running" in contract.call(client, 409, body={"minutes": 30})["detail"]
    vast.set_running()
    client.get(f"{PREFIX}/status")  # opens a session
    body = contract.call(client, 200, body={"minutes": 30})
    assert body["status"] == "kept" and body["idle_deadline"] is not None
    contract.call(client, 200, body={"minutes": 1.5, "note": "ignored"})
    for bad in ({}, {"minutes": "30"}, {"minutes": 0}, {"minutes": None}):
        contract.call(client, 422, body=bad)
    contract.call(client, 422, raw="{not json")
    common_errors(
        contract,
        client,
        make_client,
        crash_on(monkeypatch, panel.idle, "keep_alive"),
        body={"minutes": 30},
    )
    contract.covered()


def test_costs(client, make_client, vast, panel, monkeypatch):
    contract = Contract("GET", "/costs")
    assert contract.call(client, 200)["sessions_count"] == 0
    vast.set_running()
    client.get(f"{PREFIX}/status")  # opens a session
    panel.clock.advance(600)
    assert contract.call(client, 200)["sessions_count"] == 1
    common_errors(
        contract, client, make_client, crash_on(monkeypatch, panel.costs, "session_totals")
    )
    contract.covered()


def test_audit(client, make_client, panel, monkeypatch):
    contract = Contract("GET", "/audit")
    assert contract.call(client, 200) == []
    for i in range(3):
        panel.audit.record("power_on_requested", "api", instance_id=4242, n=i)
    entries = contract.call(client, 200, query={"limit": "2"})
    assert len(entries) == 2
    contract.call(client, 200, query={"limit": "1000", "before": "2"})
    for bad in ({"limit": "0"}, {"limit": "1001"}, {"limit": "abc"}, {"before": "0"}):
        contract.call(client, 422, query=bad)
    common_errors(contract, client, make_client, crash_on(monkeypatch, panel.audit, "entries"))
    contract.covered()


def test_budget_override(client, make_client, panel, monkeypatch):
    contract = Contract("POST", "/budget/override")
    assert "VAST_BUDGET_USD" in contract.call(client, 409, body={"extra_usd": 5})["detail"]
    budgeted = make_client(VAST_BUDGET_USD="5", VAST_BUDGET_PERIOD="day")
    amount = contract.call(budgeted, 200, body={"extra_usd": 2.5})
    assert amount["state"] == "ok" and amount["override_limit_usd"] == 7.5
    timed = contract.call(budgeted, 200, body={"until": "2023-11-14T23:00:00+00:00"})
    assert timed["override_until"] == "2023-11-14T23:00:00Z"
    assert timed["override_limit_usd"] is None
    contract.call(budgeted, 422, raw="[1")
    for bad in (
        {},
        {"extra_usd": 5, "until": "2023-11-14T23:00:00Z"},
        {"extra_usd": 0},
        {"extra_usd": "5"},
        {"extra_usd": 1e9},
        {"until": 1700000000},
    ):
        contract.call(budgeted, 422, body=bad)
    # Refused by the domain, not by the description: times outside (now, period end].
    for past_or_beyond in ("2023-11-13T00:00:00Z", "2023-11-16T00:00:00Z", "2023-11-14T23:00"):
        assert (
            budgeted.post(PREFIX + "/budget/override", json={"until": past_or_beyond}).status_code
            == 422
        )
    common_errors(
        contract,
        client,
        make_client,
        crash_on(monkeypatch, panel.budget, "override"),
        body={"extra_usd": 1},
    )
    contract.covered()


def test_costs_and_status_with_a_budget_and_vast_ais_charges(make_client, vast, clock):
    budgeted = make_client(VAST_BUDGET_USD="5", VAST_MAX_SESSION_HOURS="2")
    vast.set_running()
    assert Contract("GET", "/status").call(budgeted, 200)["max_session_stop_at"] is not None
    clock.advance(3600)
    the_panel = budgeted.application.extensions["vastpanel"]
    row = {"start": clock.now() - 60, "end": clock.now(), "type": "instance", "amount": 0.5}
    row |= {"source": "instance-4242", "items": [{"type": "gpu", "amount": 0.5}]}
    older = {"start": clock.now() - 9 * 86400, "end": clock.now(), "type": "instance"}
    older |= {"source": "instance-4242", "amount": 0.6, "items": [
        {"type": "disk", "amount": 0.7, "start": older["start"], "end": older["end"]},
        {"type": "sla", "amount": -0.1, "start": older["start"], "end": older["end"]},
    ]}  # fmt: skip
    body = {"success": True, "results": [row, older], "next_token": None}
    vast.charges = [(200, body)]
    the_panel.costs.read_charges()
    costs = Contract("GET", "/costs").call(budgeted, 200)
    assert costs["budget"]["limit_usd"] == 5 and costs["days"][-1]["billed"]["gpu"] == 0.5
    assert [c["comparable"] for c in costs["contracts"]] == [True, False]
    vast.set(end_date=clock.now() + 86400)
    clock.advance(5)
    status = Contract("GET", "/status").call(budgeted, 200)
    assert status["budget"]["spent_usd"] > 0 and status["contract_ends_at"] is not None


def test_schedule(client, make_client, panel, monkeypatch):
    contract = Contract("GET", "/schedule")
    assert contract.call(client, 200)["source"] == "none"
    scheduled = make_client(VAST_SCHEDULE="Mon-Fri 08:30-18:30", VAST_SCHEDULE_TZ="Europe/Berlin")
    body = contract.call(scheduled, 200)
    assert body["source"] == "environment" and body["next_window"] is not None
    assert body["environment"]["timezone"] == "Europe/Berlin"
    common_errors(contract, client, make_client, crash_on(monkeypatch, panel.schedule, "overview"))
    contract.covered()


def test_replace_schedule(client, make_client, panel, monkeypatch):
    contract = Contract("PUT", "/schedule")
    body = contract.call(
        client,
        200,
        body={
            "schedule": "Mon-Fri 08:30-18:30",
            "timezone": "Europe/Berlin",
            "skip": ["2026-12-24"],
        },
    )
    assert body["source"] == "stored" and body["set_by"] == "api" and body["skip"] == ["2026-12-24"]
    assert (
        contract.call(client, 200, body={"schedule": "", "timezone": None, "skip": None})[
            "schedule"
        ]
        == ""
    )
    for bad in ({}, {"schedule": 5}, {"schedule": None}, {"schedule": "", "timezone": 3}):
        contract.call(client, 422, body=bad)
    contract.call(client, 422, body={"schedule": "", "skip": "2026-12-24"})
    contract.call(client, 422, body={"schedule": "", "time_zone": "UTC"})
    contract.call(client, 422, raw="{not json")
    common_errors(
        contract,
        client,
        make_client,
        crash_on(monkeypatch, panel.schedule, "replace"),
        body={"schedule": ""},
    )
    contract.covered()


def test_clear_schedule(client, make_client, panel, monkeypatch):
    contract = Contract("DELETE", "/schedule")
    assert contract.call(client, 200)["source"] == "none"
    client.put(f"{PREFIX}/schedule", json={"schedule": "Sat 10:00-14:00"})
    assert contract.call(client, 200, body={})["source"] == "none"
    contract.call(client, 422, raw="[1")
    common_errors(contract, client, make_client, crash_on(monkeypatch, panel.schedule, "clear"))
    contract.covered()
