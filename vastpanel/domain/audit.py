"""The audit log as the domain writes it: every action, secrets redacted, with its
notifications queued in the same transaction and one log line."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

from ..clock import Clock
from ..config import Config
from ..events import is_known
from ..logs import redact
from ..storage import audit_entries as audit_rows
from ..storage import outbox
from ..storage.audit_entries import AuditEntry
from ..storage.database import Store
from . import notify

__all__ = ["Audit", "AuditEntry", "LastStop"]

log = logging.getLogger("vastpanel")

# The entries that end a session: a stop by someone, an auto-shutdown, or a stop seen on vast.ai.
MANUAL_STOP_DONE = "power_off_complete"
AUTO_STOP_REQUESTED = "auto_shutdown"
AUTO_STOP_DONE = "auto_shutdown_complete"
STOP_DONE_EVENTS = (MANUAL_STOP_DONE, AUTO_STOP_DONE, "session_closed")


@dataclass(frozen=True)
class LastStop:
    """The last stop, as the audit tells it."""

    at: float
    event: str
    actor: str
    idle_minutes: float | None  # for an auto-shutdown: how long the instance had been idle

    @property
    def by_auto_shutdown(self) -> bool:
        return self.event == AUTO_STOP_DONE

    @property
    def seen_on_vast(self) -> bool:
        """The stop was made outside the panel (vast.ai's console, its CLI) and seen later."""
        return self.event == "session_closed"


def redact_value(value: Any) -> Any:
    """Replace any secret inside a string with ***; leave other values as they are."""
    return redact(value) if isinstance(value, str) else value


class Audit:
    """Writes and reads the audit log."""

    def __init__(self, store: Store, clock: Clock, config: Config):
        self.store = store
        self.clock = clock
        self.config = config

    def record(self, event: str, actor: str, **meta: Any) -> None:
        """Append an audit entry (secrets redacted), queue its notifications, log one line."""
        if not is_known(event, actor):  # an error in the tests (warnings are errors there)
            warnings.warn(
                f"audit event {event!r} by {actor!r} is not in events.EVENTS", stacklevel=2
            )
        clean = {k: redact_value(v) for k, v in meta.items() if v is not None}
        db = self.store.db
        now = self.clock.now()
        told = outbox.last_notified_ts(db, event) if event in notify.REPEAT_QUIET_S else None
        targets = notify.outbox_targets(self.config, event, clean, now, told, actor)
        with db.atomic():
            audit_id = audit_rows.add_audit(db, now, event, actor, clean)
            outbox.queue(db, audit_id, targets, now)
        details = " ".join(f"{k}={v}" for k, v in sorted(clean.items()))
        log.info("event=%s actor=%s %s", event, actor, details)

    def entries(self, limit: int, before_id: int | None = None) -> list[AuditEntry]:
        """Return audit entries, newest first."""
        return audit_rows.list_audit(self.store.db, limit, before_id)

    def latest(self, events: tuple[str, ...], before_id: int | None = None) -> AuditEntry | None:
        """Return the newest entry of one of these events, or None."""
        return audit_rows.latest_audit(self.store.db, events, before_id)

    def last_stop(self) -> LastStop | None:
        """Say from the audit who or what stopped the instance last, when, and after how long
        idle for an auto-shutdown; None when nothing was ever stopped."""
        entry = self.latest(STOP_DONE_EVENTS)
        if entry is None:
            return None
        idle = None
        if entry.event == AUTO_STOP_DONE:
            asked = self.latest((AUTO_STOP_REQUESTED,), entry.id)
            idle = asked.meta.get("inactive_minutes") if asked is not None else None
        return LastStop(at=entry.ts, event=entry.event, actor=entry.actor, idle_minutes=idle)
