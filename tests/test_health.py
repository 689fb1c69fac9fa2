"""GET /healthz: the app's own state, no auth, no vast.ai, no secret."""

from __future__ import annotations

import json
import re

import pytest

from conftest import CONTROL_KEY, VAST_KEY
from support import store
from vastpanel import ROOT
from vastpanel.domain.status import HEARTBEAT_KEY


class FakeWatchdog:
    def __init__(self, alive: bool):
        self.alive = alive


@pytest.fixture
def anonymous(app):
    return app.test_client()


def test_healthz_answers_without_key_and_writes_a_heartbeat(anonymous, panel, clock, vast):
    clock.advance(42)
    response = anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ok",
        "database": "ok",
        "schema_version": store.schema_version(panel.store.db),
        "watchdog": "not started",
    }
    assert response.headers["Cache-Control"] == "no-store"
    assert store.get_value(panel.store.db, HEARTBEAT_KEY) == clock.now()
    assert response.get_json()["schema_version"] >= 2
    assert vast.gets == 0 and vast.puts == []
    text = response.get_data(as_text=True)
    assert VAST_KEY not in text and CONTROL_KEY not in text


def test_the_documented_example_is_what_an_up_to_date_database_answers(anonymous):
    operations = (ROOT / "docs" / "operations.md").read_text()
    example = re.search(r'`(\{"status": "ok", "database".*?\})`', operations)
    assert example, "no /healthz example in docs/operations.md"
    body = anonymous.get("/healthz").get_json()
    assert json.loads(example.group(1)) == {**body, "watchdog": "alive"}


@pytest.mark.parametrize(
    ("alive", "status", "word"), [(True, 200, "alive"), (False, 503, "not alive")]
)
def test_healthz_reports_the_watchdog(app, anonymous, alive, status, word):
    app.extensions["vastpanel_watchdog"] = FakeWatchdog(alive)
    response = anonymous.get("/healthz")
    assert response.status_code == status
    assert response.get_json()["watchdog"] == word
    assert response.get_json()["status"] == ("ok" if alive else "failing")


def test_healthz_fails_when_the_database_cannot_be_written(anonymous, panel):
    # The test client runs the request on this thread, so this is the connection it uses.
    panel.store.db.execute("PRAGMA query_only = ON")
    response = anonymous.get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "failing"
    assert body["database"].startswith("not writable: ")
    assert "readonly" in body["database"]
    assert body["schema_version"] is None


def test_healthz_ignores_a_wrong_key(app):
    client = app.test_client()
    assert client.get("/healthz", headers={"X-API-Key": "wrong"}).status_code == 200
