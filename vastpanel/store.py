"""SQLite storage for sessions, activity, the audit log and the shared vast.ai answer."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlite_utils import Database, Migrations

from .errors import VastErrorKind

BUSY_TIMEOUT_MS = 10_000
WAL_SWITCH_RETRY_S = 0.02

migrations = Migrations("vastpanel")


@migrations()
def m001_initial(db: Database) -> None:
    """Create the first schema: sessions, audit, state, the instance cache and leases."""
    db.execute(
        """CREATE TABLE sessions (
            id INTEGER PRIMARY KEY,
            started_at REAL NOT NULL,
            ended_at REAL,
            dph_total REAL,
            opened_by TEXT NOT NULL,
            closed_by TEXT
        )"""
    )
    # At most one open session, whatever number of processes race to open one.
    db.execute(
        "CREATE UNIQUE INDEX sessions_one_open ON sessions((ended_at IS NULL)) "
        "WHERE ended_at IS NULL"
    )
    db.execute(
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            event TEXT NOT NULL,
            actor TEXT NOT NULL,
            meta TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    db.execute("CREATE TABLE state (key TEXT PRIMARY KEY, value REAL)")
    db.execute(
        """CREATE TABLE instance_cache (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            fetched_at REAL NOT NULL,
            payload TEXT,
            error TEXT
        )"""
    )
    db.execute(
        "CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL)"
    )


@migrations()
def m002_query_indexes(db: Database) -> None:
    """Index audit events and session starts, for audit filters and per-day cost charts."""
    # (event, id): "entries of this event, newest first" reads the index alone.
    db.execute("CREATE INDEX audit_event ON audit(event, id)")
    db.execute("CREATE INDEX sessions_started_at ON sessions(started_at)")


@migrations()
def m003_llm_metrics(db: Database) -> None:
    """Keep the LLM's last metrics reading, shared by every process (see llm_metrics.py)."""
    db.execute(
        """CREATE TABLE llm_metrics (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            read_at REAL NOT NULL,
            session_id INTEGER,
            error TEXT,
            running REAL,
            waiting REAL,
            counters TEXT NOT NULL DEFAULT '{}',
            active_at REAL
        )"""
    )


@migrations()
def m004_signin_sessions(db: Database) -> None:
    """Keep one row per page sign-in, so sign-out can revoke it and the page can list them."""
    db.execute(
        """CREATE TABLE signin_sessions (
            id TEXT PRIMARY KEY,
            key_marker TEXT NOT NULL,
            created_at REAL NOT NULL,
            last_used_at REAL NOT NULL,
            revoked_at REAL,
            remote_addr TEXT,
            user_agent TEXT
        )"""
    )


@migrations()
def m005_costs(db: Database) -> None:
    """Add the cost ledger (priced intervals), vast.ai's bill per day and text notes."""
    # One row per stretch at one price; the last row's end_at is how far costs are booked.
    db.execute(
        """CREATE TABLE cost_ledger (
            id INTEGER PRIMARY KEY,
            start_at REAL NOT NULL,
            end_at REAL NOT NULL,
            gpu_dph REAL NOT NULL,
            storage_dph REAL NOT NULL,
            status TEXT
        )"""
    )
    db.execute("CREATE INDEX cost_ledger_end_at ON cost_ledger(end_at)")
    db.execute(
        """CREATE TABLE billed_days (
            day TEXT PRIMARY KEY,
            gpu REAL NOT NULL,
            disk REAL NOT NULL,
            bandwidth REAL NOT NULL,
            total REAL NOT NULL,
            read_at REAL NOT NULL,
            mismatch_audited INTEGER NOT NULL DEFAULT 0
        )"""
    )
    db.execute("CREATE TABLE notes (key TEXT PRIMARY KEY, value TEXT)")


