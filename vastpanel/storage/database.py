"""The SQLite file: opening it safely, migrating it, write transactions, and a connection per
request.

Every other module of this package owns the SQL of one group of tables and takes a
`sqlite_utils.Database`; rows are read by column name (`one`, `db.query`), never by position.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from typing import Any

from sqlite_utils import Database

from .migrations import migrations

BUSY_TIMEOUT_MS = 10_000
WAL_SWITCH_RETRY_S = 0.02
# Idle connections kept for the next requests: opening one (the file's checks, the WAL
# pragma) is a large share of a small request's SQLite time.
IDLE_CONNECTIONS = 16
# The files SQLite keeps beside the database; each holds some of its data.
COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")

log = logging.getLogger("vastpanel")


class Store:
    """The SQLite file of one app: a connection for each request or job, opened on first use.

    A connection is used by one thread or greenlet at a time (thread-locals are greenlet-locals
    under gevent) and given back by `close()`, at the end of each request and job, to be reused
    by the next one. One more connection is held open for the process's life: SQLite
    checkpoints and deletes the WAL whenever the last connection to a file closes, which would
    otherwise happen after every request.
    """

    def __init__(self, path: str, *, open_now: bool = True):
        """Bind to the file at path; open (and migrate) it now unless open_now is false, as
        for a CLI command that must not create a database it cannot find."""
        self.path = path
        self._local = threading.local()
        self._idle: collections.deque[Database] = collections.deque()
        self._migrated = False
        self._modes_checked = False
        self._anchor: Database | None = None
        if open_now:
            self.db  # noqa: B018 (opening it applies pending migrations)
            if path != ":memory:":
                self._anchor = open_db(path)

    @property
    def db(self) -> Database:
        """Return this thread's connection (an idle one reused, or a new one)."""
        db = getattr(self._local, "db", None)
        if db is None:
            if not self._modes_checked:  # once per process, before it opens the file
                self._modes_checked = True
                for line in repair_modes(self.path):
                    log.warning("%s", line)
            try:
                db = self._idle.pop()
            except IndexError:
                db = open_db(self.path)
            if not self._migrated:
                migrate(db)
                self._migrated = True
            self._local.db = db
        return db

    def close(self) -> None:
        """Give this thread's connection back: kept for the next request, or closed.

        An in-memory database is its connection, and one left inside a transaction is not
        safe to hand on, so those are closed.
        """
        db = getattr(self._local, "db", None)
        if db is None:
            return
        self._local.db = None
        if self.path == ":memory:" or db.conn.in_transaction or len(self._idle) >= IDLE_CONNECTIONS:
            db.close()
        else:
            self._idle.append(db)

    def shutdown(self) -> None:
        """Close every connection this store keeps (the app is going away)."""
        self.close()
        while self._idle:
            self._idle.pop().close()
        if self._anchor is not None:
            self._anchor.close()
            self._anchor = None


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


def repair_modes(path: str) -> list[str]:
    """Make an existing database's folder 0700 and its files 0600; return one line per repair.

    A database made before new files were made private (or copied in with cp) may be readable
    by everyone on the host. A folder that is clearly shared (sticky, like /tmp, or the home
    folder) is not changed; the line then says so.
    """
    if path == ":memory:":
        return []
    lines: list[str] = []
    folder = os.path.dirname(os.path.abspath(path))
    files = [path] + [path + suffix for suffix in COMPANION_SUFFIXES]
    for target, private in [(folder, 0o700)] + [(f, 0o600) for f in files]:
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            continue
        if not mode & 0o077:
            continue
        shown = target + "/" if target == folder else target
        if target == folder and _shared_folder(folder, mode):
            lines.append(
                f"{shown} is mode {mode:04o} and shared with others: the database should "
                "have a folder of its own (VAST_DB_PATH)."
            )
            continue
        try:
            os.chmod(target, private)
        except OSError as exc:
            lines.append(f"{shown} is mode {mode:04o}, readable by others: {exc.strerror}.")
            continue
        lines.append(f"{shown} was mode {mode:04o}, readable by others: made {private:04o}.")
    return lines


def _shared_folder(folder: str, mode: int) -> bool:
    """Tell whether a folder is evidently not the panel's alone: sticky, home, or the root."""
    home = os.path.expanduser("~")
    return bool(mode & stat.S_ISVTX) or folder in (os.path.abspath(home), os.path.sep)


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
    """Run a read-then-write transaction that holds the write lock from its start.

    Inside another transaction (which then holds the lock, or takes it at its first write) it
    is a savepoint of that one, as sqlite-utils' atomic() nests.
    """
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")


def one(db: Database, sql: str, params: Any = ()) -> dict[str, Any] | None:
    """Return the first row of a query as a dict of its columns, or None."""
    return next(iter(db.query(sql, params)), None)
