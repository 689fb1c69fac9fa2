"""The panel's side of the dead-man switch: heartbeats to the agent on the instance.

On every watchdog look while the instance runs, the panel tells the agent
(deploy/instance/vastpanel_agent.py) that it is alive, with its own idle deadline, through the
instance's nginx on the health port: POST {endpoint}/vastpanel/heartbeat, signed with
VAST_AGENT_SECRET (HMAC-SHA256 over the timestamp and the body). The agent answers with its
version and its grace time; the outcome is kept in SQLite for the page and /status. Should the
panel go away, the agent stops the instance after its grace and idle times; the panel, back,
books that stop as the agent's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass, replace
from typing import Any

from ..clock import Clock
from ..config import Config
from ..instance_http import InstanceHttp, InstanceUnreadable, Limits
from ..storage import agent_answers as link_rows
from ..storage.agent_answers import AgentLink as LinkRow
from ..storage.database import Store
from ..storage.sessions import Session
from ..vast.instance import InstanceState
from .audit import Audit

log = logging.getLogger("vastpanel.agent_link")

HEARTBEAT_PATH = "/vastpanel/heartbeat"
TIMESTAMP_HEADER = "X-Vastpanel-Timestamp"
SIGNATURE_HEADER = "X-Vastpanel-Signature"
# Short and small: a look must not wait long on an instance whose agent or nginx does not
# answer, nor read more than the agent's few fields.
HEARTBEAT_LIMITS = Limits(total_s=3.0, max_bytes=16 * 1024, connect_s=2.0)
# One failed heartbeat may be the container still starting; two in a row are audited.
UNREACHABLE_AFTER = 2


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """Sign a heartbeat as the agent checks it: HMAC-SHA256 of timestamp, newline, body."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"\n" + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@dataclass(frozen=True)
class AgentReport:
    """What /status and the page say about the agent in the current session."""

    status: str | None  # ok, unreachable, off; None: nothing sent in this session yet
    answered_at: float | None = None
    agent_version: str | None = None
    grace_minutes: float | None = None
    idle_minutes: float | None = None
    error: str | None = None


class AgentLink:
    """The heartbeats to the instance's agent, and what its answers tell about a stop."""

    def __init__(
        self, store: Store, clock: Clock, config: Config, instance_http: InstanceHttp, audit: Audit
    ):
        self.store = store
        self.clock = clock
        self.config = config
        self.instance_http = instance_http
        self.audit = audit

    def send_heartbeat(
        self, state: InstanceState | None, session: Session | None, idle_deadline: float | None
    ) -> LinkRow | None:
        """Send one heartbeat if the instance runs and a secret is set; keep and audit the outcome.

        state is the instance as the look has just read it (never a call of its own: vast.ai
        limits how often the instance may be read); idle_deadline is the panel's own.
        """
        secret = self.config.agent_secret
        if not secret or state is None:
            return None
        if state.status != "running" or not state.endpoint_base_url or session is None:
            return None
        db = self.store.db
        now = self.clock.now()
        body = json.dumps(
            {"instance_id": state.instance_id, "idle_deadline": idle_deadline}
        ).encode()
        timestamp = f"{now:.3f}"
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(secret, timestamp, body),
        }
        url = state.endpoint_base_url + HEARTBEAT_PATH
        answer, error = _deliver(self.instance_http, url, body, headers)
        before = link_rows.read_agent_link(db)
        if before is None or before.session_id != session.id:
            before = LinkRow(session_id=session.id, attempted_at=now)
        if answer is not None:
            link = replace(
                before,
                attempted_at=now,
                answered_at=now,
                failures=0,
                error=None,
                agent_version=_text(answer.get("agent_version")),
                grace_minutes=_number(answer.get("grace_minutes")),
                idle_minutes=_number(answer.get("idle_minutes")),
                enabled=answer.get("enabled") is not False,
            )
        else:
            link = replace(before, attempted_at=now, failures=before.failures + 1, error=error)
            if link.failures >= UNREACHABLE_AFTER and not link.unreachable_audited:
                link = replace(link, unreachable_audited=True)
                self.audit.record(
                    "agent_unreachable",
                    "system",
                    instance_id=state.instance_id,
                    url=url,
                    error=error,
                    failures=link.failures,
                )
            else:
                log.info("agent heartbeat to %s failed: %s", url, error)
        link_rows.save_agent_link(db, link)
        return link

    def report(self, session: Session | None) -> AgentReport:
        """Say how the agent answered in the current session."""
        if not self.config.agent_secret:
            return AgentReport("off", error="VAST_AGENT_SECRET is not set: no heartbeats.")
        link = link_rows.read_agent_link(self.store.db)
        if link is None or session is None or link.session_id != session.id:
            return AgentReport(None)
        if link.failures >= UNREACHABLE_AFTER:
            status = "unreachable"
        elif link.answered_at is None:
            return AgentReport(None, error=link.error)  # a first failure: maybe still starting
        elif link.enabled is False:
            status = "off"
        else:
            status = "ok"
        return AgentReport(
            status,
            answered_at=link.answered_at,
            agent_version=link.agent_version,
            grace_minutes=link.grace_minutes,
            idle_minutes=link.idle_minutes,
            error=link.error,
        )

    def stop_evidence(self, session: Session, now: float) -> dict[str, Any] | None:
        """Tell whether the agent must have stopped this session's instance, with the evidence.

        It is the agent's stop when the panel did not stop it, the agent had answered in this
        session, and its last answer lies further back than the grace time it reported.
        """
        link = link_rows.read_agent_link(self.store.db)
        if (
            link is None
            or link.session_id != session.id
            or link.answered_at is None
            or link.grace_minutes is None
            or link.enabled is False
            or now - link.answered_at < link.grace_minutes * 60
        ):
            return None
        return {
            "stopped_by": "agent",
            "last_heartbeat_answered_minutes_ago": (now - link.answered_at) / 60,
            "agent_grace_minutes": link.grace_minutes,
            "agent_idle_minutes": link.idle_minutes,
        }


def _deliver(
    http: InstanceHttp, url: str, body: bytes, headers: dict[str, str]
) -> tuple[dict[str, Any] | None, str | None]:
    """POST the heartbeat; return the agent's answer, or None and why it did not get through."""
    try:
        response = http.request("POST", url, HEARTBEAT_LIMITS, headers=headers, body=body)
    except InstanceUnreadable as exc:
        return None, exc.reason
    try:
        answer = json.loads(response.body)
    except ValueError:
        answer = None
    if response.status == 200 and isinstance(answer, dict) and answer.get("ok") is True:
        return answer, None
    detail = answer.get("error") if isinstance(answer, dict) else None
    return None, f"HTTP {response.status}" + (f": {_text(detail)}" if detail else "")


def _text(value: Any) -> str | None:
    return value[:100] if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