@migrations()
def m006_notify(db: Database) -> None:
    """Add the notification outbox: one row per (audit entry, webhook), delivered later."""
    # target_key is a hash of the webhook URL (a secret, never stored); target_label is its
    # format, scheme and host. state: pending -> sending (claimed until claimed_until) -> sent,
    # or back to pending with a later next_attempt_at, or failed (given up).
    db.execute(
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            audit_id INTEGER NOT NULL REFERENCES audit(id),
            target_key TEXT NOT NULL,
            target_label TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            next_attempt_at REAL NOT NULL,
            claimed_until REAL,
            done_at REAL,
            last_error TEXT
        )"""
    )
    db.execute(
        "CREATE INDEX outbox_undelivered ON outbox(target_key, id) "
        "WHERE state IN ('pending', 'sending')"
    )


@migrations()
def m007_auth_failures(db: Database) -> None:
    """Count wrong keys per client, so every worker applies the same brute-force lockout."""
    db.execute(
        """CREATE TABLE auth_failures (
            client TEXT PRIMARY KEY,
            failures INTEGER NOT NULL,
            window_start REAL NOT NULL,
            last_failure REAL NOT NULL,
            lockouts INTEGER NOT NULL DEFAULT 0,
            locked_until REAL
        )"""
    )
    # Pruning deletes the oldest rows first.
    db.execute("CREATE INDEX auth_failures_last ON auth_failures(last_failure)")


@migrations()
def m008_agent_link(db: Database) -> None:
    """Keep what the instance's agent last answered to the panel's heartbeat (one row)."""
    db.execute(
        """CREATE TABLE agent_link (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            session_id INTEGER,
            attempted_at REAL NOT NULL,
            answered_at REAL,
            failures INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            agent_version TEXT,
            grace_minutes REAL,
            idle_minutes REAL,
            enabled INTEGER,
            unreachable_audited INTEGER NOT NULL DEFAULT 0
        )"""
    )


@migrations()
def m009_instance_error_kind(db: Database) -> None:
    """Keep the kind of a failed vast.ai read beside its message (errors.VastErrorKind)."""
    db.execute("ALTER TABLE instance_cache ADD COLUMN error_kind TEXT")
    # A failure stored before this migration has only its message. A rejected key was the one
    # kind anything decided on (by that message), so it keeps its kind; any other counts as
    # unreachable.
    db.execute(
        "UPDATE instance_cache SET error_kind = CASE "
        "WHEN error LIKE '%rejected VAST_API_KEY%' THEN 'auth' ELSE 'unreachable' END "
        "WHERE error IS NOT NULL"
    )


@dataclass(frozen=True)
class Session:
    """One stretch of GPU billing."""

    id: int
    started_at: float
    ended_at: float | None
    dph_total: float | None

    def seconds(self, now: float) -> float:
        """Return how long the session ran, up to now when it is still open."""
        end = self.ended_at if self.ended_at is not None else now
        return max(0.0, end - self.started_at)

    def cost(self, now: float) -> float:
        """Return minutes x dph_total / 60 at the price vast.ai reported."""
        return self.seconds(now) / 3600 * (self.dph_total or 0.0)


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log."""

    id: int
    ts: float
    event: str
    actor: str
    meta: dict[str, Any]


@dataclass(frozen=True)
class OutboxRow:
    """One notification for one webhook, with the audit entry it tells about."""

    id: int
    target_key: str
    target_label: str
    state: str
    attempts: int
    created_at: float
    next_attempt_at: float
    claimed_until: float | None
    done_at: float | None
    last_error: str | None
    entry: AuditEntry


@dataclass(frozen=True)
class CachedInstance:
    """The last vast.ai answer, shared by every caller and process."""

    fetched_at: float
    payload: dict[str, Any] | None
    error: str | None  # why vast.ai could not be read; None when it was
    error_kind: VastErrorKind | None = None  # the kind of that failure; None with no error


@dataclass(frozen=True)
class LlmReading:
    """The LLM's last metrics reading: its load, its counters and when it was last active."""

    read_at: float
    session_id: int | None
    error: str | None  # why the metrics could not be read; None when they were
    running: float | None
    waiting: float | None
    counters: dict[str, float]  # the baseline the next read compares with
    active_at: float | None  # the last moment the LLM was seen busy or having done work

    @property
    def ok(self) -> bool:
        """Tell whether this read got the metrics."""
        return self.error is None

    @property
    def busy(self) -> bool:
        """Tell whether a request was running or waiting at this read."""
        return self.ok and ((self.running or 0) > 0 or (self.waiting or 0) > 0)


