"""The recipe of the instance as JSON (one row): it holds secrets (tokens in its environment, a
registry login), which the file's owner-only mode keeps, and which the domain never shows."""

from __future__ import annotations

import json
from typing import Any

from sqlite_utils import Database

from .database import one


def read_recipe(db: Database) -> dict[str, Any] | None:
    """Return the stored recipe's fields, or None before one is stored."""
    row = one(db, "SELECT body FROM recipe WHERE id = 1")
    return None if row is None else json.loads(row["body"])


def save_recipe(db: Database, fields: dict[str, Any], at: float) -> None:
    """Store the recipe's fields, replacing the one before."""
    with db.atomic():
        db.execute(
            "INSERT INTO recipe (id, body, saved_at) VALUES (1, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET body = excluded.body, saved_at = excluded.saved_at",
            [json.dumps(fields, sort_keys=True), at],
        )
