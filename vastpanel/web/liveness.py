"""Liveness: GET /healthz tells whether this process can do its job, without auth or vast.ai.

It is the container's HEALTHCHECK and the baseline of the throughput benchmark, so it costs
one small SQLite write and one read, and never calls vast.ai.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from flask import Blueprint, Flask, current_app, jsonify

from ..watchdog import EXTENSION as WATCHDOG_EXTENSION
from . import EXTENSION

bp = Blueprint("health", __name__)


@dataclass(frozen=True)
class Liveness:
    """The app's own state, as /healthz reports it."""

    database: str  # "ok", or why it cannot be written
    schema_version: int | None  # migrations applied; None when the database cannot be read
    watchdog: str  # "alive", "not alive", or "not started" when this process runs none

    @property
    def ok(self) -> bool:
        """Tell whether the process is fit to serve: database writable, watchdog not dead."""
        return self.database == "ok" and self.watchdog != "not alive"


def check_liveness(app: Flask) -> Liveness:
    """Write a heartbeat row, read the schema version and ask the watchdog if it is alive."""
    database, version = app.extensions[EXTENSION].status.database_check()
    watchdog = app.extensions.get(WATCHDOG_EXTENSION)
    if watchdog is None:
        watchdog_state = "not started"
    else:
        watchdog_state = "alive" if watchdog.alive else "not alive"
    return Liveness(database=database, schema_version=version, watchdog=watchdog_state)


@bp.get("/healthz")
def healthz():
    """Answer 200 with the app's state when it is fit to serve, else 503 with the same body."""
    liveness = check_liveness(current_app._get_current_object())
    body = {"status": "ok" if liveness.ok else "failing", **asdict(liveness)}
    response = jsonify(body)
    response.status_code = 200 if liveness.ok else 503
    response.headers["Cache-Control"] = "no-store"
    return response
