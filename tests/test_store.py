"""The SQLite store: sessions, activity, audit, the shared answer and leases."""

import sqlite3

import pytest

from support import store
from vastpanel.errors import VastErrorKind


def test_file_is_in_wal_mode_with_a_busy_timeout(db):
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == store.BUSY_TIMEOUT_MS


def test_migrate_twice_is_harmless(db):
    store.migrate(db)
    assert {"sessions", "audit", "state", "instance_cache", "leases"} <= set(db.table_names())


def test_session_cost_is_minutes_times_price():
    session = store.Session(1, 0.0, 45.5 * 60, 0.45)
    assert session.seconds(0) == 45.5 * 60
    assert session.cost(0) == pytest.approx(0.34125)


def test_only_one_session_can_be_open(db):
    assert store.open_session(db, 100.0, 0.45, "observed", seen_since=99.0) is not None
    assert store.open_session(db, 200.0, 0.45, "observed", seen_since=199.0) is None
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO sessions (started_at, opened_by) VALUES (300, 'x')")
    assert db.execute("SELECT count(*) FROM sessions").fetchone()[0] == 1


def test_an_answer_older_than_a_stop_does_not_reopen(db):
    store.open_session(db, 100.0, 0.45, "observed", seen_since=99.0)
    store.close_session(db, 200.0, "api")
    # A status answer asked for at 150 (before the stop at 200) arrives late: no new session.
    assert store.open_session(db, 201.0, 0.45, "observed", seen_since=150.0) is None
    assert store.open_session(db, 260.0, 0.45, "observed", seen_since=250.0) is not None


def test_close_and_totals(db):
    store.open_session(db, 0.0, 0.45, "observed", seen_since=0.0)
    closed = store.close_session(db, 45.5 * 60, "api")
    assert closed.cost(0) == pytest.approx(0.34125)
    assert store.close_session(db, 9999.0, "api") is None
    store.open_session(db, 10_000.0, 0.90, "observed", seen_since=10_000.0)
    totals = store.cost_totals(db, now=10_000.0 + 600)
    assert totals.sessions_count == 2
    assert totals.runtime_seconds == pytest.approx(45.5 * 60 + 600)
    assert totals.cost_usd == pytest.approx(0.34125 + 0.15)


def test_totals_on_an_empty_store_are_floats(db):
    totals = store.cost_totals(db, now=1.0)
    assert totals == store.CostTotals(0, 0.0, 0.0)
    assert isinstance(totals.cost_usd, float)


def test_activity_never_moves_backwards(db):
    assert store.record_activity(db, 100.0) == 100.0
    assert store.record_activity(db, 50.0) == 100.0
    assert store.record_activity(db, 150.0) == 150.0
    assert store.get_value(db, "last_activity") == 150.0


def test_activity_within_the_resolution_is_read_not_written(db):
    assert store.record_activity(db, 100.0, resolution_s=1.0) == 100.0
    changes = db.conn.total_changes
    assert store.record_activity(db, 100.9, resolution_s=1.0) == 100.0  # the stored one
    assert db.conn.total_changes == changes  # nothing written
    assert store.record_activity(db, 101.0, resolution_s=1.0) == 101.0
    assert store.record_activity(db, 50.0, resolution_s=1.0) == 101.0  # never backwards
    assert store.get_value(db, "last_activity") == 101.0


def test_audit_is_newest_first_and_pages(db):
    for i in range(5):
        store.add_audit(db, float(i), f"e{i}", "api", {"i": i})
    entries = store.list_audit(db, 2)
    assert [e.event for e in entries] == ["e4", "e3"]
    older = store.list_audit(db, 10, before_id=entries[-1].id)
    assert [e.event for e in older] == ["e2", "e1", "e0"]
    assert older[0].meta == {"i": 2}


def test_a_stale_answer_never_overwrites_a_newer_one(db):
    assert store.save_cached_instance(db, 10.0, {"id": 1, "actual_status": "stopped"})
    assert not store.save_cached_instance(db, 5.0, {"id": 1, "actual_status": "running"})
    assert store.read_cached_instance(db).payload["actual_status"] == "stopped"
    failing = VastErrorKind.UNREACHABLE
    assert store.save_cached_instance(db, 11.0, None, "vast.ai is failing (502)", failing)
    cached = store.read_cached_instance(db)
    assert cached.payload is None and cached.error == "vast.ai is failing (502)"


def test_a_cached_failure_keeps_its_kind(db):
    store.save_cached_instance(db, 10.0, None, "vast.ai rejected VAST_API_KEY", VastErrorKind.AUTH)
    cached = store.read_cached_instance(db)
    assert cached.error_kind is VastErrorKind.AUTH
    store.save_cached_instance(db, 11.0, None, "no JSON", VastErrorKind.BAD_ANSWER)
    assert store.read_cached_instance(db).error_kind is VastErrorKind.BAD_ANSWER
    with pytest.raises(ValueError):  # an answer has no failure kind, a failure always one
        store.save_cached_instance(db, 12.0, {"id": 1}, None, VastErrorKind.AUTH)
    with pytest.raises(ValueError):
        store.save_cached_instance(db, 12.0, None, "vast.ai is failing (502)")
    store.save_cached_instance(db, 12.0, {"id": 1})
    assert store.read_cached_instance(db).error_kind is None


def test_a_row_written_by_a_worker_older_than_m009_reads_with_a_kind_only_beside_an_error(db):
    store.save_cached_instance(db, 10.0, None, "vast.ai rejected VAST_API_KEY", VastErrorKind.AUTH)
    with db.atomic():  # what code before m009 writes: it leaves error_kind as it was
        db.execute("UPDATE instance_cache SET fetched_at = 11.0, payload = '{}', error = NULL")
    assert store.read_cached_instance(db).error_kind is None
    with db.atomic():
        db.execute("UPDATE instance_cache SET error = 'vast.ai is failing', error_kind = NULL")
    assert store.read_cached_instance(db).error_kind is VastErrorKind.UNREACHABLE


def test_lease_has_one_holder_until_it_expires(db):
    assert store.acquire_lease(db, "w", "a", now=0.0, ttl=10.0)
    assert store.acquire_lease(db, "w", "a", now=5.0, ttl=10.0)  # renew
    assert not store.acquire_lease(db, "w", "b", now=14.0, ttl=10.0)
    assert store.acquire_lease(db, "w", "b", now=15.0, ttl=10.0)  # expired: taken over
    store.release_lease(db, "w", "a")  # not a's any more: no effect
    assert not store.acquire_lease(db, "w", "a", now=16.0, ttl=10.0)
    store.release_lease(db, "w", "b")
    assert store.acquire_lease(db, "w", "a", now=16.0, ttl=10.0)


def test_sessions_split_by_since(db):
    store.open_session(db, 0.0, 1.0, "observed", seen_since=0.0)
    store.close_session(db, 100.0, "api")
    store.open_session(db, 200.0, 1.0, "observed", seen_since=200.0)
    assert [s.started_at for s in store.list_sessions(db, since=150.0)] == [200.0]
    assert len(store.list_sessions(db, since=50.0)) == 2