@dataclass(frozen=True)
class AgentLink:
    """The panel's last heartbeat to the instance's agent, within one session."""

    session_id: int | None
    attempted_at: float
    answered_at: float | None = None  # the last heartbeat the agent accepted, in this session
    failures: int = 0  # heartbeats in a row that did not get through
    error: str | None = None
    agent_version: str | None = None
    grace_minutes: float | None = None
    idle_minutes: float | None = None
    enabled: bool | None = None
    unreachable_audited: bool = False


@dataclass(frozen=True)
class Lease:
    """Who holds a named lease, and until when."""

    name: str
    holder: str
    expires_at: float


@dataclass(frozen=True)
class AuthFailures:
    """Wrong keys from one client: those of its current window, and its lockouts so far."""

    client: str
    failures: int  # wrong keys since window_start
    window_start: float
    last_failure: float
    lockouts: int  # how many times it was locked out; each lockout lasts longer
    locked_until: float | None


@dataclass(frozen=True)
class CostTotals:
    """Runtime and cost over all sessions, the open one included."""

    sessions_count: int
    runtime_seconds: float
    cost_usd: float


@dataclass(frozen=True)
class DayCost:
    """Runtime and cost of the GPU on one UTC calendar day."""

    day: date
    runtime_seconds: float
    cost_usd: float


def open_db(path: str) -> Database:
    """Open (creating if needed) the SQLite file with WAL and a busy timeout.

    A new folder is made 0700 and a new file 0600: they hold the audit log and the vast.ai
    answer. SQLite gives the -wal and -shm files the mode of the database file.
    """
    if path != ":memory:":
        make_private_dir(os.path.dirname(os.path.abspath(path)))
        _create_private_file(path)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    db = Database(conn)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if path != ":memory:":
        _use_wal(db)
        # NORMAL in WAL mode survives a killed process; only power loss can drop the last commit.
        db.execute("PRAGMA synchronous = NORMAL")
    return db


def _use_wal(db: Database) -> None:
    """Switch the file to WAL (once per file: the mode is kept in the file).

    On a new file, processes switching at the same moment can get "database is locked" at
    once, without SQLite's busy timeout: the switch is tried again for a bounded time. This
    happens only when a deployment first creates its database.
    """
    give_up = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= give_up:
                raise
        time.sleep(WAL_SWITCH_RETRY_S)


def make_private_dir(path: str) -> None:
    """Create a folder (and its parents) readable by its owner only; leave existing ones be."""
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # makedirs' mode is filtered by the umask, and may race


def _create_private_file(path: str) -> None:
    """Create an empty file with mode 0600 unless it exists (SQLite then uses it as is)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def migrate(db: Database) -> None:
    """Apply pending schema migrations inside one write lock (BEGIN IMMEDIATE).

    Processes starting together on a new file then take turns: the first applies every
    migration, the others find nothing pending. sqlite-utils' atomic() nests as a savepoint
    inside the lock, so each migration and its record still commit or roll back together.
    """
    if not migrations.pending(db):
        return  # the usual start: nothing to do, no write lock taken
    with immediate(db):
        migrations.apply(db)


def schema_version(db: Database) -> int:
    """Return how many of this app's migrations the database has applied (0 when new)."""
    return len(migrations.applied(db))


@contextlib.contextmanager
def immediate(db: Database) -> Iterator[Database]:
    """Run a read-then-write transaction that holds the write lock from its start."""
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")


# --- state values -------------------------------------------------------------------------


def get_value(db: Database, key: str) -> float | None:
    """Return a stored number, or None."""
    return _get(db, "state", key)


def set_value(db: Database, key: str, value: float | None) -> None:
    """Store a number under key (None deletes it)."""
    _set(db, "state", key, value)


def get_note(db: Database, key: str) -> str | None:
    """Return a stored text, or None."""
    return _get(db, "notes", key)


