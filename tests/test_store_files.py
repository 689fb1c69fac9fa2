"""The SQLite file on disk: private modes, and migrations that several processes start at once."""

from __future__ import annotations

import multiprocessing
import os
import stat
import traceback

import pytest

from conftest import base_config, config_from
from support import store
from vastpanel import create_app
from vastpanel.web.auth import SECRET_KEY_FILE

RACE_ROUNDS = 20
RACE_PROCESSES = 4


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_data_folder_and_files_are_private(tmp_path):
    data = tmp_path / "data"
    app = create_app(config_from(base_config(tmp_path, VAST_DB_PATH=str(data / "vastpanel.db"))))
    panel = app.extensions["vastpanel"]
    store.set_value(panel.store.db, "x", 1.0)  # the WAL files exist once something was written
    assert _mode(data) == 0o700
    files = [
        "vastpanel.db",
        "vastpanel.db-wal",
        "vastpanel.db-shm",
        SECRET_KEY_FILE,
    ]
    for name in files:
        assert (data / name).exists(), name
        assert _mode(data / name) == 0o600, name
    panel.store.close()


def test_private_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        db = store.open_db(str(tmp_path / "new" / "deeper" / "x.db"))
        store.migrate(db)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new" / "deeper") == 0o700
    assert _mode(tmp_path / "new" / "deeper" / "x.db") == 0o600
    assert _mode(tmp_path / "new" / "deeper" / "x.db-wal") == 0o600
    db.close()


def test_an_existing_folder_is_left_as_it_is(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    store.open_db(str(shared / "x.db")).close()
    assert _mode(shared) == 0o755  # opening leaves it: the app's start-up repairs (below)
    assert _mode(shared / "x.db") == 0o600


def test_start_up_makes_an_older_install_private_and_says_so(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    path = data / "vastpanel.db"
    running = store.open_db(str(path))  # another process keeps the -wal and -shm files there
    store.migrate(running)
    store.set_value(running, "x", 1.0)
    names = ["vastpanel.db", "vastpanel.db-wal", "vastpanel.db-shm"]
    for name in names:
        os.chmod(data / name, 0o644)  # as an install from before private files left them
    os.chmod(data, 0o755)
    with caplog.at_level("WARNING", logger="vastpanel"):
        app = create_app(config_from(base_config(tmp_path, VAST_DB_PATH=str(path))))
    assert _mode(data) == 0o700
    for name in names:
        assert _mode(data / name) == 0o600, name
    repairs = [r.getMessage() for r in caplog.records if "readable by others" in r.getMessage()]
    assert sorted(repairs) == sorted(
        [f"{data}/ was mode 0755, readable by others: made 0700."]
        + [f"{data / name} was mode 0644, readable by others: made 0600." for name in names]
    ), repairs
    # Once private, a restart has nothing to repair and says nothing.
    app.extensions["vastpanel"].store.shutdown()
    caplog.clear()
    with caplog.at_level("WARNING", logger="vastpanel"):
        again = create_app(config_from(base_config(tmp_path, VAST_DB_PATH=str(path))))
    assert not [r for r in caplog.records if "readable by others" in r.getMessage()]
    again.extensions["vastpanel"].store.shutdown()
    running.close()


def test_a_shared_folder_is_named_not_changed(tmp_path, caplog):
    shared = tmp_path / "tmp-like"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # sticky, like /tmp: other people's files live there too
    path = shared / "vastpanel.db"
    store.open_db(str(path)).close()
    os.chmod(path, 0o644)
    with caplog.at_level("WARNING", logger="vastpanel"):
        app = create_app(config_from(base_config(tmp_path, VAST_DB_PATH=str(path))))
    assert _mode(shared) == 0o1777 and _mode(path) == 0o600
    lines = [r.getMessage() for r in caplog.records]
    assert f"{shared}/ is mode 1777 and shared with others" in " ".join(lines), lines
    app.extensions["vastpanel"].store.shutdown()


def _migrate_at_once(path: str, barrier, errors) -> None:
    try:
        barrier.wait(timeout=30)
        db = store.open_db(path)
        store.migrate(db)
        db.close()
    except Exception:  # reported to the parent, which fails the test
        errors.put(traceback.format_exc(limit=-3))


@pytest.mark.e2e
def test_processes_starting_together_on_a_new_file_migrate_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    for round_no in range(RACE_ROUNDS):
        path = str(tmp_path / f"race-{round_no}.db")
        barrier = ctx.Barrier(RACE_PROCESSES)
        workers = [
            ctx.Process(target=_migrate_at_once, args=(path, barrier, errors))
            for _ in range(RACE_PROCESSES)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
        db = store.open_db(path)
        assert store.schema_version(db) == len(store.migrations._migrations)
        db.close()
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == []
