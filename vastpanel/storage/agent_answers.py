"""What the instance's agent last answered to the panel's heartbeat (one row)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from sqlite_utils import Database

from .database import one


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


FIELDS = [f.name for f in fields(AgentLink)]


def read_agent_link(db: Database) -> AgentLink | None:
    """Return the last heartbeat's outcome, or None when none was sent."""
    row = one(db, f"SELECT {', '.join(FIELDS)} FROM agent_link WHERE id = 1")
    if row is None:
        return None
    row["enabled"] = None if row["enabled"] is None else bool(row["enabled"])
    row["unreachable_audited"] = bool(row["unreachable_audited"])
    return AgentLink(**row)


def save_agent_link(db: Database, link: AgentLink) -> None:
    """Store the last heartbeat's outcome, replacing the one before."""
    with db.atomic():
        db.execute(
            f"INSERT OR REPLACE INTO agent_link (id, {', '.join(FIELDS)}) "
            f"VALUES (1, {', '.join('?' for _ in FIELDS)})",
            [getattr(link, name) for name in FIELDS],
        )
