"""Notifications: audit events worth telling people about, queued in SQLite and sent to webhooks.

Audit.record queues a notification per webhook (VAST_NOTIFY_URLS) in the same transaction as the
audit entry, so nothing waits on a webhook. The watchdog's leader delivers the outbox from the
scheduler: per webhook in order, the oldest first, retrying with back-off for a day.

Delivery is at-least-once. A row is claimed (state 'sending', attempt counted, claim lease)
before the POST and marked 'sent' right after a 2xx, so a crash before the POST (or a restart
with rows queued) sends it later, and a confirmed send is never repeated. Only a crash during
the POST itself leaves it unknown whether the webhook got it; that row is sent again when its
claim lapses, with the same `id` and `Idempotency-Key`, so a receiver can drop the repeat.
Losing a stop warning is worse than seeing one twice.
"""

from __future__ import annotations

import logging
from typing import Any

import requests

from ..clock import Clock, iso_utc
from ..config import Config, NotifyTarget
from ..counters import NOTIFICATIONS
from ..storage import outbox
from ..storage.audit_entries import AuditEntry
from ..storage.database import Store
from ..storage.outbox import OutboxRow

log = logging.getLogger("vastpanel.notify")

# audit event -> what the notification says (formatted with the entry's meta)
NOTIFY_EVENTS = {
    "idle_warning": "GPU instance {instance_id} will be stopped at {stop_at} "
    "({stop_in_minutes:.1f} min left, {reason}). Keep running from the panel to keep it.",
    "auto_shutdown_complete": "Auto-shutdown: instance {instance_id} stopped after idling; "
    "session {session_minutes:.1f} min, ${session_cost_usd:.3f}.",
    "auto_shutdown_failed": "Auto-shutdown of instance {instance_id} FAILED: {error}. "
    "The GPU may still be billed.",
    "power_off_failed": "Stop of instance {instance_id} FAILED: {error}. "
    "The GPU may still be billed.",
    "power_on_failed": "Start of instance {instance_id} failed: {error}.",
    "power_on_health_timeout": "Instance {instance_id} started but its health URL did not "
    "answer within {timeout_s:g} s ({error}). The GPU is billed.",
    "session_opened": "Instance {instance_id} found {seen_status}, not started from the panel: "
    "a session is open at ${dph_total}/h.",
    # The caps (budget.py): crossed, and the stops they made or could not make.
    "budget_warning": "Budget: ${spent_usd:.2f} of ${budget_usd:.2f} spent this {period} "
    "(80 % or more).",
    "budget_stop_complete": "Budget spent: instance {instance_id} stopped; "
    "session {session_minutes:.1f} min, ${session_cost_usd:.3f}.",
    "budget_stop_failed": "Budget stop of instance {instance_id} FAILED: {error}. "
    "The GPU may still be billed.",
    "max_session_stop_complete": "Session limit: instance {instance_id} stopped; "
    "session {session_minutes:.1f} min, ${session_cost_usd:.3f}.",
    "max_session_stop_failed": "Session-limit stop of instance {instance_id} FAILED: {error}. "
    "The GPU may still be billed.",
    # The instance's contract (contract.py): vast.ai cannot start it after its end_date.
    "contract_ending": "The contract of instance {instance_id} ends at {ends_at} "
    "({days_left:.1f} days left): vast.ai cannot start it after that and may delete it 48 h "
    "later.",
    "contract_ended": "The contract of instance {instance_id} ended at {ended_at}: it cannot "
    "start again, and vast.ai may delete it from {deletable_from}.",
    # Moving to another machine (move.py).
    "move_started": "The GPU of instance {instance_id} (machine {machine_id}) is taken: moving "
    "it to another machine.",
    "move_completed": "Moved: instance {new_instance_id} on machine {new_machine_id} "
    "(${dph_total}/h) replaces {old_instance_id}, after {minutes:.1f} min; the old one is "
    "{old_instance}.",
    "move_failed": "The move of instance {instance_id} to another machine FAILED: {error}.",
    # The dead-man switch on the instance (agent_link.py).
    "agent_unreachable": "The dead-man switch on instance {instance_id} does not answer "
    "({error}): should the panel go away, nothing on the instance would stop the GPU.",
    # Schedules (schedule_start.py): the one notification for a scheduled start that failed.
    "schedule_start_failed": "Scheduled start of instance {instance_id} for the window opening "
    "{window_opens_at} FAILED: {error}. Until someone starts it, the first request waits for a "
    "cold start.",
}
# A scheduled start that fails is told once, by schedule_start_failed: not by these as well.
TOLD_BY_SCHEDULE = frozenset({"power_on_failed", "power_on_health_timeout"})
# A stop that keeps failing is audited at every interval look: tell people again only after this.
REPEAT_QUIET_S = dict.fromkeys(
    ("auto_shutdown_failed", "budget_stop_failed", "max_session_stop_failed"), 900.0
)
SEND_TIMEOUT_S = (5.0, 10.0)  # connect, read
# A webhook's answer is read to its end only when it announces this much or less (so its
# connection is kept); its status is all that counts, and a larger answer is never read.
SMALL_ANSWER_BYTES = 4096
CLAIM_S = 60.0  # a claim older than this belongs to a process that died mid-send
GIVE_UP_S = 86_400.0  # retry for a day
MAX_BACKOFF_S = 3_600.0
BATCH = 50  # notifications per webhook per delivery run


def wants_notification(event: str, meta: dict[str, Any], actor: str | None = None) -> bool:
    """Tell whether an audit entry is worth a notification."""
    if actor == "schedule" and event in TOLD_BY_SCHEDULE:
        return False
    if event == "session_opened":
        return not meta.get("by_panel")  # a start made elsewhere
    return event in NOTIFY_EVENTS