def set_note(db: Database, key: str, value: str | None) -> None:
    """Store a text under key (None deletes it)."""
    _set(db, "notes", key, value)


def _get(db: Database, table: str, key: str) -> Any:
    """Read one key of a key-value table (state: numbers, notes: texts)."""
    row = db.execute(f"SELECT value FROM {table} WHERE key = ?", [key]).fetchone()
    return None if row is None else row[0]


def _set(db: Database, table: str, key: str, value: Any) -> None:
    """Write one key of a key-value table; None deletes it."""
    with db.atomic():
        if value is None:
            db.execute(f"DELETE FROM {table} WHERE key = ?", [key])
        else:
            db.execute(
                f"INSERT INTO {table} (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, value],
            )


def record_activity(db: Database, ts: float, resolution_s: float = 0.0) -> float:
    """Store an activity time; the stored time never moves backwards. Return it.

    A time less than resolution_s after the stored one is not written: the read that finds
    this out takes no write lock, so a burst of activity costs one write per resolution_s.
    """
    if resolution_s > 0:
        stored = get_value(db, "last_activity")
        if stored is not None and ts - stored < resolution_s:
            return stored
    with db.atomic():
        row = db.execute(
            "INSERT INTO state (key, value) VALUES ('last_activity', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value) "
            "RETURNING value",
            [ts],
        ).fetchone()
    return row[0]


def keepalive_until(db: Database, session_id: int) -> float | None:
    """Return until when a Keep running holds this session, or None."""
    rows = dict(
        db.execute(
            "SELECT key, value FROM state WHERE key IN ('keepalive_until', 'keepalive_session')"
        ).fetchall()
    )
    return rows.get("keepalive_until") if rows.get("keepalive_session") == session_id else None


