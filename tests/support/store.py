"""The storage functions the tests read and set the books with, under one name.

Each function belongs to the module of vastpanel.storage that owns its tables; tests that only
want to look at (or prepare) the books import them from here.
"""

from __future__ import annotations

from vastpanel.clock import midnight, split_by_utc_day
from vastpanel.storage.agent_answers import AgentLink, read_agent_link, save_agent_link
from vastpanel.storage.audit_entries import AuditEntry, add_audit, latest_audit, list_audit
from vastpanel.storage.auth_failures import AuthFailures, read_auth_failures
from vastpanel.storage.database import BUSY_TIMEOUT_MS, migrate, open_db, schema_version
from vastpanel.storage.instance_cache import (
    CachedInstance,
    read_cached_instance,
    save_cached_instance,
)
from vastpanel.storage.leases import Lease, acquire_lease, read_lease, release_lease
from vastpanel.storage.llm_readings import LlmReading, read_llm_reading, save_llm_reading
from vastpanel.storage.migrations import migrations
from vastpanel.storage.outbox import (
    OutboxRow,
    claim_outbox,
    list_outbox,
    next_undelivered,
    outbox_counts,
)
from vastpanel.storage.sessions import (
    CostTotals,
    DayCost,
    Session,
    close_session,
    cost_per_day,
    cost_totals,
    current_session,
    latest_closed_session,
    list_sessions,
    open_session,
)
from vastpanel.storage.start_times import note_healthy, note_start_sent, recent_start_seconds
from vastpanel.storage.values import get_note, get_value, record_activity, set_note, set_value

__all__ = [
    "BUSY_TIMEOUT_MS",
    "AgentLink",
    "AuditEntry",
    "AuthFailures",
    "CachedInstance",
    "CostTotals",
    "DayCost",
    "Lease",
    "LlmReading",
    "OutboxRow",
    "Session",
    "acquire_lease",
    "add_audit",
    "claim_outbox",
    "close_session",
    "cost_per_day",
    "cost_totals",
    "current_session",
    "get_note",
    "get_value",
    "latest_audit",
    "latest_closed_session",
    "list_audit",
    "list_outbox",
    "list_sessions",
    "midnight",
    "migrate",
    "migrations",
    "next_undelivered",
    "note_healthy",
    "note_start_sent",
    "open_db",
    "open_session",
    "outbox_counts",
    "read_agent_link",
    "read_auth_failures",
    "read_cached_instance",
    "read_lease",
    "read_llm_reading",
    "recent_start_seconds",
    "record_activity",
    "release_lease",
    "save_agent_link",
    "save_cached_instance",
    "save_llm_reading",
    "schema_version",
    "set_note",
    "set_value",
    "split_by_utc_day",
]