def outbox_targets(
    config: Config,
    event: str,
    meta: dict[str, Any],
    now: float,
    last_told: float | None,
    actor: str | None = None,
) -> list[tuple[str, str]]:
    """Return the (key, label) of each webhook this entry goes to.

    last_told is when this event was last queued as a notification (for REPEAT_QUIET_S).
    """
    if not config.notify_targets or not wants_notification(event, meta, actor):
        return []
    quiet = REPEAT_QUIET_S.get(event)
    if quiet is not None and last_told is not None and 0 <= now - last_told < quiet:
        return []
    return [(t.key, t.label) for t in config.notify_targets]


def message_for(entry: AuditEntry) -> str:
    """Say in one line what happened."""
    template = NOTIFY_EVENTS.get(entry.event)
    if template is not None:
        try:
            return "vastpanel: " + template.format_map(_Defaults(entry.meta))
        except (ValueError, TypeError):
            pass  # a field of an unexpected type: fall back to the plain line
    details = ", ".join(f"{k}={v}" for k, v in sorted(entry.meta.items()))
    return f"vastpanel: {entry.event} by {entry.actor}" + (f" ({details})" if details else "")


class _Defaults(dict):
    """Meta for str.format_map: a missing field shows as '?'."""

    def __missing__(self, key: str) -> Any:
        return _Unknown()


class _Unknown:
    def __format__(self, spec: str) -> str:
        return "?"


def payload_for(target: NotifyTarget, entry: AuditEntry) -> dict[str, Any]:
    """Shape one notification as the webhook wants it."""
    text = message_for(entry)
    if target.format == "slack":
        return {"text": text}
    return {
        "id": entry.id,
        "event": entry.event,
        "actor": entry.actor,
        "ts": iso_utc(entry.ts),
        "instance_id": entry.meta.get("instance_id"),
        "meta": entry.meta,
        "message": text,
    }


def backoff_s(attempts: int, first_s: float) -> float:
    """Wait before the next try: first_s, doubling per attempt, at most an hour."""
    return min(first_s * 2 ** max(0, attempts - 1), MAX_BACKOFF_S)


class Notifier:
    """Delivers the outbox to the webhooks."""

    def __init__(self, store: Store, clock: Clock, config: Config, http: requests.Session):
        self.store = store
        self.clock = clock
        self.config = config
        self.http = http

    def deliver(self) -> int:
        """Send what is due, per webhook in order; return how many were sent."""
        targets = self.config.notify_targets
        now = self.clock.now()
        dropped = outbox.drop_orphaned_outbox(self.store.db, [t.key for t in targets], now)
        if dropped:
            log.warning("notify: gave up %d notification(s) for removed webhooks", dropped)
        sent = 0
        for target in targets:
            for _ in range(BATCH):
                outcome = self._deliver_next(target)
                if outcome != "sent":
                    break
                sent += 1
        return sent

    def latest(self, limit: int) -> list[OutboxRow]:
        """Return the latest notifications with their delivery state, newest first."""
        return outbox.list_outbox(self.store.db, limit)

    def counts(self) -> dict[str, int]:
        """Count the notifications by delivery state."""
        return outbox.outbox_counts(self.store.db)

    def _deliver_next(self, target: NotifyTarget) -> str | None:
        """Send the oldest undelivered notification of a webhook if due; return the outcome."""
        db = self.store.db
        row = outbox.next_undelivered(db, target.key)
        now = self.clock.now()
        if row is None or row.next_attempt_at > now:
            return None
        if row.state == "sending" and (row.claimed_until or 0) > now:
            return None  # another process is sending it right now
        if not outbox.claim_outbox(db, row, now + CLAIM_S):
            return None
        attempts = row.attempts + 1
        error, permanent = self._post(target, row)
        now = self.clock.now()
        if error is None:
            outcome, state, retry_at = "sent", "sent", None
        elif permanent or now - row.created_at >= GIVE_UP_S:
            outcome, state, retry_at = "failed", "failed", None
        else:
            outcome, state = "retry", "pending"
            retry_at = now + backoff_s(attempts, self.config.notify_retry_s)
        outbox.finish_outbox(
            db, row.id, attempts, state, now, error=error, next_attempt_at=retry_at
        )
        NOTIFICATIONS.labels(outcome=outcome).inc()
        if error is not None:
            log.warning(
                "notify: %s to %s, attempt %d: %s (%s)",
                row.entry.event,
                target.label,
                attempts,
                error,
                "given up" if state == "failed" else "will retry",
            )
        return outcome

    def _post(self, target: NotifyTarget, row: OutboxRow) -> tuple[str | None, bool]:
        """POST one notification; return (error or None, whether retrying is pointless)."""
        try:
            response = self.http.post(
                target.url,
                json=payload_for(target, row.entry),
                headers={"Idempotency-Key": f"vastpanel-{row.id}"},
                timeout=SEND_TIMEOUT_S,
                allow_redirects=False,
                stream=True,  # the headers only, until the body is known to be small
            )
            with response:  # closed: an answer not read to its end takes its connection along
                length = response.headers.get("Content-Length", "")
                if length.isdigit() and int(length) <= SMALL_ANSWER_BYTES:
                    response.content  # noqa: B018 (read to its end: the connection is kept)
        except requests.Timeout:
            return "timed out", False
        except requests.RequestException as exc:
            # The exception's text holds the URL (a secret): keep only its kind.
            return f"unreachable ({type(exc).__name__})", False
        if 200 <= response.status_code < 300:
            return None, False
        # A webhook that is gone or refuses the body will not take it later; 408/429/5xx might.
        permanent = 400 <= response.status_code < 500 and response.status_code not in (408, 429)
        return f"HTTP {response.status_code}", permanent