def extend_keepalive(db: Database, session_id: int, until: float) -> float:
    """Hold the session at least until `until` (a later hold stays); return the hold."""
    with immediate(db):
        held = keepalive_until(db, session_id)
        until = max(until, held or 0.0)
        for key, value in (("keepalive_until", until), ("keepalive_session", session_id)):
            db.execute(
                "INSERT INTO state (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
    return until


# --- sessions -------------------------------------------------------------------------------


def _session(row: tuple) -> Session:
    return Session(id=row[0], started_at=row[1], ended_at=row[2], dph_total=row[3])


SESSION_COLUMNS = "id, started_at, ended_at, dph_total"


def current_session(db: Database) -> Session | None:
    """Return the open session, or None."""
    row = db.execute(f"SELECT {SESSION_COLUMNS} FROM sessions WHERE ended_at IS NULL").fetchone()
    return None if row is None else _session(row)


def open_session(
    db: Database, ts: float, dph_total: float | None, opened_by: str, seen_since: float
) -> Session | None:
    """Open a session at ts unless one is open or one closed after seen_since; return it if new.

    seen_since is when the observation that shows the GPU held was asked for: a session
    closed after that moment must not be reopened by an answer that predates the stop.
    """
    with immediate(db):
        open_row = db.execute(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE ended_at IS NULL"
        ).fetchone()
        if open_row is not None:
            if open_row[3] is None and dph_total is not None:
                db.execute(
                    "UPDATE sessions SET dph_total = ? WHERE id = ?", [dph_total, open_row[0]]
                )
            return None
        closed_later = db.execute(
            "SELECT 1 FROM sessions WHERE ended_at >= ? LIMIT 1", [seen_since]
        ).fetchone()
        if closed_later:
            return None
        cursor = db.execute(
            "INSERT INTO sessions (started_at, dph_total, opened_by) VALUES (?, ?, ?)",
            [ts, dph_total, opened_by],
        )
        return Session(id=cursor.lastrowid, started_at=ts, ended_at=None, dph_total=dph_total)


def close_session(db: Database, ts: float, closed_by: str) -> Session | None:
    """Close the open session at ts and return it, or None when none was open."""
    with immediate(db):
        row = db.execute(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE ended_at IS NULL"
        ).fetchone()
        if row is None:
            return None
        ended = max(ts, row[1])
        db.execute(
            "UPDATE sessions SET ended_at = ?, closed_by = ? WHERE id = ?",
            [ended, closed_by, row[0]],
        )
    return Session(id=row[0], started_at=row[1], ended_at=ended, dph_total=row[3])


def cost_totals(db: Database, now: float) -> CostTotals:
    """Sum runtime and cost over all sessions, counting the open one up to now."""
    row = db.execute(
        """SELECT count(*),
                  coalesce(sum(max(coalesce(ended_at, ?) - started_at, 0)), 0.0),
                  coalesce(sum(max(coalesce(ended_at, ?) - started_at, 0)
                               * coalesce(dph_total, 0) / 3600.0), 0.0)
           FROM sessions""",
        [now, now],
    ).fetchone()
    return CostTotals(sessions_count=row[0], runtime_seconds=row[1], cost_usd=row[2])


def list_sessions(db: Database, since: float) -> list[Session]:
    """Return the sessions that were open at some point after since, oldest first."""
    rows = db.execute(
        f"SELECT {SESSION_COLUMNS} FROM sessions WHERE ended_at IS NULL OR ended_at >= ? "
        "ORDER BY started_at",
        [since],
    ).fetchall()
    return [_session(r) for r in rows]


def cost_per_day(db: Database, now: float, days: int) -> list[DayCost]:
    """Return runtime and cost per UTC day for the last `days` days up to now, oldest first.

    A session is split at each UTC midnight it spans; the open one counts up to now.
    """
    today = datetime.fromtimestamp(now, UTC).date()
    first = today - timedelta(days=days - 1)
    window_start = midnight(first)
    per_day = {first + timedelta(days=i): [0.0, 0.0] for i in range(days)}
    for session in list_sessions(db, window_start):
        end = min(session.ended_at if session.ended_at is not None else now, now)
        for day, seconds in split_by_utc_day(max(session.started_at, window_start), end):
            if day in per_day:
                per_day[day][0] += seconds
                per_day[day][1] += seconds / 3600 * (session.dph_total or 0.0)
    return [DayCost(day, runtime, cost) for day, (runtime, cost) in per_day.items()]


def split_by_utc_day(start: float, end: float) -> Iterator[tuple[date, float]]:
    """Yield (UTC day, seconds) for each day the span from start to end touches."""
    while start < end:
        day = datetime.fromtimestamp(start, UTC).date()
        cut = min(end, midnight(day + timedelta(days=1)))
        yield day, cut - start
        start = cut


def midnight(day: date) -> float:
    """Return epoch seconds at the start of the UTC day."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def latest_closed_session(db: Database) -> Session | None:
    """Return the session that ended last, or None."""
    row = db.execute(
        f"SELECT {SESSION_COLUMNS} FROM sessions WHERE ended_at IS NOT NULL "
        "ORDER BY ended_at DESC, id DESC LIMIT 1"
    ).fetchone()
    return None if row is None else _session(row)


# --- audit ------------------------------------------------------------------------------------


def add_audit(
    db: Database,
    ts: float,
    event: str,
    actor: str,
    meta: dict[str, Any],
    notify: Sequence[tuple[str, str]] = (),
) -> int:
    """Append one audit entry, queue it for each (target key, label) in notify; return its id.

    One transaction: an entry is never recorded without its notifications, nor the reverse.
    """
    with db.atomic():
        cursor = db.execute(
            "INSERT INTO audit (ts, event, actor, meta) VALUES (?, ?, ?, ?)",
            [ts, event, actor, json.dumps(meta, sort_keys=True, default=str)],
        )
        audit_id = cursor.lastrowid
        for key, label in notify:
            db.execute(
                "INSERT INTO outbox (audit_id, target_key, target_label, created_at, "
                "next_attempt_at) VALUES (?, ?, ?, ?, ?)",
                [audit_id, key, label, ts, ts],
            )
    return audit_id


def list_audit(db: Database, limit: int, before_id: int | None = None) -> list[AuditEntry]:
    """Return up to limit entries, newest first, older than before_id when given."""
    if before_id is None:
        rows = db.execute(
            "SELECT id, ts, event, actor, meta FROM audit ORDER BY id DESC LIMIT ?", [limit]
        ).fetchall()
    else:
        rows = db.execute(
            "SELECT id, ts, event, actor, meta FROM audit WHERE id < ? ORDER BY id DESC LIMIT ?",
            [before_id, limit],
        ).fetchall()
    return [AuditEntry(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]


# --- the notification outbox ------------------------------------------------------------------

OUTBOX_COLUMNS = (
    "o.id, o.target_key, o.target_label, o.state, o.attempts, o.created_at, o.next_attempt_at, "
    "o.claimed_until, o.done_at, o.last_error, a.id, a.ts, a.event, a.actor, a.meta"
)


def _outbox_row(r: tuple) -> OutboxRow:
    entry = AuditEntry(r[10], r[11], r[12], r[13], json.loads(r[14]))
    return OutboxRow(*r[:10], entry=entry)


def next_undelivered(db: Database, target_key: str) -> OutboxRow | None:
    """Return the oldest notification for a webhook not yet sent or given up, or None."""
    row = db.execute(
        f"SELECT {OUTBOX_COLUMNS} FROM outbox o JOIN audit a ON a.id = o.audit_id "
        "WHERE o.target_key = ? AND o.state IN ('pending', 'sending') ORDER BY o.id LIMIT 1",
        [target_key],
    ).fetchone()
    return None if row is None else _outbox_row(row)


def claim_outbox(db: Database, row: OutboxRow, claimed_until: float) -> bool:
    """Mark a notification as being sent (one more attempt) unless someone else changed it."""
    with db.atomic():
        cursor = db.execute(
            "UPDATE outbox SET state = 'sending', attempts = attempts + 1, claimed_until = ? "
            "WHERE id = ? AND attempts = ? AND state IN ('pending', 'sending')",
            [claimed_until, row.id, row.attempts],
        )
    return cursor.rowcount > 0


def finish_outbox(
    db: Database,
    row_id: int,
    attempts: int,
    state: str,
    now: float,
    *,
    error: str | None = None,
    next_attempt_at: float | None = None,
) -> None:
    """Record how the claimed attempt number `attempts` of a notification ended."""
    with db.atomic():
        db.execute(
            "UPDATE outbox SET state = ?, claimed_until = NULL, last_error = ?, "
            "next_attempt_at = coalesce(?, next_attempt_at), "
            "done_at = CASE WHEN ? IN ('sent', 'failed') THEN ? END "
            "WHERE id = ? AND attempts = ?",
            [state, error, next_attempt_at, state, now, row_id, attempts],
        )


def drop_orphaned_outbox(db: Database, keys: Sequence[str], now: float) -> int:
    """Give up the notifications for webhooks no longer configured; return how many."""
    marks = ", ".join("?" for _ in keys) or "NULL"
    with db.atomic():
        cursor = db.execute(
            "UPDATE outbox SET state = 'failed', done_at = ?, claimed_until = NULL, "
            "last_error = 'webhook no longer in VAST_NOTIFY_URLS' "
            f"WHERE state IN ('pending', 'sending') AND target_key NOT IN ({marks})",
            [now, *keys],
        )
    return cursor.rowcount


def list_outbox(db: Database, limit: int) -> list[OutboxRow]:
    """Return the latest notifications, newest first."""
    rows = db.execute(
        f"SELECT {OUTBOX_COLUMNS} FROM outbox o JOIN audit a ON a.id = o.audit_id "
        "ORDER BY o.id DESC LIMIT ?",
        [limit],
    ).fetchall()
    return [_outbox_row(r) for r in rows]


def outbox_counts(db: Database) -> dict[str, int]:
    """Count notifications by state."""
    return dict(db.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())


def last_notified_ts(db: Database, event: str) -> float | None:
    """Return when a notification of this event was last queued, or None."""
    row = db.execute(
        "SELECT max(o.created_at) FROM outbox o JOIN audit a ON a.id = o.audit_id "
        "WHERE a.event = ?",
        [event],
    ).fetchone()
    return row[0]


def latest_audit(
    db: Database, events: tuple[str, ...], before_id: int | None = None
) -> AuditEntry | None:
    """Return the newest entry of one of these events (older than before_id), or None."""
    marks = ", ".join("?" for _ in events)
    row = db.execute(
        f"SELECT id, ts, event, actor, meta FROM audit WHERE event IN ({marks}) AND id < ? "
        "ORDER BY id DESC LIMIT 1",
        [*events, before_id if before_id is not None else 2**62],
    ).fetchone()
    return None if row is None else AuditEntry(row[0], row[1], row[2], row[3], json.loads(row[4]))


# --- the shared vast.ai answer and leases ----------------------------------------------------


def read_cached_instance(db: Database) -> CachedInstance | None:
    """Return the last stored vast.ai answer, or None."""
    row = db.execute(
        "SELECT fetched_at, payload, error, error_kind FROM instance_cache WHERE id = 1"
    ).fetchone()
    if row is None:
        return None
    payload = json.loads(row[1]) if row[1] is not None else None
    # A worker still running code older than m009 writes an error without its kind.
    kind = None if row[2] is None else VastErrorKind(row[3] or VastErrorKind.UNREACHABLE)
    return CachedInstance(fetched_at=row[0], payload=payload, error=row[2], error_kind=kind)


def save_cached_instance(
    db: Database,
    fetched_at: float,
    payload: dict[str, Any] | None,
    error: str | None = None,
    error_kind: VastErrorKind | None = None,
) -> bool:
    """Store a vast.ai answer, or why reading it failed (error, of error_kind), unless a newer
    one is stored already; tell whether it was stored."""
    if (error is None) != (error_kind is None):
        raise ValueError("a failure is stored with its kind, an answer without one")
    with db.atomic():
        cursor = db.execute(
            "INSERT INTO instance_cache (id, fetched_at, payload, error, error_kind) "
            "VALUES (1, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET fetched_at = excluded.fetched_at, "
            "payload = excluded.payload, error = excluded.error, "
            "error_kind = excluded.error_kind "
            "WHERE excluded.fetched_at >= instance_cache.fetched_at",
            [
                fetched_at,
                None if payload is None else json.dumps(payload),
                error,
                None if error is None else error_kind,
            ],
        )
    return cursor.rowcount > 0


def read_llm_reading(db: Database) -> LlmReading | None:
    """Return the LLM's last metrics reading, or None."""
    row = db.execute(
        "SELECT read_at, session_id, error, running, waiting, counters, active_at "
        "FROM llm_metrics WHERE id = 1"
    ).fetchone()
    if row is None:
        return None
    return LlmReading(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6])


