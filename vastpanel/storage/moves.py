"""Moves to another machine (one row each) and the instances the panel knows (one row each)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from sqlite_utils import Database

from . import values
from .database import immediate, one

ACTIVE_STATES = ("requested", "stopping_old", "searching", "creating", "booting", "copying")


@dataclass(frozen=True)
class MoveRow:
    """One move, at the step it has reached."""

    id: int
    requested_at: float
    actor: str
    state: str  # requested ... copying (ACTIVE_STATES), then done or failed
    step_since: float
    old_id: int
    old_machine: int | None
    chosen_offer: int | None
    go_on_without_copy: bool
    candidates: list[dict[str, Any]]  # the offers still to try, best first
    tries: int
    creating_offer: int | None  # the offer a create was sent for, until its answer is stored
    new_id: int | None
    new_machine: int | None
    new_dph: float | None
    note: str | None
    error: str | None
    finished_at: float | None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


MOVE_COLUMNS = ", ".join(f.name for f in fields(MoveRow))


@dataclass(frozen=True)
class KnownInstance:
    """An instance the panel knows: the first one, or one a move created."""

    id: int
    origin: str  # first, created
    state: str  # current, booting, kept, stopped, destroyed
    created_at: float
    updated_at: float
    machine_id: int | None
    dph_total: float | None
    label: str | None
    move_id: int | None
    note: str | None


INSTANCE_COLUMNS = ", ".join(f.name for f in fields(KnownInstance))


def _move(row: dict[str, Any] | None) -> MoveRow | None:
    if row is None:
        return None
    row["candidates"] = json.loads(row["candidates"])
    row["go_on_without_copy"] = bool(row["go_on_without_copy"])
    return MoveRow(**row)


def add_move(
    db: Database,
    now: float,
    actor: str,
    old_id: int,
    chosen_offer: int | None,
    go_on_without_copy: bool,
) -> MoveRow | None:
    """Record a requested move unless one is active; return it, or None when one is."""
    marks = ", ".join("?" for _ in ACTIVE_STATES)
    with immediate(db):
        if one(db, f"SELECT id FROM moves WHERE state IN ({marks})", list(ACTIVE_STATES)):
            return None
        cursor = db.execute(
            "INSERT INTO moves (requested_at, actor, state, step_since, old_id, chosen_offer, "
            "go_on_without_copy) VALUES (?, ?, 'requested', ?, ?, ?, ?)",
            [now, actor, now, old_id, chosen_offer, int(go_on_without_copy)],
        )
    return read_move(db, cursor.lastrowid)


def read_move(db: Database, move_id: int) -> MoveRow | None:
    """Return a move by its id, or None."""
    return _move(one(db, f"SELECT {MOVE_COLUMNS} FROM moves WHERE id = ?", [move_id]))


def latest_move(db: Database) -> MoveRow | None:
    """Return the newest move, or None when there was none."""
    return _move(one(db, f"SELECT {MOVE_COLUMNS} FROM moves ORDER BY id DESC LIMIT 1"))


def update_move(db: Database, move_id: int, state: str, **changes: Any) -> None:
    """Store what a step changed; step_since moves with the state (changes must name it)."""
    values = dict(changes)
    if "candidates" in values:
        values["candidates"] = json.dumps(values["candidates"])
    if "go_on_without_copy" in values:
        values["go_on_without_copy"] = int(values["go_on_without_copy"])
    values["state"] = state
    names = ", ".join(f"{name} = ?" for name in values)
    with db.atomic():
        db.execute(f"UPDATE moves SET {names} WHERE id = ?", [*values.values(), move_id])


def save_instance(db: Database, instance: KnownInstance) -> None:
    """Store an instance the panel knows, replacing what was stored about it."""
    marks = ", ".join("?" for _ in fields(KnownInstance))
    with db.atomic():
        db.execute(
            f"INSERT OR REPLACE INTO instances ({INSTANCE_COLUMNS}) VALUES ({marks})",
            [getattr(instance, f.name) for f in fields(KnownInstance)],
        )


def read_instance(db: Database, instance_id: int) -> KnownInstance | None:
    """Return what the panel knows about an instance, or None."""
    row = one(db, f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ?", [instance_id])
    return None if row is None else KnownInstance(**row)


def list_instances(db: Database) -> list[KnownInstance]:
    """Return every instance the panel knows, the first one first."""
    rows = db.query(f"SELECT {INSTANCE_COLUMNS} FROM instances ORDER BY created_at, id")
    return [KnownInstance(**row) for row in rows]


CURRENT_KEY = "current_instance_id"  # a named value (values.py): the instance a move switched to


def current_instance(db: Database, first: int | None) -> int | None:
    """Return the instance the panel controls: the one a move switched to, else the first."""
    moved = values.get_value(db, CURRENT_KEY)
    return int(moved) if moved is not None else first
