"""The schema, as named and ordered migrations (sqlite-utils' Migrations).

Each migration runs inside the write lock that `database.migrate` takes, so processes starting
together on a new file take turns.
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

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


@migrations()
def m010_start_times(db: Database) -> None:
    """Time each start from the call to vast.ai to the first healthy answer (schedules learn
    their lead time from these)."""
    # queued: vast.ai queued the start (the GPU was taken): its wait says nothing of a cold start.
    db.execute(
        """CREATE TABLE start_times (
            id INTEGER PRIMARY KEY,
            sent_at REAL NOT NULL,
            healthy_at REAL,
            queued INTEGER NOT NULL DEFAULT 0
        )"""
    )


@migrations()
def m011_moves(db: Database) -> None:
    """Add the recipe, the moves to another machine and the instances the panel knows, and
    book each session to the instance it ran on."""
    db.execute(
        """CREATE TABLE recipe (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            body TEXT NOT NULL,
            saved_at REAL NOT NULL
        )"""
    )
    # One row per move: its state advances step by step (domain/move.py), so a process that
    # dies mid-move leaves it for the next look to finish or undo.
    db.execute(
        """CREATE TABLE moves (
            id INTEGER PRIMARY KEY,
            requested_at REAL NOT NULL,
            actor TEXT NOT NULL,
            state TEXT NOT NULL,
            step_since REAL NOT NULL,
            old_id INTEGER NOT NULL,
            old_machine INTEGER,
            chosen_offer INTEGER,
            go_on_without_copy INTEGER NOT NULL DEFAULT 0,
            candidates TEXT NOT NULL DEFAULT '[]',
            tries INTEGER NOT NULL DEFAULT 0,
            creating_offer INTEGER,
            new_id INTEGER,
            new_machine INTEGER,
            new_dph REAL,
            note TEXT,
            error TEXT,
            finished_at REAL
        )"""
    )
    db.execute(
        """CREATE TABLE instances (
            id INTEGER PRIMARY KEY,
            origin TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            machine_id INTEGER,
            dph_total REAL,
            label TEXT,
            move_id INTEGER,
            note TEXT
        )"""
    )
    db.execute("ALTER TABLE sessions ADD COLUMN instance_id INTEGER")


@migrations()
def m012_llm_stall(db: Database) -> None:
    """Keep when vLLM's counters last moved and when a stall was declared (llm_load.py)."""
    db.execute("ALTER TABLE llm_metrics ADD COLUMN progress_at REAL")
    db.execute("ALTER TABLE llm_metrics ADD COLUMN stalled_since REAL")


@migrations()
def m013_billed_windows(db: Database) -> None:
    """Keep vast.ai's charges as it answers them: per contract and per item, each with its
    window; mark the ledger's prices that a power action assumed.

    vast.ai bills per contract, not per UTC day (show_charges.yaml): the per-day table pinned a
    contract's whole bill on the day it began, so it goes.
    """
    db.execute(
        """CREATE TABLE billed_windows (
            source TEXT NOT NULL,
            kind TEXT NOT NULL,
            start REAL NOT NULL,
            end REAL NOT NULL,
            amount REAL NOT NULL,
            description TEXT,
            read_at REAL NOT NULL,
            mismatch_audited INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (source, kind, start)
        )"""
    )
    db.execute("DROP TABLE billed_days")
    # A price a power action assumed (ledger.book): re-priced by the next reading of vast.ai.
    db.execute("ALTER TABLE cost_ledger ADD COLUMN assumed INTEGER NOT NULL DEFAULT 0")


@migrations()
def m014_ledger_per_instance(db: Database) -> None:
    """Book each instance's costs on its own timeline: after a move the old one, kept, is still
    billed for storage beside the new one. Rows before this are the first instance's, labelled
    at its next booking (ledger.book's adopt_unlabelled)."""
    db.execute("ALTER TABLE cost_ledger ADD COLUMN instance_id INTEGER")
    db.execute("CREATE INDEX cost_ledger_instance ON cost_ledger(instance_id, id)")