def save_llm_reading(db: Database, reading: LlmReading) -> bool:
    """Store a reading unless a newer one is stored already; tell whether it was stored."""
    with db.atomic():
        cursor = db.execute(
            "INSERT INTO llm_metrics "
            "(id, read_at, session_id, error, running, waiting, counters, active_at) "
            "VALUES (1, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET read_at = excluded.read_at, "
            "session_id = excluded.session_id, error = excluded.error, "
            "running = excluded.running, waiting = excluded.waiting, "
            "counters = excluded.counters, active_at = excluded.active_at "
            "WHERE excluded.read_at >= llm_metrics.read_at",
            [
                reading.read_at,
                reading.session_id,
                reading.error,
                reading.running,
                reading.waiting,
                json.dumps(reading.counters, sort_keys=True),
                reading.active_at,
            ],
        )
    return cursor.rowcount > 0


def acquire_lease(db: Database, name: str, holder: str, now: float, ttl: float) -> bool:
    """Take or renew the named lease for ttl seconds; tell whether holder has it."""
    with db.atomic():
        cursor = db.execute(
            "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at "
            "WHERE leases.holder = excluded.holder OR leases.expires_at <= ?",
            [name, holder, now + ttl, now],
        )
    return cursor.rowcount > 0


def release_lease(db: Database, name: str, holder: str) -> None:
    """Give the named lease back if holder has it."""
    with db.atomic():
        db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", [name, holder])


def read_lease(db: Database, name: str) -> Lease | None:
    """Return the named lease as stored (expired or not), or None."""
    row = db.execute(
        "SELECT name, holder, expires_at FROM leases WHERE name = ?", [name]
    ).fetchone()
    return None if row is None else Lease(row[0], row[1], row[2])


def leases_named(db: Database, prefix: str, now: float) -> list[Lease]:
    """Return the unexpired leases whose names start with prefix."""
    rows = db.execute(
        "SELECT name, holder, expires_at FROM leases WHERE substr(name, 1, ?) = ? AND expires_at > ?",
        [len(prefix), prefix, now],
    ).fetchall()
    return [Lease(*row) for row in rows]


def take_over_lease(
    db: Database, name: str, old_holder: str, holder: str, now: float, ttl: float
) -> bool:
    """Take the named lease from old_holder (known to be dead) unless it changed hands meanwhile."""
    with db.atomic():
        cursor = db.execute(
            "UPDATE leases SET holder = ?, expires_at = ? WHERE name = ? AND holder = ?",
            [holder, now + ttl, name, old_holder],
        )
    return cursor.rowcount > 0


# --- wrong keys per client -----------------------------------------------------------------

AUTH_FAILURE_COLUMNS = "client, failures, window_start, last_failure, lockouts, locked_until"


