"""Upgrades: a database written by an older schema migrates at start-up and keeps every row."""

from __future__ import annotations

import pytest

from conftest import base_config, config_from
from support import store
from vastpanel import create_app
from vastpanel.errors import VastErrorKind

TABLES = ("sessions", "audit", "state", "instance_cache", "leases")
# The columns of those tables at m001: later migrations add columns, never drop or change one.
M001_COLUMNS = {
    "sessions": "id, started_at, ended_at, dph_total, opened_by, closed_by",
    "audit": "id, ts, event, actor, meta",
    "state": "key, value",
    "instance_cache": "id, fetched_at, payload, error",
    "leases": "name, holder, expires_at",
}


def latest_version() -> int:
    """Return how many migrations the code holds (what a fully migrated database reports)."""
    fresh = store.open_db(":memory:")
    try:
        return len(store.migrations.pending(fresh))
    finally:
        fresh.close()


def dump(db) -> dict[str, list[tuple]]:
    """Return every row of the app's tables (their m001 columns), in a stable order."""
    return {
        t: db.execute(f"SELECT {M001_COLUMNS[t]} FROM {t} ORDER BY rowid").fetchall()
        for t in TABLES
    }


def fill_at_m001(path: str) -> dict[str, list[tuple]]:
    """Write a database at schema m001 only, with rows in every table; return its rows."""
    db = store.open_db(path)
    store.migrations.apply(db, stop_before="m002_query_indexes")
    assert store.schema_version(db) == 1
    assert "audit_event" not in {i.name for i in db["audit"].indexes}
    assert {t: ", ".join(db[t].columns_dict) for t in TABLES} == M001_COLUMNS
    with db.atomic():  # sessions as m001's code stored them (today's name their instance)
        db.execute(
            "INSERT INTO sessions (started_at, ended_at, dph_total, opened_by, closed_by) "
            "VALUES (1000.0, 4600.0, 0.35, 'api', 'api'), (5000.0, NULL, 0.40, 'observed', NULL)"
        )
    store.add_audit(db, 1000.0, "power_on_requested", "api", {"instance_id": 4242})
    store.add_audit(db, 4600.0, "power_off_complete", "api", {"session_cost_usd": 0.35})
    store.add_audit(db, 5000.0, "session_opened", "system", {"seen_status": "running"})
    store.record_activity(db, 5100.0)
    with db.atomic():  # as m001's code stored it (today's writes columns m001 lacks)
        db.execute(
            "INSERT INTO instance_cache (id, fetched_at, payload) VALUES (1, 5000.0, ?)",
            ['{"id": 4242, "actual_status": "running"}'],
        )
    store.acquire_lease(db, "vast_fetch", "old-process", 5000.0, 60.0)
    rows = dump(db)
    db.close()
    return rows


def test_schema_version_counts_applied_migrations(panel):
    new = store.open_db(":memory:")
    try:
        assert store.schema_version(new) == 0
        assert store.schema_version(panel.store.db) == latest_version() >= 2
    finally:
        new.close()


def test_app_migrates_an_m001_database_and_keeps_every_row(tmp_path, clock, vast):
    config = base_config(tmp_path)
    before = fill_at_m001(config["VAST_DB_PATH"])
    assert all(before[t] for t in TABLES), "every table must hold a row before the upgrade"

    app = create_app(config_from(config), clock=clock)
    panel = app.extensions["vastpanel"]
    try:
        db = panel.store.db
        assert store.schema_version(db) == latest_version()
        assert [m.name for m in store.migrations.applied(db)][:2] == [
            "m001_initial",
            "m002_query_indexes",
        ]
        assert dump(db) == before
        assert {"audit_event"} <= {i.name for i in db["audit"].indexes}
        assert {"sessions_started_at"} <= {i.name for i in db["sessions"].indexes}
        # The new indexes serve the queries they were made for.
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM audit WHERE event = ? ORDER BY id DESC", ["x"]
        ).fetchall()
        assert "audit_event" in " ".join(str(r) for r in plan)
        # The app reads the old rows through its own API.
        client = app.test_client()
        client.environ_base["HTTP_X_API_KEY"] = config["CONTROL_API_KEY"]
        events = [e["event"] for e in client.get("/infra/vast/audit").get_json()]
        assert events == ["session_opened", "power_off_complete", "power_on_requested"]
        assert client.get("/infra/vast/costs").get_json()["sessions_count"] == 2
    finally:
        panel.store.close()

    # A second start finds nothing pending and changes nothing.
    again = create_app(config_from(config), clock=clock)
    try:
        assert store.schema_version(again.extensions["vastpanel"].store.db) == latest_version()
        assert dump(again.extensions["vastpanel"].store.db) == before
    finally:
        again.extensions["vastpanel"].store.close()


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("vast.ai rejected VAST_API_KEY", VastErrorKind.AUTH),
        ("vast.ai is failing (502)", VastErrorKind.UNREACHABLE),
        (None, None),
    ],
)
def test_a_failure_cached_before_m009_gets_its_kind(tmp_path, error, kind):
    db = store.open_db(str(tmp_path / "old.db"))
    try:
        store.migrations.apply(db, stop_before="m009_instance_error_kind")
        with db.atomic():  # as the code before m009 stored it: the message alone
            db.execute(
                "INSERT INTO instance_cache (id, fetched_at, payload, error) VALUES (1, 5.0, ?, ?)",
                [None if error else '{"id": 4242}', error],
            )
        store.migrate(db)
        cached = store.read_cached_instance(db)
        assert (cached.error, cached.error_kind) == (error, kind)
    finally:
        db.close()
