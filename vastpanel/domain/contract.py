"""The instance's contract: it ends at vast.ai's end_date, and an ended one cannot start again.

vast.ai's show-instance answer carries `end_date` (epoch seconds; shared/vast-api.md,
"Contracts end"). "Instances expire on their end date. Expired instances still pay storage
fees, but can not start." (vast-ai/docs `host/cli/cleanup-machine.md`); vast.ai's overview adds
that they may be deleted 48 hours after expiry. So the panel warns 7 days and 1 day
before the end (audited, hence notified, once each), says so once it has ended, and refuses a
start after it itself, with the reason, rather than sending vast.ai a start it refuses.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ..clock import Clock, iso_utc
from ..config import Config
from ..errors import PanelError
from ..storage import values
from ..storage.database import Store
from ..vast.instance import InstanceState
from .audit import Audit

WARN_DAYS = (7, 1)  # warnings before the end, each sent once per end date
DELETED_AFTER_S = 48 * 3600  # vast.ai may delete an expired instance this long after its end
WARNED_KEY = "contract_warned_{days}d"  # the end date the warning N days before was about
ENDED_KEY = "contract_ended"  # the end date whose passing was audited


class ContractEnded(PanelError):
    """The instance's contract has ended: vast.ai will not start it again."""


def ended_message(ends_at: float) -> str:
    """Say why the instance cannot start, in the words the API, the page and /v1/ use."""
    return (
        f"The instance's contract ended on {_utc(ends_at)}; vast.ai may delete it 48 h later "
        f"(from {_utc(ends_at + DELETED_AFTER_S)}). It cannot start again: rent another "
        "instance and point VAST_INSTANCE_ID at it."
    )


def ending_message(ends_at: float, now: float) -> str:
    """Say that the contract ends soon, and what that means."""
    days = (ends_at - now) / 86400
    left = f"{days:.1f} days" if days >= 1 else f"{(ends_at - now) / 3600:.1f} hours"
    return (
        f"The instance's contract ends on {_utc(ends_at)} (in {left}): vast.ai cannot start "
        "it after that and may delete it 48 h later."
    )


def _utc(epoch: float) -> str:
    return f"{datetime.fromtimestamp(epoch, UTC):%Y-%m-%d %H:%M} UTC"


class Contract:
    """Watches the instance's end_date: warns before it, refuses starts after it."""

    def __init__(self, store: Store, clock: Clock, config: Config, audit: Audit):
        self.store = store
        self.clock = clock
        self.config = config
        self.audit = audit

    def ended(self, state: InstanceState) -> bool:
        """Tell whether the contract of the instance as shown has ended by now."""
        ends = state.contract_ends_at
        return ends is not None and self.clock.now() >= ends

    def refuse_start_if_ended(self, actor: str, state: InstanceState) -> None:
        """Raise ContractEnded (audited as a failed start) when the contract has ended."""
        if not self.ended(state):
            return
        reason = ended_message(state.contract_ends_at)
        self.audit.record(
            "power_on_failed", actor, instance_id=self.config.vast_instance_id, error=reason
        )
        raise ContractEnded(reason)

    def note_seen(self, state: InstanceState, now: float) -> None:
        """Audit the warning 7 and 1 days before the end, and the end itself, once each."""
        ends = state.contract_ends_at
        if ends is None or ends - now > max(WARN_DAYS) * 86400:
            return  # far off (the usual case): nothing to read or write
        db = self.store.db
        if now >= ends:
            if values.get_value(db, ENDED_KEY) != ends:
                values.set_value(db, ENDED_KEY, ends)
                self.audit.record(
                    "contract_ended",
                    "system",
                    instance_id=state.instance_id,
                    ended_at=iso_utc(ends),
                    deletable_from=iso_utc(ends + DELETED_AFTER_S),
                )
            return
        days_left = (ends - now) / 86400
        due = [days for days in WARN_DAYS if days_left <= days]
        nearest = min(due)
        if values.get_value(db, WARNED_KEY.format(days=nearest)) == ends:
            return
        for days in due:  # a panel started 12 h before the end says it once, not twice
            values.set_value(db, WARNED_KEY.format(days=days), ends)
        self.audit.record(
            "contract_ending",
            "system",
            instance_id=state.instance_id,
            ends_at=iso_utc(ends),
            days_before=nearest,
            days_left=days_left,
        )