def read_auth_failures(db: Database, client: str) -> AuthFailures | None:
    """Return the wrong keys counted for client, or None."""
    row = db.execute(
        f"SELECT {AUTH_FAILURE_COLUMNS} FROM auth_failures WHERE client = ?", [client]
    ).fetchone()
    return None if row is None else AuthFailures(*row)


def update_auth_failures(
    db: Database,
    client: str,
    change: Callable[[AuthFailures | None], AuthFailures],
    forget_before: float,
    keep: int,
) -> AuthFailures:
    """Replace client's row by change(row) under the write lock; return the new row.

    Rows whose last wrong key is older than forget_before are deleted, and beyond `keep` rows
    the oldest go, so many clients (or addresses) cannot make the table grow without bound.
    """
    with immediate(db):
        new = change(read_auth_failures(db, client))
        db.execute(
            f"INSERT OR REPLACE INTO auth_failures ({AUTH_FAILURE_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                new.client,
                new.failures,
                new.window_start,
                new.last_failure,
                new.lockouts,
                new.locked_until,
            ],
        )
        db.execute("DELETE FROM auth_failures WHERE last_failure < ?", [forget_before])
        db.execute(
            "DELETE FROM auth_failures WHERE client IN (SELECT client FROM auth_failures "
            "ORDER BY last_failure DESC LIMIT -1 OFFSET ?)",
            [keep],
        )
    return new


def forget_auth_failures(db: Database, client: str) -> None:
    """Forget the wrong keys of a client that has just given the right one."""
    with db.atomic():
        db.execute("DELETE FROM auth_failures WHERE client = ?", [client])


# --- the instance's agent ---------------------------------------------------------------------

AGENT_LINK_FIELDS = [f.name for f in fields(AgentLink)]


def read_agent_link(db: Database) -> AgentLink | None:
    """Return the last heartbeat's outcome, or None when none was sent."""
    row = db.execute(
        f"SELECT {', '.join(AGENT_LINK_FIELDS)} FROM agent_link WHERE id = 1"
    ).fetchone()
    if row is None:
        return None
    values = dict(zip(AGENT_LINK_FIELDS, row, strict=True))
    values["enabled"] = None if values["enabled"] is None else bool(values["enabled"])
    values["unreachable_audited"] = bool(values["unreachable_audited"])
    return AgentLink(**values)


def save_agent_link(db: Database, link: AgentLink) -> None:
    """Store the last heartbeat's outcome, replacing the one before."""
    with db.atomic():
        db.execute(
            f"INSERT OR REPLACE INTO agent_link (id, {', '.join(AGENT_LINK_FIELDS)}) "
            f"VALUES (1, {', '.join('?' for _ in AGENT_LINK_FIELDS)})",
            [getattr(link, name) for name in AGENT_LINK_FIELDS],
        )
